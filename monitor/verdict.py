"""The verdict a scheduler acts on: its rules, its exit codes and its JSON file.

=============  =====  ==========================================================================
status         exit   meaning
=============  =====  ==========================================================================
stable         0      no drift signal fired
retrain        10     drift fired, and the current ads lie where the reference has data: a
                      retrain (with recent moderator feedback) is advised
labels_needed  11     drift fired and more than ``novel_share_limit`` of the current ads are unlike
                      any reference ad (in the model's embedding space): retraining on the labels
                      at hand cannot teach the model these ads; label a sample of them first
=============  =====  ==========================================================================

Signals (each configurable in ``MonitorSettings``): the text domain classifier's AUC above its
threshold; the embedding MMD's p-value below ``mmd_alpha``; a label's score PSI above ``psi_limit``;
a label's EM prevalence whose ratio to the reference's has its whole 95% interval beyond the factor
``prevalence_ratio`` either way; an estimated precision or recall below the reference's by
more than ``max(performance_drop, 3 sd)`` (NannyML's 3-sigma alert band, sd of the realised value
at this window size).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

VERDICT_SCHEMA_VERSION = 1


class Status(str, Enum):
    STABLE = "stable"
    RETRAIN = "retrain"
    LABELS_NEEDED = "labels_needed"


EXIT_CODES = {Status.STABLE: 0, Status.RETRAIN: 10, Status.LABELS_NEEDED: 11}


class MonitorSettings(BaseModel):
    """The monitor's rules and sample sizes (defaults are the documented ones; docs/monitoring.md)."""

    model_config = ConfigDict(extra="forbid")

    auc_threshold: float | None = Field(
        None, description="domain-classifier AUC above which the text drifted (None: Evidently's rule)"
    )
    mmd_alpha: float = Field(
        0.01, gt=0, lt=1, description="embedding MMD permutation p-value below which it drifted"
    )
    mmd_permutations: int = Field(200, ge=50)
    embed_sample: int = Field(1000, ge=50, description="ads per side whose embeddings are compared")
    classifier_sample: int = Field(
        3000,
        ge=50,
        description="most ads per side the input-drift tests read (linked, classified; embeddings: a subsample)",
    )
    psi_limit: float = Field(0.25, gt=0, description="score PSI above which a label's scores drifted")
    prevalence_ratio: float = Field(
        1.25,
        gt=1,
        description="factor beyond which the whole 95% interval of the EM prevalence ratio must lie",
    )
    performance_drop: float = Field(
        0.05, gt=0, le=1, description="least drop of estimated precision/recall that alerts"
    )
    novel_share_limit: float = Field(
        0.2, gt=0, lt=1, description="share of current ads unlike the reference above which labels are needed"
    )
    bootstrap: int = Field(200, ge=20)
    seed: int = 0


