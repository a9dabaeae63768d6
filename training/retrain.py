"""``adrisk retrain``: train a challenger, compare it with the champion on one fixed gate set, and
move the ``champion`` alias only if every gate rule passes.

Outcomes (``Outcome``; ``adrisk retrain`` maps them to exit codes for schedulers): promoted, would
promote (dry run), rejected, busy (another retrain holds the lock), unchanged (same data and config).

The decision, the side-by-side table and every rule are recorded on the challenger's MLflow run
(tags ``adrisk.gate.*``, artifacts ``gate/report.json`` and ``gate/table.txt``) and printed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from model.predictor import Predictor
from model.registry import configure_tracking, get_alias, resolve_tracking_uris, set_alias
from model.uri import resolve_model
from training.config import Config
from training.data import Split, load_data, prepare_frame, read_table
from training.eval_sets import EvalSet, evaluate_eval_set, load_eval_set
from training.gate import GATE_SPLIT, GateDecision, apply_gate, format_gate_table
from training.identity_audit import run_identity_audit
from training.metrics import evaluate_scores

logger = logging.getLogger(__name__)


class Outcome(str, Enum):
    """How a retrain ended (the CLI maps each to an exit code, see ``adrisk.cli``)."""

    PROMOTED = "promoted"  # the challenger is the new champion
    WOULD_PROMOTE = "would_promote"  # dry run: every rule passed; aliases untouched
    REJECTED = "rejected"  # a gate rule failed; aliases untouched
    BUSY = "busy"  # another retrain of the same model holds the lock
    UNCHANGED = "unchanged"  # the champion saw the same data and config


@dataclass
class RetrainResult:
    """``decision`` is None when nothing was compared (busy, unchanged); ``table`` is the gate table."""

    outcome: Outcome
    decision: GateDecision | None = None
    table: str = ""
    training_table: str = ""  # the challenger's metrics table (as ``adrisk train`` prints it)
    challenger_uri: str | None = None  # models:/NAME/VERSION of the challenger, when one was registered


def golden_sets(cfg: Config) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """The configured golden sets, validated like training data: (frame, targets) per file."""
    out = []
    for path in cfg.gate.golden_files:
        fr, y = prepare_frame(read_table(path), cfg.data, cfg.label_schema, path)
        if "source" not in fr:
            fr["source"] = "golden:" + Path(path).stem
        out.append((fr, y))
    return out


def gate_set(cfg: Config, test: Split, golden: list[tuple[pd.DataFrame, np.ndarray]] | None = None) -> Split:
    """The fixed gate set: the test split plus the golden sets (read from config when not given)."""
    golden = golden_sets(cfg) if golden is None else golden
    frame = pd.concat([test.frame, *(fr for fr, _ in golden)], ignore_index=True)
    targets = np.vstack([test.targets, *(y for _, y in golden)])
    return Split(GATE_SPLIT, frame, targets, path="+".join([test.path, *cfg.gate.golden_files]))


def gate_metrics(
    predictor: Predictor,
    gate: Split,
    extra_sets: list[EvalSet] | None = None,
    identity_templates: int | None = None,
) -> dict[str, float]:
    """Metrics of one model on the gate set at that model's own thresholds (keys ``gate.*``), plus the
    configured extra evaluation sets (keys ``eval.<name>.*``, for ``gate.eval_floors``) and, with
    ``identity_templates`` (benign templates per category), the identity audit's template metrics
    (``identity.*``, for ``gate.identity_*``), both models scored the same way as served."""
    probs = predictor.predict_proba(gate.texts)
    thr = predictor.meta.threshold_vector()
    out = evaluate_scores(probs, gate.targets, predictor.labels, thr, GATE_SPLIT, gate.sources)
    for es in extra_sets or []:
        out |= evaluate_eval_set(es, predictor.predict_proba(es.split.texts), predictor.labels, thr)
    if identity_templates:
        benign = predictor.meta.label_schema.benign_label
        out |= run_identity_audit(
            predictor.labels,
            thr,
            predictor.predict_proba,
            flaggable=[n != benign for n in predictor.labels],
            templates_per_category=identity_templates,
        ).prefixed()
    return out


def _champion_run_tags(name: str, alias: str) -> dict[str, str]:
    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version_by_alias(name, alias)
    return MlflowClient().get_run(mv.run_id).data.tags if mv.run_id else {}


def lock_path(cfg: Config) -> Path:
    """One lock file per (model registry, registered model name), whatever ``output_dir`` each run uses:
    beside the SQLite registry file (``<mlflow.db>.retrain-<name>.lock``), or for a tracking server
    under ``~/.cache/adrisk/locks/`` keyed by its URI (so only retrains on this machine exclude each other).
    """
    _, uri = resolve_tracking_uris(cfg.tracking.tracking_uri)  # the aliases live in the registry
    name = re.sub(r"[^A-Za-z0-9._-]", "_", cfg.model_name)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()
        return db.with_name(f".{db.name}.retrain-{name}.lock")
    key = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    return Path.home() / ".cache" / "adrisk" / "locks" / f"retrain-{key}-{name}.lock"


def retrain(
    cfg: Config,
    dry_run: bool = False,
    wait_seconds: float = 0.0,
    force: bool = False,
    verdict: dict | None = None,
) -> RetrainResult:
    """Run one retrain under the lock and return how it ended (nothing is printed).

    Args:
        dry_run: train and compare, record the decision, but never move aliases.
        wait_seconds: how long to wait for another retrain's lock before giving up (exit 4).
        force: retrain even when the champion was trained on the same data and config.
        verdict: the drift monitor's verdict that asked for this retrain (``adrisk retrain
            --when-stale``): recorded on the challenger's run (``monitor/verdict.json``, tags
            ``adrisk.monitor.*``).
    """
    import mlflow

    from training.adapt import unlabelled_fingerprint
    from training.pipeline import run_training

    lp = lock_path(cfg)
    lp.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lp))
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout:
        logger.error("another retrain of %s holds %s; giving up", cfg.model_name, lp)
        return RetrainResult(Outcome.BUSY)
    try:
        configure_tracking(cfg.tracking.tracking_uri)
        g = cfg.gate
        champion_version = get_alias(cfg.model_name, g.champion_alias)
        golden = golden_sets(cfg)
        # one load serves the idempotence check, the gate set and training: feedback rows that
        # repeat a validation, test or golden text are excluded before anything is fingerprinted
        bundle = load_data(
            cfg.data,
            cfg.label_schema,
            cfg.seed,
            exclude_texts=[t for fr, _ in golden for t in fr["text"].tolist()],
        )
        if champion_version and not force:
            tags = _champion_run_tags(cfg.model_name, g.champion_alias)
            if (
                tags.get("adrisk.config_digest") == cfg.digest()
                and tags.get("adrisk.data.train.fingerprint") == bundle.train.fingerprint
                and tags.get("adrisk.data.unlabelled.fingerprint", "") == unlabelled_fingerprint(cfg.adapt)
            ):
                logger.info(
                    "champion v%s was trained on the same data and config: nothing to do", champion_version
                )
                return RetrainResult(Outcome.UNCHANGED)
        gate = gate_set(cfg, bundle.test, golden)
        extra_sets = [load_eval_set(n, e, cfg.label_schema, bundle.test) for n, e in cfg.eval_sets.items()]
        if not cfg.tracking.register_model:
            raise ValueError(
                "retrain needs tracking.register_model: true (the challenger must be a model version)"
            )
        result = run_training(cfg, bundle=bundle)
        if result.registered is None:  # register_model was checked above
            raise RuntimeError("the challenger was not registered")
        challenger_version = result.registered.version
        identity_rules = g.identity_gap_tolerance is not None or g.identity_flag_rate_tolerance is not None
        templates = cfg.identity.templates_per_category if champion_version and identity_rules else None
        challenger = gate_metrics(Predictor.load(result.artifact_dir), gate, extra_sets, templates)
        champion = None
        if champion_version:
            ref = resolve_model(f"models:/{cfg.model_name}/{champion_version}")
            champion = gate_metrics(Predictor.load(ref.directory), gate, extra_sets, templates)
        rows = apply_gate(challenger, champion, cfg.label_schema.labels, g)
        failed = [r for r in rows if r.passed is False]
        promoted = not failed and not dry_run and challenger_version is not None
        if failed:
            reason = "rejected: " + "; ".join(f"{r.slice}/{r.label}/{r.metric} {r.rule}" for r in failed[:5])
        elif dry_run:
            reason = "dry run: all gate rules pass; aliases untouched"
        else:
            reason = "promoted: all gate rules pass" + ("" if champion_version else " (first model, floors)")
        decision = GateDecision(promoted, rows, champion_version, challenger_version, reason)
        table = format_gate_table(rows)
        with mlflow.start_run(run_id=result.run_id):
            mlflow.set_tags(
                {
                    "adrisk.gate.decision": "promoted"
                    if promoted
                    else ("dry_run" if dry_run and not failed else "rejected"),
                    "adrisk.gate.champion_version": champion_version or "",
                    "adrisk.gate.reason": reason[:5000],
                }
            )
            mlflow.log_dict(decision.to_dict(), "gate/report.json")
            mlflow.log_text(table, "gate/table.txt")
            if verdict is not None:
                mlflow.log_dict(verdict, "monitor/verdict.json")
                mlflow.set_tags(
                    {
                        "adrisk.monitor.status": str(verdict.get("status", "")),
                        "adrisk.monitor.created_at": str(verdict.get("created_at", "")),
                        "adrisk.monitor.reasons": "; ".join(verdict.get("reasons", []))[:5000],
                    }
                )
        if promoted:
            if champion_version:
                set_alias(cfg.model_name, g.previous_alias, champion_version)
            set_alias(cfg.model_name, g.champion_alias, challenger_version)
        outcome = Outcome.REJECTED if failed else (Outcome.PROMOTED if promoted else Outcome.WOULD_PROMOTE)
        return RetrainResult(
            outcome,
            decision,
            table,
            training_table=result.table,
            challenger_uri=f"models:/{cfg.model_name}/{challenger_version}",
        )
    finally:
        lock.release()


def rollback(
    model_name: str, champion_alias: str = "champion", previous_alias: str = "previous"
) -> tuple[str, str]:
    """Swap ``champion`` and ``previous`` (so a rollback can itself be undone).

    Returns (new champion version, new previous version).

    Raises:
        ValueError: either alias is missing.
    """
    champ, prev = get_alias(model_name, champion_alias), get_alias(model_name, previous_alias)
    if not champ or not prev:
        raise ValueError(
            f"rollback needs both @{champion_alias} and @{previous_alias} on {model_name}; "
            f"found champion={champ}, previous={prev}"
        )
    set_alias(model_name, champion_alias, prev)
    set_alias(model_name, previous_alias, champ)
    return prev, champ
