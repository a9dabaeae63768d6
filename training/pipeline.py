"""``adrisk train``: one linear run, in phases — seed, data, base model, MLflow run, baseline,
fine-tune, calibrate + thresholds, evaluate, save artifact, plots, register."""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.artifact import ArtifactMeta, load_meta, save_artifact, save_meta
from model.calibration import calibrated_probabilities, fit_temperatures, select_thresholds
from model.encoding import TextEncoder
from model.registry import RegisteredModel, configure_tracking, log_pyfunc_model
from model.schema import ProblemType
from training.audit import run_audit
from training.base_model import base_depth, build_model, load_tokenizer, resolve_base_model
from training.baseline import TfidfBaseline
from training.blend import blend_from_baseline, fit_blend
from training.config import Config
from training.data import DataBundle, DataError, Split, load_data
from training.domain import training_rows
from training.eval_sets import evaluate_eval_set, flagged_negatives, format_eval_sets, load_eval_set
from training.loop import LAST_CHECKPOINT, CheckpointError, FitData, fit, macro_ap, predict_logits
from training.metrics import evaluate_scores, format_table
from training.plots import pr_curves, reliability_diagram
from training.views import apply_view
from training.wise_ft import choose_alpha, encoder_state, interpolate

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

    warnings.filterwarnings(
        "ignore", message="The specified dataset source can be interpreted in multiple ways"
    )
    for split in bundle.splits():
        df = split.frame.drop(columns=["text"]).assign(text_sha=split.fingerprint)  # no ad text in tracking
        ds = mlflow.data.from_pandas(
            df, source=split.path, name=f"{split.name}-{split.fingerprint[:12]}", targets=f"y.{labels[0]}"
        )
        mlflow.log_input(ds, context=split.name)


def _evaluate(probs: np.ndarray, split: Split, labels, thresholds, prefix: str = "") -> dict[str, float]:
    return evaluate_scores(probs, split.targets, labels, thresholds, split.name, split.sources, prefix=prefix)


def runtime_metrics(runtimes: dict) -> dict[str, float]:
    """The runtime gate as MLflow metrics: ``runtime.<variant>.{passed,texts_per_s,ap_delta.<label>,
    decision_max_abs}``."""
    out: dict[str, float] = {"runtime.torch.texts_per_s": float(runtimes["torch"]["texts_per_s"])}
    for name, v in runtimes["variants"].items():
        out[f"runtime.{name}.passed"] = float(bool(v["passed"]))
        out[f"runtime.{name}.texts_per_s"] = float(v["texts_per_s"])
        out |= {f"runtime.{name}.ap_delta.{n}": float(d) for n, d in v["ap_delta"].items() if d is not None}
        if "decision_max_abs" in v:  # artifacts gated before the decision check lack it
            out[f"runtime.{name}.decision_max_abs"] = float(v["decision_max_abs"])
    return out


