"""``adrisk monitor``: compare a window of ads with the model's reference and write the verdict.

``assess`` is the whole analysis on two scored windows (no file or model IO; the shift suite calls it
directly); ``run_monitor`` is the verb: resolve the model and the reference, read, check and score
the windows, assess, then write the verdict JSON, the HTML report and an MLflow run (only at the
end, each file atomically: a failed run writes nothing).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor import drift as drift_mod
from monitor.estimate import (
    cbpe,
    feedback_precision,
    moved_posteriors,
    prevalence,
    realised,
)
from monitor.verdict import EXIT_CODES, MonitorSettings, Status, Verdict, decide, prevalence_changed
from monitor.window import MonitorError, Window

logger = logging.getLogger(__name__)

# Input drift this strong (a share of novel ads, or any drift signal on the inputs) voids the
# label-free estimates' assumption that p(x | y) is unchanged: they are reported with a warning.
NOVEL_SHARE_WARNING = 0.05


@dataclass
class Assessment:
    """What ``assess`` found: the verdict's sections, its status and reasons, the time per part."""

    drift: dict[str, Any]
    prevalence: dict[str, Any]
    performance: dict[str, Any]
    status: Status
    reasons: list[str]
    warnings: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return self.status is not Status.STABLE


@contextmanager
def _timed(timings: dict[str, float], part: str):
    t0 = time.perf_counter()
    yield
    timings[part] = round(timings.get(part, 0.0) + time.perf_counter() - t0, 3)


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, k, replace=False))


def _groups_and_masked(reference: Window, current: Window) -> tuple[np.ndarray, list[str], list[str]]:
    """Group ids over both windows (reference rows first) and the masked texts of each side: given
    ones when both windows carry them (from one linking pass), else one linking pass over both."""
    if reference.groups is not None and current.groups is not None and reference.masked and current.masked:
        return np.r_[reference.groups, current.groups], reference.masked, current.masked
    groups, masked = drift_mod.ad_groups(reference.texts + current.texts)
    return groups, masked[: len(reference)], masked[len(reference) :]


def _embedding_drift(
    reference: Window,
    current: Window,
    groups: np.ndarray,
    embed: Callable[[list[str]], np.ndarray] | None,
    settings: MonitorSettings,
    timings: dict[str, float],
) -> dict | None:
    rng = np.random.default_rng(settings.seed + 1)
    i_ref = _sample(len(reference), settings.embed_sample, rng)
    i_cur = _sample(len(current), settings.embed_sample, rng)
    with _timed(timings, "embeddings"):
        xs = []
        for w, idx in ((reference, i_ref), (current, i_cur)):
            if w.embeddings is not None:
                xs.append(w.embeddings[idx])
            elif embed is not None:
                xs.append(embed([w.texts[i] for i in idx]))
            else:
                return None
    with _timed(timings, "embedding_mmd"):
        res = drift_mod.mmd_test(
            xs[0],
            xs[1],
            groups[: len(reference)][i_ref],
            groups[len(reference) :][i_cur],
            permutations=settings.mmd_permutations,
            alpha=settings.mmd_alpha,
            seed=settings.seed,
        )
    return res.to_dict()


