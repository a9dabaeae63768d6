"""``adrisk retrain``: train a challenger, compare it with the champion on one fixed gate set, and
move the ``champion`` alias only if every gate rule passes.

Exit codes (for schedulers; see README):

====  ==========================================================================
0     promoted: the challenger is the new champion (``previous`` = old champion);
      with ``--dry-run``: it would be promoted (aliases untouched)
3     rejected: a gate rule failed; aliases untouched
4     busy: another retrain of the same model holds the lock
5     unchanged: the champion was trained on the same data and config; nothing done
1     error (bad config, data, tracking, ...); aliases untouched
====  ==========================================================================

The decision, the side-by-side table and every rule are recorded on the challenger's MLflow run
(tags ``adrisk.gate.*``, artifacts ``gate/report.json`` and ``gate/table.txt``) and printed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from model.metrics import evaluate_scores
from model.predictor import Predictor
from model.registry import configure_tracking, get_alias, resolve_tracking_uris, set_alias
from model.uri import resolve_model
from training.config import Config, GateConfig
from training.data import Split, load_data, prepare_frame, read_table

logger = logging.getLogger(__name__)

EXIT_PROMOTED, EXIT_ERROR, EXIT_REJECTED, EXIT_BUSY, EXIT_UNCHANGED = 0, 1, 3, 4, 5
GATE_SPLIT = "gate"


@dataclass
class GateRow:
    """One compared quantity: ``rule`` is the check it was held to; ``passed`` None = reported only."""

    slice: str
    label: str
    metric: str
    champion: float | None
    challenger: float | None
    rule: str
    passed: bool | None

    @property
    def delta(self) -> float | None:
        if self.champion is None or self.challenger is None:
            return None
        return self.challenger - self.champion


@dataclass
class GateDecision:
    promoted: bool
    rows: list[GateRow]
    champion_version: str | None
    challenger_version: str | None
    reason: str

    def failures(self) -> list[GateRow]:
        return [r for r in self.rows if r.passed is False]

    def to_dict(self) -> dict:
        return {"promoted": self.promoted, "reason": self.reason, "champion_version": self.champion_version,
                "challenger_version": self.challenger_version,
                "rows": [asdict(r) | {"delta": r.delta} for r in self.rows]}


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


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


def gate_metrics(predictor: Predictor, gate: Split) -> dict[str, float]:
    """Metrics of one model on the gate set at that model's own thresholds (keys ``gate.*``)."""
    probs = predictor.predict_proba(gate.texts)
    return evaluate_scores(probs, gate.targets, predictor.labels, predictor.meta.threshold_vector(), GATE_SPLIT,
                           gate.sources)


def apply_gate(challenger: dict[str, float], champion: dict[str, float] | None, labels, g: GateConfig) -> list[GateRow]:
    """Evaluate the gate rules. ``champion`` None means a first model: absolute floors apply.

    Returns every compared row (per label overall, per source slice, macro AP), each with its rule.
    """
    rows: list[GateRow] = []
    key = lambda lab, m, src=None: f"{GATE_SPLIT}.{'source.' + src + '.' if src else ''}{lab}.{m}"  # noqa: E731
    c = lambda k: _num(challenger.get(k))  # noqa: E731
    o = lambda k: _num(champion.get(k)) if champion else None  # noqa: E731

    def add(slice_, lab, metric, k, rule, check):
        ch, new = o(k), c(k)
        passed = None if check is None else (check(new, ch) if new is not None else False)
        rows.append(GateRow(slice_, lab, metric, ch, new, rule, passed))

    if champion is None:
        add("all", "macro", "ap", f"{GATE_SPLIT}.macro.ap", f">= {g.min_macro_ap} (first-model floor)",
            lambda new, _: new >= g.min_macro_ap)
    else:
        add("all", "macro", "ap", f"{GATE_SPLIT}.macro.ap", f">= champion - {g.macro_ap_tolerance}",
            lambda new, old: old is None or new >= old - g.macro_ap_tolerance)
    for lab in labels:
        if champion is None:
            floor = g.min_ap.get(lab)
            add("all", lab, "ap", key(lab, "ap"), f">= {floor} (first-model floor)" if floor is not None else "report",
                None if floor is None else (lambda new, _, f=floor: new >= f))
        else:
            add("all", lab, "ap", key(lab, "ap"), f">= champion - {g.ap_tolerance}",
                lambda new, old: old is None or new >= old - g.ap_tolerance)
            add("all", lab, "recall", key(lab, "recall"), f">= champion - {g.max_recall_drop}",
                lambda new, old: old is None or new >= old - g.max_recall_drop)
        add("all", lab, "ece", key(lab, "ece"), f"<= {g.max_ece}", lambda new, _: new <= g.max_ece)
    sources = sorted({k.split(".")[2] for k in challenger if k.startswith(f"{GATE_SPLIT}.source.")})
    for src in sources:
        for lab in labels:
            n, pos = c(key(lab, "n", src)), c(key(lab, "support", src))
            if not n or not pos or pos == n:
                continue  # no ranking task inside this slice
            tol = g.per_source_ap_tolerance
            if champion is None or tol is None:
                add(src, lab, "ap", key(lab, "ap", src), "report", None)
            else:
                add(src, lab, "ap", key(lab, "ap", src), f">= champion - {tol}",
                    lambda new, old, t=tol: old is None or new >= old - t)
    return rows


