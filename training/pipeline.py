"""``adrisk train``: one linear run, in phases (``run_training`` reads top to bottom): seed, data,
base model, MLflow run, baseline, fine-tune, TF-IDF blend, calibration and thresholds, evaluation,
artifact, plots and tables, register. Each phase is a function below with explicit inputs and outputs.

Under ``torchrun`` (``WORLD_SIZE > 1``, ``training/distributed.py``) every rank loads and tokenises
the data and runs the fine-tune data-parallel; rank 0 alone opens the MLflow run, fits the baseline,
writes checkpoints, calibrates, evaluates, saves and registers the artifact. The other ranks return
after the loop (``TrainResult.worker``)."""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.artifact import ArtifactMeta, Runtimes, ThresholdInfo, load_meta, save_artifact, save_meta
from model.blend import TfidfBlend
from model.calibration import calibrated_probabilities, fit_temperatures, select_thresholds
from model.encoding import TextEncoder
from model.identity_mask import IdentityMask
from model.registry import RegisteredModel, configure_tracking, log_pyfunc_model
from model.schema import ProblemType
from training import distributed
from training.audit import AuditResult, run_audit
from training.base_model import BaseModel, base_depth, build_model, load_tokenizer, resolve_base_model
from training.baseline import TfidfBaseline
from training.blend import blend_from_baseline, fit_blend
from training.config import Config, ConfigError
from training.counterfactual import prepare_bundle
from training.data import DataBundle, Split, load_data
from training.eval_sets import (
    EvalSet,
    evaluate_eval_set,
    flagged_negatives,
    format_eval_sets,
    load_eval_set,
)
from training.identity_audit import IdentityAuditResult, run_identity_audit
from training.identity_terms import TERMS_VERSION
from training.loop import LAST_CHECKPOINT, CheckpointError, FitData, FitResult, fit, predict_logits
from training.metrics import evaluate_scores, format_table
from training.plots import pr_curves, reliability_diagram
from training.views import TrainingRows, apply_view, training_rows

logger = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
# Style-stripped views of the validation rows on which the TF-IDF blend may not cost recall (training/blend.py).
BLEND_CHECK_VIEWS = ("short", "plain")


@dataclass
class TrainResult:
    """What a run produced: the artifact directory, all metrics, the MLflow run and model version."""

    artifact_dir: Path
    metrics: dict[str, float]
    run_id: str
    registered: RegisteredModel | None
    table: str
    worker: bool = False  # a torchrun rank other than 0: it trained, rank 0 holds the results

    @property
    def model_uri(self) -> str:
        return self.registered.uri if self.registered else f"runs:/{self.run_id}/model"


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) RNGs."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log_datasets(bundle: DataBundle, labels) -> None:
    import warnings

    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    warnings.filterwarnings(
        "ignore", message="The specified dataset source can be interpreted in multiple ways"
    )
    for split in bundle.splits():
        df = split.frame.drop(columns=["text"]).assign(text_sha=split.fingerprint)  # no ad text in tracking
        ds = from_pandas(
            df, source=split.path, name=f"{split.name}-{split.fingerprint[:12]}", targets=f"y.{labels[0]}"
        )
        mlflow.log_input(ds, context=split.name)


def _evaluate(probs: np.ndarray, split: Split, labels, thresholds, prefix: str = "") -> dict[str, float]:
    return evaluate_scores(probs, split.targets, labels, thresholds, split.name, split.sources, prefix=prefix)


def runtime_metrics(runtimes: Runtimes) -> dict[str, float]:
    """The runtime gate as MLflow metrics: ``runtime.<variant>.{passed,texts_per_s,ap_delta.<label>,
    decision_max_abs}``."""
    out: dict[str, float] = {}
    if runtimes.torch is not None:
        out["runtime.torch.texts_per_s"] = float(runtimes.torch.texts_per_s)
    for name, v in runtimes.variants.items():
        out[f"runtime.{name}.passed"] = float(v.passed)
        if v.texts_per_s is not None:
            out[f"runtime.{name}.texts_per_s"] = float(v.texts_per_s)
        out |= {f"runtime.{name}.ap_delta.{n}": float(d) for n, d in v.ap_delta.items() if d is not None}
        if v.decision_max_abs is not None:  # artifacts gated before the decision check lack it
            out[f"runtime.{name}.decision_max_abs"] = float(v.decision_max_abs)
    return out