class Verdict(BaseModel):
    """The verdict file (``verdict.json``): what ``adrisk retrain --when-stale`` reads."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = VERDICT_SCHEMA_VERSION
    status: Status
    retrain: bool
    exit_code: int
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    model: dict[str, Any] = Field(default_factory=dict)
    reference: dict[str, Any] = Field(default_factory=dict)
    current: dict[str, Any] = Field(default_factory=dict)
    drift: dict[str, Any] = Field(default_factory=dict)
    prevalence: dict[str, Any] = Field(default_factory=dict)
    performance: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)


def decide(
    drift: dict[str, Any],
    prevalence: dict[str, Any],
    performance: dict[str, Any],
    settings: MonitorSettings,
) -> tuple[Status, list[str]]:
    """Apply the rules (module docstring) to a window's statistics.

    Returns:
        (status, reasons): one short line per signal that fired (numbers, never ad text).
    """
    reasons = []
    text = drift.get("text") or {}
    if text.get("drifted"):
        reasons.append(f"text: domain classifier AUC {text['auc']:.3f} > {text['threshold']:.3f}")
    emb = drift.get("embedding") or {}
    if emb.get("drifted"):
        reasons.append(f"embeddings: MMD p-value {emb['p_value']:.4f} < {emb['alpha']}")
    for name, s in (drift.get("scores") or {}).items():
        if s.get("drifted"):
            reasons.append(f"{name}: score PSI {s['psi']:.3f} > {settings.psi_limit}")
    for name, p in prevalence.items():
        if p.get("changed"):
            lo, hi = p["ratio_interval"]
            reasons.append(
                f"{name}: prevalence {p['em']:.4f} vs reference {p['reference']:.4f} "
                f"(x{p['ratio']:.2f}, 95% [{lo:.2f}, {hi:.2f}])"
            )
    for name, perf in performance.items():
        for metric in ("precision", "recall"):
            m = perf.get(metric) or {}
            if m.get("dropped"):
                reasons.append(
                    f"{name}: estimated {metric} {m['estimated']:.3f} vs {m['reference_estimated']:.3f} on the "
                    f"reference (alert band {m['alert_band']:.3f})"
                )
    if not reasons:
        return Status.STABLE, reasons
    if (emb.get("novel_share") or 0.0) > settings.novel_share_limit:
        reasons.append(
            f"{emb['novel_share']:.0%} of current ads are unlike any reference ad (farther from it than "
            f"{emb['novel_quantile']:.0%} of reference ads from theirs; limit {settings.novel_share_limit:.0%})"
        )
        return Status.LABELS_NEEDED, reasons
    return Status.RETRAIN, reasons


def prevalence_changed(ratio_interval: list[float], limit: float) -> bool:
    """The EM prevalence moved by at least the factor ``limit``, with 95% confidence: the whole
    interval of its ratio to the reference's lies beyond ``limit`` either way."""
    lo, hi = ratio_interval
    return bool(lo > limit or hi < 1 / limit)


def write_verdict(path: str | Path, verdict: Verdict) -> None:
    """Write the verdict JSON atomically (a reader never sees half a file)."""
    from model.artifact import write_json_atomic

    write_json_atomic(path, json.loads(verdict.model_dump_json()))


class VerdictError(ValueError):
    """The verdict file cannot be used (message names the file, never ad text)."""


def load_verdict(path: str | Path) -> Verdict:
    """Read a verdict file.

    Raises:
        VerdictError: missing, not JSON, not a verdict, or a newer schema version.
    """
    p = Path(path)
    if not p.is_file():
        raise VerdictError(f"verdict file {p} not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        verdict = Verdict.model_validate(data)
    except (ValueError, TypeError) as e:
        raise VerdictError(f"{p} is not an adrisk monitor verdict ({type(e).__name__})") from None
    if verdict.schema_version > VERDICT_SCHEMA_VERSION:
        raise VerdictError(
            f"{p} has verdict schema_version {verdict.schema_version}; this adrisk reads up to {VERDICT_SCHEMA_VERSION}"
        )
    return verdict


def retrain_advised(verdict: Verdict, model_name: str, champion_version: str | None) -> tuple[bool, str]:
    """Whether ``adrisk retrain --when-stale`` should train: only for a ``retrain`` verdict about the
    model that is champion now.

    Returns:
        (advised, why): why in one line, for the log.

    Raises:
        VerdictError: the verdict is about another registered model, or about another version than
            the current champion (stale: the champion changed since it was written).
    """
    name, version = verdict.model.get("name"), verdict.model.get("version")
    if name and name != model_name:
        raise VerdictError(f"the verdict is about model {name!r}, this retrain is for {model_name!r}")
    if version and champion_version and str(version) != str(champion_version):
        raise VerdictError(
            f"the verdict is about version {version} but @champion is version {champion_version} now; "
            "run adrisk monitor again"
        )
    if verdict.status is Status.RETRAIN:
        return True, f"verdict of {verdict.created_at}: retrain ({'; '.join(verdict.reasons[:3])})"
    if verdict.status is Status.LABELS_NEEDED:
        return False, (
            f"verdict of {verdict.created_at}: labels needed; retraining on the labels at hand would not "
            "fix it, so no retrain (label a sample of the window's ads, export feedback, then retrain)"
        )
    return False, f"verdict of {verdict.created_at}: stable; no retrain"