def _performance(
    reference: Window,
    current: Window,
    q_ref: np.ndarray,
    q_adj: np.ndarray,
    labels: tuple[str, ...],
    thresholds: list[float],
    flaggable: list[bool],
    settings: MonitorSettings,
    feedback: dict[str, set[str]] | None,
    q_draws: Callable[[int], np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Per flaggable label: precision and recall at the threshold, reference vs estimated (CBPE on the
    EM-adjusted posteriors; ``q_draws(j)``, label j's (B, n) posteriors under the bootstrap
    recalibrations, widens its interval by their error) vs realised (window labels, moderator feedback)."""
    flag_ref = reference.probs >= np.asarray(thresholds)[None, :]
    flag_cur = current.probs >= np.asarray(thresholds)[None, :]
    fb = feedback_precision(current.texts, flag_cur, feedback, labels) if feedback else {}
    out: dict[str, Any] = {}
    for j, name in enumerate(labels):
        if not flaggable[j]:
            continue
        ref_est = cbpe(q_ref[:, j], flag_ref[:, j], seed=settings.seed)
        ref_real = realised(reference.labels[:, j], flag_ref[:, j]) if reference.labels is not None else None
        est = cbpe(
            q_adj[:, j],
            flag_cur[:, j],
            seed=settings.seed,
            q_draws=None if q_draws is None else q_draws(j),
        )
        got = realised(current.labels[:, j], flag_cur[:, j]) if current.labels is not None else None
        entry: dict[str, Any] = {"threshold": thresholds[j], "flagged": int(flag_cur[:, j].sum())}
        for metric in ("precision", "recall"):
            # the alert compares like with like: the estimate on the reference, which equals its realised
            # value where the reference's labels recalibrated the label
            e, r, sd = est[metric], ref_est[metric], est[f"{metric}_sd"]
            band = max(settings.performance_drop, 3 * (sd or 0.0))
            shown = ref_real[metric] if ref_real is not None else r
            m: dict[str, Any] = {
                "reference": None if shown is None else round(float(shown), 4),
                "reference_estimated": None if r is None else round(float(r), 4),
                "estimated": None if e is None else round(float(e), 4),
                "interval": None
                if est[f"{metric}_interval"] is None
                else [round(v, 4) for v in est[f"{metric}_interval"]],
                "alert_band": round(band, 4),
                "dropped": bool(e is not None and r is not None and e < r - band),
            }
            if got is not None:
                m["realised"] = None if got[metric] is None else round(float(got[metric]), 4)
            if fb:
                m["feedback"] = fb[name][metric]
                m["feedback_n"] = fb[name][f"{metric}_n"]
                m["feedback_interval"] = fb[name][f"{metric}_interval"]
            entry[metric] = m
        out[name] = entry
    return out


def assess(
    reference: Window,
    current: Window,
    labels: tuple[str, ...],
    thresholds: list[float],
    *,
    flaggable: list[bool] | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    settings: MonitorSettings | None = None,
    feedback: dict[str, set[str]] | None = None,
) -> Assessment:
    """Every statistic of one window against the reference, and the verdict's status.

    Args:
        reference, current: scored windows (``probs`` (n, L) in ``labels`` order).
        thresholds: (L,) the model's thresholds.
        flaggable: (L,) labels that flag an ad (multi_class: all but the benign class); default all.
        embed: texts -> (n, d) sentence embeddings (``model.embeddings.SentenceEmbedder.embed``); None
            skips the embedding test unless both windows carry ``embeddings``.
        feedback: moderator labels by normalised-text sha256 (``monitor.estimate.load_feedback``).

    Raises:
        MonitorError: a window with fewer than two ads.
    """
    settings = settings or MonitorSettings()
    flaggable = flaggable or [True] * len(labels)
    if min(len(reference), len(current)) < 2:
        raise MonitorError("each window needs at least two ads")
    timings: dict[str, float] = {}
    # the input-drift tests read a sample of each side (the estimates below read every ad); only the
    # sampled ads are linked into groups
    rng = np.random.default_rng(settings.seed)
    ref_s = reference.take(_sample(len(reference), settings.classifier_sample, rng))
    cur_s = current.take(_sample(len(current), settings.classifier_sample, rng))
    with _timed(timings, "groups"):
        groups, m_ref, m_cur = _groups_and_masked(ref_s, cur_s)
    with _timed(timings, "text_classifier"):
        text = drift_mod.text_drift(
            m_ref, m_cur, ref_s.ids, cur_s.ids, groups, threshold=settings.auc_threshold, seed=settings.seed
        ).to_dict()
    emb = _embedding_drift(ref_s, cur_s, groups, embed, settings, timings)
    with _timed(timings, "scores"):
        scores = drift_mod.score_drift(reference.probs, current.probs, labels, thresholds, settings.psi_limit)
    with _timed(timings, "estimates"):
        prev, cal, base, cal_draws = prevalence(
            reference.probs,
            reference.labels,
            current.probs,
            labels,
            draws=settings.bootstrap,
            seed=settings.seed,
            thresholds=np.asarray(thresholds, dtype=np.float64),
        )
        q_ref = cal(reference.probs)
        for j, name in enumerate(labels):
            p = prev[name]
            # on the posteriors' scale: the reference's labelled prevalence where its labels recalibrated
            # the label, else the mean probability there
            p["reference"] = round(float(base[j]), 4)
            if reference.labels is not None:
                p["reference_labelled"] = round(float(reference.labels[:, j].mean()), 4)
            if current.labels is not None:
                p["realised"] = round(float(current.labels[:, j].mean()), 4)
            p["changed"] = prevalence_changed(p["ratio_interval"], settings.prevalence_ratio)
        # posteriors move to the EM prior only where the prevalence signal fired (``changed``; for a
        # nested label, its prior within the parent's ads): an uninformative label's EM prior wanders,
        # and must not move estimates. The same move on each bootstrap recalibration: the intervals
        # then hold its error.
        moved = {
            n: prevalence_changed(
                (prev[n].get("within") or prev[n])["ratio_interval"], settings.prevalence_ratio
            )
            for n in labels
        }
        q_adj = moved_posteriors(cal, current.probs, base, prev, labels, moved)

        @functools.cache
        def all_draws() -> np.ndarray:
            """(B, n, L) the window's posteriors under each bootstrap recalibration, moved alike."""
            return np.stack(
                [moved_posteriors(c, current.probs, base, prev, labels, moved) for c in cal_draws]
            )

        def q_draws(j: int) -> np.ndarray | None:
            """(B, n) label j's window posteriors under each bootstrap recalibration, moved alike."""
            return all_draws()[:, :, j] if cal.fitted[j] else None

        perf = _performance(
            reference, current, q_ref, q_adj, labels, thresholds, flaggable, settings, feedback, q_draws
        )
    drift = {"text": text, "embedding": emb, "scores": scores}
    status, reasons = decide(drift, prev, perf, settings)
    warnings = []
    input_drift = text["drifted"] or bool(
        emb and (emb["drifted"] or emb["novel_share"] > NOVEL_SHARE_WARNING)
    )
    if input_drift:
        warnings.append(
            "input drift: the estimated precision, recall and prevalence assume that ads of each label "
            "still look as they did (p(x|y) unchanged); calibration may not hold, check them against labels"
        )
    if emb is None:
        warnings.append("embedding drift not measured (no embeddings)")
    if not any(cal.fitted):
        warnings.append("the reference has no labels: estimates rest on the model's own calibration")
    return Assessment(drift, prev, perf, status, reasons, warnings, timings)


def verdict_from(assessment: Assessment, settings: MonitorSettings, **sections: Any) -> Verdict:
    """The Verdict of an assessment; ``sections`` fill ``model``, ``reference``, ``current`` and
    add ``timings``."""
    timings = {**sections.pop("timings", {}), **assessment.timings}
    return Verdict(
        status=assessment.status,
        retrain=assessment.status is Status.RETRAIN,
        exit_code=EXIT_CODES[assessment.status],
        reasons=assessment.reasons,
        warnings=assessment.warnings,
        drift=assessment.drift,
        prevalence=assessment.prevalence,
        performance=assessment.performance,
        settings=settings.model_dump(),
        timings={k: round(v, 3) for k, v in timings.items()},
        **sections,
    )


@dataclass
class MonitorRun:
    """What ``run_monitor`` returns: the verdict, the printed table and the files written."""

    verdict: Verdict
    table: str
    written: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None


def _check_outputs(report_dir: str | None, verdict_path: str | None) -> None:
    if report_dir and Path(report_dir).exists() and not Path(report_dir).is_dir():
        raise MonitorError(f"--report {report_dir} is a file; give a directory")
    if verdict_path and Path(verdict_path).is_dir():
        raise MonitorError(f"--verdict {verdict_path} is a directory; give a file path")


def run_monitor(
    model_uri: str,
    current: str,
    *,
    reference: str | None = None,
    window: str | None = None,
    time_column: str | None = None,
    text_column: str = "text",
    labels_column: str = "labels",
    feedback: str | None = None,
    report_dir: str | None = None,
    verdict_path: str | None = None,
    settings: MonitorSettings | None = None,
    runtime: str = "auto",
    threads: int | None = None,
    log_mlflow: bool | None = None,
) -> MonitorRun:
    """The ``adrisk monitor`` verb (see the module docstring).

    Args:
        model_uri: anything ``model.uri.resolve_model`` resolves.
        current: the window's file (CSV / JSONL / Parquet, or an ``adrisk score`` output).
        reference: the reference file; None: the model's validation data (``monitor.reference``).
        window: a window spec (``monitor.window.select_window``) applied to ``current``.
        feedback: an ``adrisk feedback export`` file: realised precision among reviewed ads.
        report_dir: write ``report.html`` and ``verdict.json`` there.
        verdict_path: write the verdict JSON there (also).
        log_mlflow: log a run to the ``adrisk-monitor`` experiment; None: when the model came
            from the MLflow registry or a run.

    Raises:
        MonitorError: bad input (see ``monitor.window``, ``monitor.reference``), with nothing written.
    """
    from model.artifact import load_meta
    from model.uri import resolve_model
    from monitor.estimate import load_feedback
    from monitor.reference import ReferenceSource, find_reference
    from monitor.window import model_version_tag, prepare_window, score_window

    settings = settings or MonitorSettings()
    _check_outputs(report_dir, verdict_path)
    timings: dict[str, float] = {}
    with _timed(timings, "load_model"):
        ref = resolve_model(model_uri)
        meta = load_meta(ref.directory)
    # every input is read and checked before anything is scored
    labels = tuple(meta.labels)
    cur_p = prepare_window(
        current, labels, text_column=text_column, labels_column=labels_column, window=window,
        time_column=time_column,
    )  # fmt: skip
    if reference:
        src = ReferenceSource(reference, "explicit", text_column, labels_column)
    else:
        src = find_reference(ref.run_id, model_uri, labels, meta.data_fingerprint.get("validation"))
    ref_p = prepare_window(
        src.path, labels, what="--reference" if reference else "reference", text_column=src.text_column,
        labels_column=src.labels_column, label_format=src.label_format, frame=src.frame,
    )  # fmt: skip
    fb = load_feedback(feedback, labels) if feedback else None
    from model.predictor import Predictor

    with _timed(timings, "load_model"):
        predictor = Predictor.load(ref.directory, runtime=runtime, num_threads=threads)
    version = model_version_tag(ref.version, predictor.meta.weights_sha256)
    with _timed(timings, "score_current"):
        cur = score_window(cur_p, predictor, model_version=version)
    with _timed(timings, "score_reference"):
        refw = score_window(ref_p, predictor, model_version=version)
    from model.embeddings import SentenceEmbedder

    embedder = SentenceEmbedder(ref.directory, predictor.encoder, num_threads=threads)
    meta = predictor.meta
    benign = meta.label_schema.benign_label
    a = assess(
        refw,
        cur,
        labels,
        meta.threshold_vector(),
        flaggable=[n != benign for n in labels],
        embed=embedder.embed,
        settings=settings,
        feedback=fb,
    )
    verdict = verdict_from(
        a,
        settings,
        model={"uri": model_uri, "name": ref.name or meta.name, "version": ref.version, "run_id": ref.run_id,
               "weights_sha256": meta.weights_sha256, "runtime": predictor.runtime.name},
        reference={"path": src.path, "found": src.how, "rows": len(refw), "rows_skipped": refw.rows_skipped,
                   "labelled": refw.labels is not None, "fingerprint": src.fingerprint},
        current={"path": str(current), "window": window, "rows": len(cur), "rows_skipped": cur.rows_skipped,
                 "rescored": cur.rescored, "labelled": cur.labels is not None,
                 "feedback": feedback, "feedback_reviewed": len(fb) if fb is not None else None},
        timings=timings,
    )  # fmt: skip
    from monitor.report import format_table, log_to_mlflow, render_html, write_outputs

    table = format_table(verdict)
    html = render_html(verdict, refw, cur, labels) if report_dir else None
    written = write_outputs(verdict, html, report_dir, verdict_path)
    if log_mlflow is None:
        log_mlflow = ref.run_id is not None
    run_id = None
    if log_mlflow:
        try:
            run_id = log_to_mlflow(verdict, html)
        except Exception as e:  # the verdict stands without its tracking copy (a store that is down)
            logger.warning(
                "the MLflow run was not logged (%s); the verdict files are written", type(e).__name__
            )
    return MonitorRun(verdict, table, written, run_id)