def format_gate_table(rows: list[GateRow]) -> str:
    """Plain-text side-by-side table: slice, label, metric, champion, challenger, delta, rule, result."""
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    body = [[r.slice, r.label, r.metric, f(r.champion), f(r.challenger), "-" if r.delta is None else f"{r.delta:+.4f}",
             r.rule, {True: "pass", False: "FAIL", None: ""}[r.passed]] for r in rows]
    header = ["slice", "label", "metric", "champion", "challenger", "delta", "rule", "result"]
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) for i in range(len(header))]
    line = lambda cells: "  ".join(x.ljust(w) for x, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(b) for b in body)])


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
        db = Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve()
        return db.with_name(f".{db.name}.retrain-{name}.lock")
    key = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    return Path.home() / ".cache" / "adrisk" / "locks" / f"retrain-{key}-{name}.lock"


def retrain(cfg: Config, dry_run: bool = False, wait_seconds: float = 0.0, force: bool = False) -> tuple[int, GateDecision | None]:
    """Run one retrain under the lock; returns (exit code, decision or None when nothing was compared).

    Args:
        dry_run: train and compare, record the decision, but never move aliases.
        wait_seconds: how long to wait for another retrain's lock before giving up (exit 4).
        force: retrain even when the champion was trained on the same data and config.
    """
    import mlflow

    from training.pipeline import run_training

    lp = lock_path(cfg)
    lp.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lp))
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout:
        logger.error("another retrain of %s holds %s; giving up", cfg.model_name, lp)
        return EXIT_BUSY, None
    try:
        configure_tracking(cfg.tracking.tracking_uri)
        g = cfg.gate
        champion_version = get_alias(cfg.model_name, g.champion_alias)
        golden = golden_sets(cfg)
        # one load serves the idempotence check, the gate set and training: feedback rows that
        # repeat a validation, test or golden text are excluded before anything is fingerprinted
        bundle = load_data(cfg.data, cfg.label_schema, cfg.seed,
                           exclude_texts=[t for fr, _ in golden for t in fr["text"].tolist()])
        if champion_version and not force:
            tags = _champion_run_tags(cfg.model_name, g.champion_alias)
            if (tags.get("adrisk.config_digest") == cfg.digest()
                    and tags.get("adrisk.data.train.fingerprint") == bundle.train.fingerprint):
                logger.info("champion v%s was trained on the same data and config: nothing to do", champion_version)
                return EXIT_UNCHANGED, None
        gate = gate_set(cfg, bundle.test, golden)
        if not cfg.tracking.register_model:
            raise ValueError("retrain needs tracking.register_model: true (the challenger must be a model version)")
        result = run_training(cfg, bundle=bundle)
        challenger_version = result.registered.version
        challenger = gate_metrics(Predictor.load(result.artifact_dir), gate)
        champion = None
        if champion_version:
            ref = resolve_model(f"models:/{cfg.model_name}/{champion_version}")
            champion = gate_metrics(Predictor.load(ref.directory), gate)
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
            mlflow.set_tags({"adrisk.gate.decision": "promoted" if promoted else ("dry_run" if dry_run and not failed else "rejected"),
                             "adrisk.gate.champion_version": champion_version or "",
                             "adrisk.gate.reason": reason[:5000]})
            mlflow.log_dict(decision.to_dict(), "gate/report.json")
            mlflow.log_text(table, "gate/table.txt")
        if promoted:
            if champion_version:
                set_alias(cfg.model_name, g.previous_alias, champion_version)
            set_alias(cfg.model_name, g.champion_alias, challenger_version)
        print(table)
        print(f"\n{reason}")
        return (EXIT_REJECTED if failed else EXIT_PROMOTED), decision  # dry run: 0 = would promote
    finally:
        lock.release()


def rollback(model_name: str, champion_alias: str = "champion", previous_alias: str = "previous") -> tuple[str, str]:
    """Swap ``champion`` and ``previous`` (so a rollback can itself be undone).

    Returns (new champion version, new previous version).

    Raises:
        ValueError: either alias is missing.
    """
    champ, prev = get_alias(model_name, champion_alias), get_alias(model_name, previous_alias)
    if not champ or not prev:
        raise ValueError(f"rollback needs both @{champion_alias} and @{previous_alias} on {model_name}; "
                         f"found champion={champ}, previous={prev}")
    set_alias(model_name, champion_alias, prev)
    set_alias(model_name, previous_alias, champ)
    return prev, champ