@dataclass
class Calibrated:
    """What the calibration phase fixes on validation: the TF-IDF blend (None: not used), per-label
    temperatures and thresholds (with how each was chosen), and calibrated probabilities per split."""

    blend: TfidfBlend | None
    temperatures: list[float]
    thresholds: list[float]
    threshold_info: dict[str, ThresholdInfo]
    probs: dict[str, np.ndarray]  # split name -> (n, L)
    metrics: dict[str, float]  # blend.* decisions


def _start(cfg: Config, resume: bool, dist: distributed.Dist) -> tuple[Path, str, bool]:
    """Seeds, threads, the output directory and the tracking store; returns (output dir, tracking URI,
    resume). Under torchrun, rank 0 alone checks the checkpoint and touches MLflow, and a worker
    that ``torchrun --max-restarts`` restarted resumes from the last checkpoint when there is one.

    Raises:
        CheckpointError: ``resume`` without a checkpoint (before any work is done).
    """
    import mlflow
    import torch

    set_seeds(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out_dir = Path(cfg.output_dir)
    last = out_dir / "checkpoints" / LAST_CHECKPOINT
    if dist.active:
        if cfg.adapt.active:
            raise ConfigError("adapt: adaptation runs on one process; launch it without torchrun")
        if dist.is_main and not resume and distributed.elastic_restart() and last.is_file():
            logger.info("torchrun restarted the workers: resuming from %s", last)
            resume = True
        resume = bool(distributed.broadcast(resume, dist))
    if resume and dist.is_main and not last.is_file():  # before any work: no MLflow run, no baseline
        raise CheckpointError(f"--resume: no checkpoint at {last} (run without --resume to start over)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not dist.is_main:
        return out_dir, "", resume
    tracking_uri = configure_tracking(cfg.tracking.tracking_uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    return out_dir, tracking_uri, resume


def _log_run_inputs(
    cfg: Config,
    bundle: DataBundle,
    base_ref: str,
    base_sha: str | None,
    tracking_uri: str,
    truncated: dict[str, float],
) -> None:
    """A new MLflow run's params, tags, data report and dataset inputs (never ad text)."""
    import mlflow

    mlflow.log_params({k: ("" if v is None else str(v))[:500] for k, v in cfg.flat().items()})
    mlflow.set_tags(
        {
            "adrisk.base_model": base_ref,
            "adrisk.config_digest": cfg.digest(),
            "adrisk.base_model_sha256": base_sha or "",
            "adrisk.tracking_uri": tracking_uri,
            **{f"adrisk.data.{s.name}.fingerprint": s.fingerprint for s in bundle.splits()},
        }
    )
    mlflow.log_dict(bundle.report, "data_report.json")
    mlflow.log_metrics(
        {f"data.overlap.{k}": v for k, v in bundle.report["overlap"].items()}
        | {f"data.{k}.truncated_fraction": v for k, v in truncated.items()}
    )
    _log_datasets(bundle, cfg.labels)


def _baseline(
    cfg: Config, bundle: DataBundle, rows: TrainingRows
) -> tuple[TfidfBaseline | None, dict[str, np.ndarray], dict[str, float]]:
    """The TF-IDF + logistic regression baseline (``baseline.enabled``): the fitted model, its
    probabilities per split (validation, test) and its ``baseline.*`` metrics at its own thresholds.
    It is fitted on the transformer's training rows, style views included, so the blend's TF-IDF half
    has seen short and plain listings too (else the view rule refuses it for what it never saw)."""
    if not cfg.baseline.enabled:
        return None, {}, {}
    logger.info("training the TF-IDF + logistic regression baseline")
    labels = cfg.label_schema.labels
    bl = TfidfBaseline(cfg.label_schema, cfg.baseline, cfg.seed).fit(rows.texts, rows.targets)
    val_p = bl.predict_proba(bundle.validation.texts)
    info = select_thresholds(
        val_p, bundle.validation.targets, labels, cfg.target_precisions(), cfg.max_flag_rates()
    )
    thr = [info[n].threshold for n in labels]
    probs: dict[str, np.ndarray] = {}
    metrics: dict[str, float] = {}
    for split in (bundle.validation, bundle.test):
        probs[split.name] = val_p if split is bundle.validation else bl.predict_proba(split.texts)
        metrics |= _evaluate(probs[split.name], split, labels, thr, prefix="baseline.")
    return bl, probs, metrics


def _calibrate(
    cfg: Config,
    bundle: DataBundle,
    logits: dict[str, np.ndarray],
    bl: TfidfBaseline | None,
    view_logits: Callable[[list[str]], np.ndarray],
) -> Calibrated:
    """On validation only: the TF-IDF blend where it helps (``training/blend.py``), then temperatures
    and thresholds. ``logits``: split name -> (n, L) transformer logits (validation, test);
    ``view_logits``: transformer logits of other texts (the blend's view check)."""
    schema, labels = cfg.label_schema, cfg.label_schema.labels
    val = bundle.validation
    blend: TfidfBlend | None = None
    metrics: dict[str, float] = {}
    if bl is not None and cfg.baseline.blend and schema.problem_type is not ProblemType.MULTI_CLASS:
        view_texts = {v: apply_view(v, val.texts) for v in BLEND_CHECK_VIEWS}
        blend, report = fit_blend(
            blend_from_baseline(bl, labels),
            logits["validation"],
            val.texts,
            val.targets,
            min_gain=cfg.baseline.blend_min_gain,
            seed=cfg.seed,
            views={v: (view_logits(t), t) for v, t in view_texts.items()},
            target_precision=cfg.target_precisions(),
        )
        metrics |= report.metrics()
        if blend.weights:
            texts_of = {sp.name: sp.texts for sp in bundle.splits()}
            logits = {s: blend.blend(z, texts_of[s]) for s, z in logits.items()}
        else:
            blend = None
    temps = fit_temperatures(logits["validation"], val.targets, schema.problem_type)
    probs = {s: calibrated_probabilities(z, temps, schema.problem_type) for s, z in logits.items()}
    info = select_thresholds(
        probs["validation"], val.targets, labels, cfg.target_precisions(), cfg.max_flag_rates()
    )
    return Calibrated(blend, list(temps), [info[n].threshold for n in labels], info, probs, metrics)


def _audit(
    cfg: Config, bundle: DataBundle, cal: Calibrated, score: Callable[[list[str]], np.ndarray]
) -> tuple[AuditResult | None, dict[str, float]]:
    """The shortcut audit of the test split (``generalisation.audit``; ``training/audit.py``)."""
    if not cfg.generalisation.audit:
        return None, {}
    labels, test = cfg.label_schema.labels, bundle.test
    audit = run_audit(
        labels,
        bundle.train.texts,
        bundle.train.targets,
        bundle.train.sources,
        test.texts,
        test.targets,
        test.sources,
        score,
        cal.thresholds,
        eval_probs=cal.probs["test"],
    )
    metrics = audit.prefixed()
    if test.sources:
        metrics |= flagged_negatives(
            cal.probs["test"], test.targets, labels, cal.thresholds, "audit.test", test.sources
        )
    for note in audit.notes:
        logger.warning("%s", note)
    return audit, metrics


def _identity_audit(
    cfg: Config, raw_test: Split, cal: Calibrated, score: Callable[[list[str]], np.ndarray]
) -> tuple[IdentityAuditResult | None, dict[str, float]]:
    """The identity-term audit (``identity.audit``; ``training/identity_audit.py``): the benign templates
    through ``score`` (the model as served), and Borkan subgroups of the test rows. ``raw_test``: the
    test split before any mask, so the rows that name a term are found. Metrics: ``IdentityAuditResult.
    logged`` and ``identity.seconds``, the audit's wall time."""
    if not cfg.identity.audit:
        return None, {}
    schema = cfg.label_schema
    start = time.perf_counter()
    res = run_identity_audit(
        schema.labels,
        cal.thresholds,
        score,
        raw_test.texts,
        raw_test.targets,
        cal.probs["test"],
        [n != schema.benign_label for n in schema.labels],
        templates_per_category=cfg.identity.templates_per_category,
    )
    for note in res.notes:
        logger.warning("%s", note)
    return res, res.logged() | {"identity.seconds": time.perf_counter() - start}  # its cost per run


def identity_report(res: IdentityAuditResult) -> dict:
    """The identity audit as the JSON artifact ``identity_audit.json``: term list version, verdict,
    failing terms (metric-key slugs) and every ``identity.*`` metric. Never ad text."""
    return {
        "terms_version": TERMS_VERSION,
        "passed": res.passed,
        "failing": res.failing,
        "metrics": {k: (None if np.isnan(v) else v) for k, v in res.prefixed().items()},
    }


def _save_model(
    cfg: Config,
    art: Path,
    model,
    tokenizer,
    base_ref: str,
    base_sha: str | None,
    bundle: DataBundle,
    cal: Calibrated,
    metrics: dict[str, float],
    identity_mask: IdentityMask | None = None,
) -> None:
    """Write the artifact (``model.artifact``): weights, tokenizer, ``adrisk.json`` (with the identity
    mask the texts were trained with, ``model/identity_mask.py``) and the blend."""
    if art.exists():
        shutil.rmtree(art)
    labels = cfg.label_schema.labels
    meta = ArtifactMeta(
        name=cfg.model_name,
        label_schema=cfg.label_schema,
        thresholds=dict(zip(labels, cal.thresholds, strict=True)),
        threshold_info=cal.threshold_info,
        temperatures=cal.temperatures,
        max_length=cfg.train.max_length,
        base_model=base_ref,
        base_model_sha256=base_sha,
        data_fingerprint={s.name: s.fingerprint for s in bundle.splits()},
        metrics={k: v for k, v in metrics.items() if k.startswith("test.") and ".source." not in k},
        identity_mask=identity_mask,
    )
    save_artifact(art, model, tokenizer, meta)
    if cal.blend is not None:
        save_meta(art, load_meta(art).model_copy(update={"blend": cal.blend.save(art)}))


def _plots_and_tables(
    cfg: Config,
    out_dir: Path,
    bundle: DataBundle,
    cal: Calibrated,
    base_probs: dict[str, np.ndarray],
    metrics: dict[str, float],
    audit: AuditResult | None,
    extra_sets: list[EvalSet],
    identity: IdentityAuditResult | None = None,
) -> str:
    """PR curves and the reliability diagram of test, and the printed tables; all logged to MLflow."""
    import mlflow

    labels, test = cfg.label_schema.labels, bundle.test
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    curves = {"transformer": cal.probs["test"]} | ({"baseline": base_probs["test"]} if base_probs else {})
    pr = pr_curves(curves, test.targets, labels, plots / "pr_curves_test.png", "test precision-recall")
    mlflow.log_artifact(str(pr), "plots")
    rel = reliability_diagram(
        cal.probs["test"], test.targets, labels, plots / "reliability_test.png", "test reliability"
    )
    mlflow.log_artifact(str(rel), "plots")
    table = format_table(metrics, labels, "test")
    mlflow.log_text(table, "metrics_table.txt")
    if audit is not None:
        mlflow.log_text(audit.table, "audit_table.txt")
        table += "\n\n" + audit.table
    if identity is not None:
        mlflow.log_text(identity.table, "identity_audit_table.txt")
        mlflow.log_dict(identity_report(identity), "identity_audit.json")
        mlflow.set_tag("adrisk.identity.terms_version", TERMS_VERSION)
        mlflow.set_tag("adrisk.identity.passed", str(identity.passed).lower())
        table += "\n\n" + identity.table
    if extra_sets:
        es_table = format_eval_sets(metrics, [es.name for es in extra_sets], labels)
        mlflow.log_text(es_table, "eval_sets_table.txt")
        table += "\n\nextra evaluation sets (the model's own thresholds)\n" + es_table
    return table


def _evaluate_all(
    cfg: Config, bundle: DataBundle, raw: DataBundle, cal, score, extra_sets, result: FitResult
):
    """The evaluation phase of ``run_training``: ``(shortcut audit, identity audit, metrics)``.

    Metrics: validation and test at the calibrated thresholds, the temperatures and thresholds, the
    fine-tune's best epoch / steps / bf16, the shortcut audit (``audit.*``), the identity-term audit
    on the raw test split (``identity.*``) and the extra evaluation sets (``eval.<name>.*``);
    ``score`` maps texts to (n, L) calibrated probabilities as the artifact will serve them.
    """
    labels = cfg.label_schema.labels
    metrics: dict[str, float] = {}
    for split in (bundle.validation, bundle.test):
        metrics |= _evaluate(cal.probs[split.name], split, labels, cal.thresholds)
    metrics |= {f"calibration.{n}.temperature": t for n, t in zip(labels, cal.temperatures, strict=True)}
    metrics |= {f"threshold.{n}": t for n, t in zip(labels, cal.thresholds, strict=True)}
    metrics |= {
        "train.best_epoch": result.best_epoch,
        "train.steps": result.global_step,
        "train.bf16_autocast": float(result.bf16),  # what train.bf16 (auto by default) resolved to here
    }
    audit, audit_metrics = _audit(cfg, bundle, cal, score)
    identity, identity_metrics = _identity_audit(cfg, raw.test, cal, score)
    metrics |= audit_metrics | identity_metrics
    for es in extra_sets:
        metrics |= evaluate_eval_set(es, score(es.split.texts), labels, cal.thresholds)
    return audit, identity, metrics


def fine_tuning_rows(cfg: Config, train: Split) -> TrainingRows:
    """The rows fine-tuning and the TF-IDF baseline are fitted on: the train split (after the identity
    mitigation) and its style views (``generalisation.augment_views``, ``augment_fraction``), seeded."""
    gen = cfg.generalisation
    return training_rows(train.texts, train.targets, gen.augment_views, gen.augment_fraction, cfg.seed)


def _prepare_data(cfg: Config, bundle: DataBundle | None, exclude_texts: list[str] | None):
    """The data phase of ``run_training``: ``(raw, bundle, id_mask, rows, extra_sets, adaptation)``.

    ``raw`` is the bundle as loaded (the identity audit's subgroups and the logged datasets read
    it), ``bundle`` the splits the model is fitted on after the identity mitigation
    (``training/counterfactual.py``; ``id_mask`` the mask the artifact records, or None), ``rows``
    the training rows with their style views, ``extra_sets`` the evaluation sets and ``adaptation``
    a new site's unlabelled ads (``training/adapt.py``) or None. Bad files fail here, before any
    training.
    """
    schema = cfg.label_schema
    if bundle is None:
        bundle = load_data(cfg.data, schema, cfg.seed, exclude_texts=exclude_texts)
    extra_sets = [load_eval_set(n, e, schema, bundle.test) for n, e in cfg.eval_sets.items()]
    adaptation = None
    if cfg.adapt.active:
        from training.adapt import Adaptation

        adaptation = Adaptation.start(cfg.adapt, bundle.validation.texts + bundle.test.texts)
    raw = bundle
    bundle, id_mask = prepare_bundle(cfg, raw)
    rows = fine_tuning_rows(cfg, bundle.train)
    bundle.report["training_rows"] = rows.report
    return raw, bundle, id_mask, rows, extra_sets, adaptation


def run_training(
    cfg: Config,
    resume: bool = False,
    exclude_texts: list[str] | None = None,
    bundle: DataBundle | None = None,
) -> TrainResult:
    """Train, evaluate, save, log and register one model (see module docstring).

    Args:
        resume: continue from the output directory's last checkpoint (same config required).
        exclude_texts: texts that extra training rows (e.g. feedback) must not repeat (a retrain's
            gate set); matching rows are dropped and counted.
        bundle: data already loaded by ``load_data`` for this config (a retrain loads it once);
            ``exclude_texts`` is then ignored.

    Raises:
        DataError, BaseModelError, ConfigError, CheckpointError: with messages for the user.
    """
    import mlflow

    # --- seed, threads, tracking; under torchrun, the process group -----------------------------
    dist = distributed.setup()
    out_dir, tracking_uri, resume = _start(cfg, resume, dist)
    schema = cfg.label_schema

    # --- data: splits, extra evaluation sets (bad files fail now), training rows with views ---
    raw, bundle, id_mask, rows, extra_sets, adaptation = _prepare_data(cfg, bundle, exclude_texts)

    # --- base model and tokenizer; every split tokenised once ---------------------------------
    base = resolve_base_model(cfg.base_model)
    tokenizer = load_tokenizer(base)
    if cfg.distill.enabled:  # fail now, not after the baseline and the teacher's fine-tune
        from training.experiments.distill import check_layers

        check_layers(cfg.distill.layers, base_depth(base, cfg.base_model))
    encoder = TextEncoder(tokenizer, cfg.train.max_length, id_mask)  # masks as the artifact will
    enc = {s.name: encoder.encode(rows.texts if s is bundle.train else s.texts) for s in bundle.splits()}
    truncated = {k: float(np.mean(v.truncated)) if v.truncated else 0.0 for k, v in enc.items()}

    def logits_of(texts: list[str]) -> np.ndarray:
        return predict_logits(model, encoder, encoder.encode(texts).input_ids, cfg.train.eval_batch_size)

    train_ids, val_ids = enc["train"].input_ids, enc["validation"].input_ids
    data = FitData(encoder, train_ids, rows.targets, val_ids, bundle.validation.targets, schema)
    if not dist.is_main:  # a torchrun worker: its share of the fine-tune, nothing else
        _fit_worker(cfg, base, len(tokenizer), data, out_dir, resume, dist)
        return TrainResult(out_dir / "model", {}, "", None, "", worker=True)

    # --- the MLflow run (reused on --resume) --------------------------------------------------
    run_id_file = out_dir / RUN_ID_FILE
    run_id = run_id_file.read_text().strip() if resume and run_id_file.is_file() else None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else cfg.run_name) as run:
        run_id_file.write_text(run.info.run_id)
        if not run_id:
            _log_run_inputs(cfg, raw, base.ref, base.sha256, tracking_uri, truncated)
            if adaptation is not None:  # retrain's "unchanged data" check covers the unlabelled ads too
                mlflow.set_tag("adrisk.data.unlabelled.fingerprint", adaptation.fingerprint)

        # --- baseline ---------------------------------------------------------------------------
        bl, base_probs, metrics = _baseline(cfg, bundle, rows)

        # --- fine-tune --------------------------------------------------------------------------
        model = build_model(base, cfg.base_model, schema, len(tokenizer))
        if adaptation is not None:  # continued MLM pretraining on the unlabelled texts
            adaptation.pretrain(model, tokenizer, cfg.train.max_length, cfg.seed, resuming=resume)
            mlflow.log_metrics(adaptation.metrics)  # now: a resumed run skips MLM and keeps these
        result: FitResult = fit(
            model,
            data,
            cfg.train,
            cfg.seed,
            out_dir / "checkpoints",
            cfg.digest(),
            resume=resume,
            on_metrics=lambda m, step: mlflow.log_metrics(m, step=step),
            dist=dist,
        )
        if dist.active:
            mlflow.set_tag("adrisk.train.world_size", str(dist.world_size))

        if adaptation is not None:  # self-training on the unlabelled texts; the student if it passes
            from training.adapt import self_train_in_run

            model = self_train_in_run(
                adaptation,
                model,
                lambda: build_model(base, cfg.base_model, schema, len(tokenizer)),
                encoder,
                train_ids,
                rows.targets,
                bundle,
                cfg,
                extra_sets,
                resume,
                lambda m, step: mlflow.log_metrics(m, step=step),
            )
            metrics |= adaptation.metrics

        # --- TF-IDF blend, calibration and thresholds, on validation -------------------------------
        logits = {
            s: predict_logits(model, encoder, enc[s].input_ids, cfg.train.eval_batch_size)
            for s in ("validation", "test")
        }
        cal = _calibrate(cfg, bundle, logits, bl, logits_of)
        metrics |= cal.metrics  # blend.* decisions

        # --- evaluation: validation and test, the shortcut audit, extra evaluation sets -----------
        def score(texts: list[str]) -> np.ndarray:
            z = logits_of(texts)
            if cal.blend is not None:  # the blend's TF-IDF features see the texts as the encoder does
                z = cal.blend.blend(z, id_mask.apply(texts) if id_mask is not None else texts)
            return calibrated_probabilities(z, cal.temperatures, schema.problem_type)

        audit, identity, eval_metrics = _evaluate_all(cfg, bundle, raw, cal, score, extra_sets, result)
        metrics |= eval_metrics
        mlflow.log_metrics(metrics)
        if audit is not None:
            mlflow.set_tag("adrisk.audit.source_confounded", ",".join(audit.confounded) or "none")
        mlflow.set_tags({f"adrisk.threshold.{n}.method": i.method for n, i in cal.threshold_info.items()})

        # --- the artifact, its experiments and its runtime variants --------------------------------
        art = out_dir / "model"
        _save_model(cfg, art, model, tokenizer, base.ref, base.sha256, bundle, cal, metrics, id_mask)
        if cfg.distill.enabled:  # a shallower student, served as an ONNX variant if it passes the gate
            from training.experiments.distill import add_student

            add_student(model, data, cfg, art, out_dir / "checkpoints-student", resume=resume)
        if cfg.export_onnx:
            from training.onnx_export import add_onnx_variants

            add_onnx_variants(art, bundle.validation.texts, bundle.validation.targets)
            runtimes = load_meta(art).runtimes
            mlflow.log_metrics(runtime_metrics(runtimes))
            mlflow.set_tag("adrisk.runtime.default", runtimes.default)

        # --- plots and tables ---------------------------------------------------------------------
        table = _plots_and_tables(cfg, out_dir, bundle, cal, base_probs, metrics, audit, extra_sets, identity)

        # --- log the pyfunc model and register it -------------------------------------------------
        registered = log_pyfunc_model(
            art,
            cfg.model_name if cfg.tracking.register_model else None,
            input_example=["2 bedroom apartment for rent", "call me now 24/7 incall"],
        )
    return TrainResult(art, metrics, run.info.run_id, registered, table)


def _fit_worker(
    cfg: Config,
    base: BaseModel,
    vocab_size: int,
    data: FitData,
    out_dir: Path,
    resume: bool,
    dist: distributed.Dist,
) -> None:
    """A torchrun rank other than 0: the same model (DDP copies rank 0's weights), its share of every
    batch; no MLflow, no checkpoint written, nothing after the loop."""
    model = build_model(base, cfg.base_model, cfg.label_schema, vocab_size)
    fit(model, data, cfg.train, cfg.seed, out_dir / "checkpoints", cfg.digest(), resume=resume, dist=dist)