def _wise_ft(model, pretrained, gen, validation_score) -> dict[str, float]:
    """Interpolate ``model``'s encoder towards ``pretrained`` as ``gen.wise_ft_alpha`` says; metrics."""
    if gen.wise_ft_alpha == "auto":
        choice = choose_alpha(model, pretrained, validation_score, gen.wise_ft_grid, gen.wise_ft_tolerance)
        scores = ", ".join(f"{a:.2f}: {s:.4f}" for a, s in choice.scores.items())
        logger.info("WiSE-FT: validation macro AP by alpha {%s}; kept alpha %.2f", scores, choice.alpha)
        return choice.metrics()
    interpolate(model, pretrained, encoder_state(model), float(gen.wise_ft_alpha))
    return {"wise_ft.alpha": float(gen.wise_ft_alpha)}


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
    import torch

    # --- phase 1: seeds, threads, tracking -------------------------------------------------
    set_seeds(cfg.seed)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    schema = cfg.label_schema
    labels = schema.labels
    out_dir = Path(cfg.output_dir)
    last = out_dir / "checkpoints" / LAST_CHECKPOINT
    if resume and not last.is_file():  # before any work: no MLflow run, no baseline for nothing
        raise CheckpointError(f"--resume: no checkpoint at {last} (run without --resume to start over)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = configure_tracking(cfg.tracking.tracking_uri)
    mlflow.set_experiment(cfg.tracking.experiment)

    # --- phase 2: data ---------------------------------------------------------------------
    if bundle is None:
        bundle = load_data(cfg.data, schema, cfg.seed, exclude_texts=exclude_texts)
    extra_sets = [
        load_eval_set(n, e, schema, bundle.test) for n, e in cfg.eval_sets.items()
    ]  # bad files fail now
    adaptation = None
    if cfg.adapt.active:  # a new site's unlabelled ads (training/adapt.py); bad files fail now
        from training.adapt import Adaptation

        adaptation = Adaptation.start(cfg.adapt, bundle.validation.texts + bundle.test.texts)
    gen = cfg.generalisation
    rows = training_rows(
        bundle.train.texts,
        bundle.train.targets,
        bundle.train.sources,
        gen.augment_views,
        gen.augment_fraction,
        gen.source_balanced,
        cfg.seed,
    )  # views, balancing (issue 10)
    bundle.report["training_rows"] = rows.report
    ordinal = None
    if cfg.train.ordinal_weight > 0:  # the auxiliary ordinal target (training/ordinal.py)
        from training.ordinal import ordinal_levels

        values = bundle.train.ordinal
        if values is None:
            raise DataError(f"data.ordinal_column '{cfg.data.ordinal_column}' not found in the train split")
        ordinal = np.where(rows.is_view, np.nan, values[rows.origin])  # a view's text lost its flags
        try:
            ordinal_levels(ordinal)
        except ValueError as e:
            raise DataError(f"data.ordinal_column '{cfg.data.ordinal_column}': {e}") from None

    # --- phase 3: base model and tokenizer -------------------------------------------------
    base = resolve_base_model(cfg.base_model)
    tokenizer = load_tokenizer(base)
    if cfg.distill.enabled:  # fail now, not after the baseline and the teacher's fine-tune
        from training.distill import check_layers

        check_layers(cfg.distill.layers, base_depth(base, cfg.base_model))
    encoder = TextEncoder(tokenizer, cfg.train.max_length, cfg.train.tail_tokens)
    enc = {s.name: encoder.encode(rows.texts if s is bundle.train else s.texts) for s in bundle.splits()}
    truncated = {k: float(np.mean(v.truncated)) if v.truncated else 0.0 for k, v in enc.items()}

    # --- phase 4: MLflow run (reused on --resume) ------------------------------------------
    run_id_file = out_dir / RUN_ID_FILE
    run_id = run_id_file.read_text().strip() if resume and run_id_file.is_file() else None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else cfg.run_name) as run:
        run_id_file.write_text(run.info.run_id)
        if not run_id:
            mlflow.log_params({k: ("" if v is None else str(v))[:500] for k, v in cfg.flat().items()})
            mlflow.set_tags(
                {
                    "adrisk.base_model": base.ref,
                    "adrisk.config_digest": cfg.digest(),
                    "adrisk.base_model_sha256": base.sha256 or "",
                    "adrisk.tracking_uri": tracking_uri,
                    **{f"adrisk.data.{s.name}.fingerprint": s.fingerprint for s in bundle.splits()},
                }
            )
            if adaptation is not None:  # retrain's "unchanged data" check covers the unlabelled ads too
                mlflow.set_tag("adrisk.data.unlabelled.fingerprint", adaptation.fingerprint)
            mlflow.log_dict(bundle.report, "data_report.json")
            mlflow.log_metrics(
                {f"data.overlap.{k}": v for k, v in bundle.report["overlap"].items()}
                | {f"data.{k}.truncated_fraction": v for k, v in truncated.items()}
            )
            _log_datasets(bundle, labels)
        metrics: dict[str, float] = {}

        # --- phase 5: baseline ---------------------------------------------------------------
        base_probs = {}
        bl = None
        if cfg.baseline.enabled:
            logger.info("training the TF-IDF + logistic regression baseline")
            bl = TfidfBaseline(schema, cfg.baseline, cfg.seed).fit(bundle.train.texts, bundle.train.targets)
            val_p = bl.predict_proba(bundle.validation.texts)
            bl_info = select_thresholds(
                val_p, bundle.validation.targets, labels, cfg.target_precisions(), cfg.max_flag_rates()
            )
            bl_thr = [bl_info[n].threshold for n in labels]
            for split in (bundle.validation, bundle.test):
                base_probs[split.name] = (
                    val_p if split is bundle.validation else bl.predict_proba(split.texts)
                )
                metrics |= _evaluate(base_probs[split.name], split, labels, bl_thr, prefix="baseline.")

        # --- phase 6: fine-tune --------------------------------------------------------------
        model = build_model(base, cfg.base_model, schema, len(tokenizer))
        pretrained_unused = gen.wise_ft_alpha is None  # WiSE-FT needs the (adapted) starting encoder
        if adaptation is not None:  # continued MLM pretraining on the unlabelled texts
            adaptation.pretrain(
                model, tokenizer, cfg.train.max_length, cfg.seed, resuming=resume and pretrained_unused
            )
            mlflow.log_metrics(adaptation.metrics)  # now: a resumed run skips MLM and keeps these
        pretrained = encoder_state(model) if gen.wise_ft_alpha is not None else None
        data = FitData(
            encoder,
            enc["train"].input_ids,
            rows.targets,
            enc["validation"].input_ids,
            bundle.validation.targets,
            schema,
        )
        result = fit(
            model,
            *data,
            cfg.train,
            cfg.seed,
            out_dir / "checkpoints",
            cfg.digest(),
            resume=resume,
            on_metrics=lambda m, step: mlflow.log_metrics(m, step=step),
            group_ids=rows.group_ids if gen.group_dro else None,
            group_dro_eta=gen.group_dro_eta,
            ordinal=ordinal,
            ordinal_weight=cfg.train.ordinal_weight,
        )

        if pretrained is not None:  # WiSE-FT (training/wise_ft.py): alpha chosen on validation only
            metrics |= _wise_ft(
                model,
                pretrained,
                gen,
                lambda: macro_ap(
                    predict_logits(model, encoder, enc["validation"].input_ids, cfg.train.eval_batch_size),
                    bundle.validation.targets,
                ),
            )

        if adaptation is not None:  # self-training on the unlabelled texts; the student if it passes
            from training.adapt import self_train_in_run

            model = self_train_in_run(
                adaptation,
                model,
                lambda: build_model(base, cfg.base_model, schema, len(tokenizer)),
                encoder,
                enc["train"].input_ids,
                rows.targets,
                bundle,
                cfg,
                extra_sets,
                resume,
                lambda m, step: mlflow.log_metrics(m, step=step),
            )
            metrics |= adaptation.metrics

        # --- phase 7: calibration and thresholds on validation --------------------------------
        logits = {
            s: predict_logits(model, encoder, enc[s].input_ids, cfg.train.eval_batch_size)
            for s in ("validation", "test")
        }
        blend = None
        if bl is not None and cfg.baseline.blend and schema.problem_type is not ProblemType.MULTI_CLASS:
            # the TF-IDF blend (training/blend.py): fitted on validation, only for labels it helps
            view_texts = {v: apply_view(v, bundle.validation.texts) for v in BLEND_CHECK_VIEWS}
            blend, blend_report = fit_blend(
                blend_from_baseline(bl, labels),
                logits["validation"],
                bundle.validation.texts,
                bundle.validation.targets,
                min_gain=cfg.baseline.blend_min_gain,
                seed=cfg.seed,
                views={
                    v: (
                        predict_logits(
                            model, encoder, encoder.encode(t).input_ids, cfg.train.eval_batch_size
                        ),
                        t,
                    )
                    for v, t in view_texts.items()
                },
                target_precision=cfg.target_precisions(),
            )
            metrics |= blend_report.metrics()
            if blend.weights:
                texts_of = {sp.name: sp.texts for sp in bundle.splits()}
                logits = {s: blend.blend(z, texts_of[s]) for s, z in logits.items()}
            else:
                blend = None
        temps = fit_temperatures(logits["validation"], bundle.validation.targets, schema.problem_type)
        probs = {s: calibrated_probabilities(z, temps, schema.problem_type) for s, z in logits.items()}
        thr_info = select_thresholds(
            probs["validation"],
            bundle.validation.targets,
            labels,
            cfg.target_precisions(),
            cfg.max_flag_rates(),
        )
        thresholds = [thr_info[n].threshold for n in labels]

        # --- phase 8: evaluation -------------------------------------------------------------
        for split in (bundle.validation, bundle.test):
            metrics |= _evaluate(probs[split.name], split, labels, thresholds)
        metrics |= {f"calibration.{n}.temperature": t for n, t in zip(labels, temps, strict=True)}
        metrics |= {f"threshold.{n}": t for n, t in zip(labels, thresholds, strict=True)}
        metrics |= {
            "train.best_epoch": result.best_epoch,
            "train.steps": result.global_step,
            "train.bf16_autocast": float(result.bf16),  # what train.bf16 (auto by default) resolved to here
        }

        def score(texts: list[str]) -> np.ndarray:
            z = predict_logits(model, encoder, encoder.encode(texts).input_ids, cfg.train.eval_batch_size)
            if blend is not None:
                z = blend.blend(z, texts)
            return calibrated_probabilities(z, temps, schema.problem_type)

        audit = None
        if gen.audit:  # the shortcut audit on test (training/audit.py)
            audit = run_audit(
                labels,
                bundle.train.texts,
                bundle.train.targets,
                bundle.train.sources,
                bundle.test.texts,
                bundle.test.targets,
                bundle.test.sources,
                score,
                thresholds,
                eval_probs=probs["test"],
            )
            metrics |= audit.prefixed()
            if bundle.test.sources:
                metrics |= flagged_negatives(
                    probs["test"], bundle.test.targets, labels, thresholds, "audit.test", bundle.test.sources
                )
            for note in audit.notes:
                logger.warning("%s", note)
        for es in extra_sets:  # extra evaluation sets: eval.<name>.*
            metrics |= evaluate_eval_set(es, score(es.split.texts), labels, thresholds)
        mlflow.log_metrics(metrics)
        if audit is not None:
            mlflow.set_tag("adrisk.audit.source_confounded", ",".join(audit.confounded) or "none")
        mlflow.set_tags({f"adrisk.threshold.{n}.method": i.method for n, i in thr_info.items()})

        # --- phase 9: the artifact -----------------------------------------------------------
        art = out_dir / "model"
        if art.exists():
            shutil.rmtree(art)
        headline = {k: v for k, v in metrics.items() if k.startswith("test.") and ".source." not in k}
        meta = ArtifactMeta(
            name=cfg.model_name,
            label_schema=schema,
            thresholds=dict(zip(labels, thresholds, strict=True)),
            threshold_info=thr_info,
            temperatures=temps,
            max_length=cfg.train.max_length,
            tail_tokens=cfg.train.tail_tokens,
            base_model=base.ref,
            base_model_sha256=base.sha256,
            data_fingerprint={s.name: s.fingerprint for s in bundle.splits()},
            metrics=headline,
        )
        save_artifact(art, model, tokenizer, meta)
        if blend is not None:
            save_meta(art, load_meta(art).model_copy(update={"blend": blend.save(art)}))
        if cfg.distill.enabled:  # a shallower student, served as an ONNX variant if it passes the gate
            from training.distill import STUDENT_DIR, distil_student

            student_ckpt = out_dir / "checkpoints-student"
            student, student_fit = distil_student(
                model,
                data,
                cfg,
                cfg.seed,
                student_ckpt,
                cfg.digest(),
                resume=resume and (student_ckpt / LAST_CHECKPOINT).is_file(),
                on_metrics=lambda m, step: mlflow.log_metrics(
                    {f"student.{k}": v for k, v in m.items()}, step=step
                ),
            )
            student.save_pretrained(str(art / STUDENT_DIR), safe_serialization=True)
            mlflow.log_metrics(
                {
                    "student.validation.macro_ap": student_fit.best_score,
                    "student.train.steps": student_fit.global_step,
                }
            )
        if cfg.export_onnx:
            from training.onnx_export import add_onnx_variants

            runtimes = add_onnx_variants(art, bundle.validation.texts, bundle.validation.targets)
            mlflow.log_metrics(runtime_metrics(runtimes))
            mlflow.set_tag("adrisk.runtime.default", runtimes["default"])

        # --- phase 10: plots -----------------------------------------------------------------
        plots = out_dir / "plots"
        plots.mkdir(exist_ok=True)
        curves = {"transformer": probs["test"]} | ({"baseline": base_probs["test"]} if base_probs else {})
        mlflow.log_artifact(
            str(
                pr_curves(
                    curves, bundle.test.targets, labels, plots / "pr_curves_test.png", "test precision-recall"
                )
            ),
            "plots",
        )
        mlflow.log_artifact(
            str(
                reliability_diagram(
                    probs["test"],
                    bundle.test.targets,
                    labels,
                    plots / "reliability_test.png",
                    "test reliability",
                )
            ),
            "plots",
        )
        table = format_table(metrics, labels, "test")
        mlflow.log_text(table, "metrics_table.txt")
        if audit is not None:
            mlflow.log_text(audit.table, "audit_table.txt")
            table += "\n\n" + audit.table
        if extra_sets:
            es_table = format_eval_sets(metrics, [es.name for es in extra_sets], labels)
            mlflow.log_text(es_table, "eval_sets_table.txt")
            table += "\n\nextra evaluation sets (the model's own thresholds)\n" + es_table

        # --- phase 11: log the pyfunc model and register it --------------------------------
        registered = log_pyfunc_model(
            art,
            cfg.model_name if cfg.tracking.register_model else None,
            input_example=["2 bedroom apartment for rent", "call me now 24/7 incall"],
        )
    return TrainResult(art, metrics, run.info.run_id, registered, table)
