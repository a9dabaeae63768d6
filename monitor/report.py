"""The monitor's outputs: the printed table, the self-contained HTML report (matplotlib PNGs embedded),
the files (written atomically) and the MLflow run.

The report names ads by id only; the terms it lists come from contact-masked texts
(``monitor.drift.ad_groups``), and every string is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from monitor.verdict import Verdict, write_verdict
from monitor.window import Window

logger = logging.getLogger(__name__)

EXPERIMENT = "adrisk-monitor"
REPORT_FILE = "report.html"
VERDICT_FILE = "verdict.json"


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _yes(flag: Any) -> str:
    return "DRIFT" if flag else "ok"


def format_table(v: Verdict) -> str:
    """The verdict as Markdown tables (what ``adrisk monitor`` prints)."""
    m, cur, ref = v.model, v.current, v.reference
    lines = [
        f"adrisk monitor: {v.status.value} (exit {v.exit_code}); model {m.get('name')} "
        f"{'v' + str(m['version']) if m.get('version') else m.get('uri')}; "
        f"current {cur.get('rows')} ads vs reference {ref.get('rows')} ads ({ref.get('found')})",
        "",
        "| input drift | value | threshold | |",
        "|---|---:|---:|---|",
    ]
    t = v.drift.get("text") or {}
    lines.append(
        f"| text: domain classifier ROC AUC | {_f(t.get('auc'))} | {_f(t.get('threshold'))} | {_yes(t.get('drifted'))} |"
    )
    e = v.drift.get("embedding")
    if e:
        lines.append(
            f"| embeddings: MMD permutation p-value | {_f(e['p_value'], 4)} | {e['alpha']} | {_yes(e['drifted'])} |"
        )
        lines.append(
            f"| embeddings: share of current ads unlike any reference ad | {_f(e.get('novel_share'))} "
            f"| {_f(v.settings.get('novel_share_limit'))} | |"
        )
    lines += [
        "",
        "| label | score PSI | KS | flag rate ref -> cur | prevalence ref | EM prevalence [95%] | precision ref / est. [90%] | recall ref / est. [90%] | realised P / R |",
        "|---|---:|---:|---|---:|---|---|---|---|",
    ]
    for name, s in (v.drift.get("scores") or {}).items():
        p = v.prevalence.get(name, {})
        perf = v.performance.get(name, {})
        cells = []
        for metric in ("precision", "recall"):
            x = perf.get(metric) or {}
            iv = x.get("interval")
            band = f" [{_f(iv[0])}, {_f(iv[1])}]" if iv else ""
            cells.append(
                f"{_f(x.get('reference'))} / {_f(x.get('estimated'))}{band}{' DROP' if x.get('dropped') else ''}"
            )
        pr = perf.get("precision") or {}
        rr = perf.get("recall") or {}
        real = f"{_f(pr.get('realised'))} / {_f(rr.get('realised'))}" if "realised" in pr else "-"
        if pr.get("feedback_n"):
            real += f"; feedback P {_f(pr.get('feedback'))} (n={pr['feedback_n']})"
        lo, hi = p.get("em_interval") or (None, None)
        lines.append(
            f"| {name} | {_f(s['psi'])}{' DRIFT' if s['drifted'] else ''} | {_f(s['ks'])} "
            f"| {_f(s['flag_rate_reference'])} -> {_f(s['flag_rate_current'])} | {_f(p.get('reference'), 4)} "
            f"| {_f(p.get('em'), 4)} [{_f(lo, 4)}, {_f(hi, 4)}]{' CHANGED' if p.get('changed') else ''} "
            f"| {cells[0]} | {cells[1]} | {real} |"
        )
    if v.reasons:
        lines += ["", "why:"] + [f"  - {r}" for r in v.reasons]
    if v.warnings:
        lines += ["", "warnings:"] + [f"  - {w}" for w in v.warnings]
    return "\n".join(lines)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(v: Verdict, reference: Window, current: Window, labels: tuple[str, ...]) -> dict[str, str]:
    """Base64 PNGs: score histograms per label, prevalence, estimated precision and recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.2), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for j, name in enumerate(labels):
        ax = axes[0][j]
        ax.hist(reference.probs[:, j], bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(current.probs[:, j], bins=bins, density=True, alpha=0.5, label="current")
        thr = (v.performance.get(name) or {}).get("threshold")
        if thr is not None:
            ax.axvline(thr, color="k", ls="--", lw=1, label="threshold")
        ax.set_yscale("log")
        ax.set_title(f"{name}: PSI {v.drift['scores'][name]['psi']:.3f}", fontsize=9)
        ax.set_xlabel("calibrated probability")
    axes[0][0].legend(fontsize=8)
    out["scores"] = _png(fig)

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(labels), 3.2))
    x = np.arange(len(labels))
    refs = [v.prevalence[n]["reference"] for n in labels]
    ems = [v.prevalence[n]["em"] for n in labels]
    err = np.array(
        [
            [
                v.prevalence[n]["em"] - v.prevalence[n]["em_interval"][0],
                v.prevalence[n]["em_interval"][1] - v.prevalence[n]["em"],
            ]
            for n in labels
        ]
    ).T
    ax.bar(x - 0.2, refs, 0.4, label="reference")
    ax.bar(x + 0.2, ems, 0.4, yerr=np.maximum(err, 0), capsize=3, label="current (EM, 95%)")
    ax.set_xticks(x, labels, fontsize=8, rotation=15)
    ax.set_ylabel("prevalence")
    ax.legend(fontsize=8)
    out["prevalence"] = _png(fig)

    names = list(v.performance)
    if names:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), squeeze=False)
        for k, metric in enumerate(("precision", "recall")):
            ax = axes[0][k]
            xs = np.arange(len(names))
            ref_vals = [v.performance[n][metric]["reference"] or 0.0 for n in names]
            est = [v.performance[n][metric]["estimated"] for n in names]
            iv = [v.performance[n][metric]["interval"] for n in names]
            ax.bar(xs - 0.2, ref_vals, 0.4, label="reference")
            yerr = np.array(
                [
                    [0, 0] if e is None or i is None else [max(e - i[0], 0), max(i[1] - e, 0)]
                    for e, i in zip(est, iv, strict=True)
                ]
            ).T
            ax.bar(xs + 0.2, [e or 0.0 for e in est], 0.4, yerr=yerr, capsize=3, label="estimated (90%)")
            real = [v.performance[n][metric].get("realised") for n in names]
            if any(r is not None for r in real):
                ax.scatter(
                    xs + 0.2,
                    [np.nan if r is None else r for r in real],
                    color="k",
                    zorder=3,
                    label="realised",
                )
            ax.set_xticks(xs, names, fontsize=8, rotation=15)
            ax.set_ylim(0, 1.05)
            ax.set_title(metric, fontsize=9)
        axes[0][0].legend(fontsize=8)
        out["performance"] = _png(fig)
    return out


def render_html(v: Verdict, reference: Window, current: Window, labels: tuple[str, ...]) -> str:
    """A self-contained HTML page of the verdict (no external resources)."""
    esc = html.escape
    figs = _figures(v, reference, current, labels)
    text = v.drift.get("text") or {}
    colour = {"stable": "#2e7d32", "retrain": "#ef6c00", "labels_needed": "#c62828"}[v.status.value]

    def items(xs: list[str]) -> str:
        return "".join(f"<li>{esc(x)}</li>" for x in xs) or "<li>none</li>"

    terms = "".join(
        f"<tr><th>{esc(side)}</th><td>{esc(', '.join(text.get('top_terms', {}).get(side, [])))}</td>"
        f"<td>{esc(', '.join(text.get('examples', {}).get(side, [])))}</td></tr>"
        for side in ("current", "reference")
    )
    imgs = "".join(
        f'<h2>{esc(title)}</h2><img alt="{esc(title)}" src="data:image/png;base64,{figs[key]}">'
        for key, title in (
            ("scores", "Calibrated scores per label"),
            ("prevalence", "Prevalence"),
            ("performance", "Precision and recall at the thresholds"),
        )
        if key in figs
    )
    table = esc(format_table(v))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>adrisk monitor: {esc(v.status.value)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
.status{{color:#fff;background:{colour};padding:.3em .7em;border-radius:4px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}}</style></head>
<body><h1>adrisk monitor <span class="status" id="status">{esc(v.status.value)}</span></h1>
<p>exit code {v.exit_code}; model {esc(str(v.model.get("name")))} {esc(str(v.model.get("version") or v.model.get("uri")))};
current {esc(str(v.current.get("path")))} ({v.current.get("rows")} ads) vs reference {esc(str(v.reference.get("path")))}
({v.reference.get("rows")} ads); {esc(v.created_at)}</p>
<h2>Why</h2><ul id="reasons">{items(v.reasons)}</ul><h2>Warnings</h2><ul>{items(v.warnings)}</ul>
<h2>Text drift: terms and ads most typical of each side</h2>
<table><tr><th>side</th><th>terms (contacts masked)</th><th>example ad ids</th></tr>{terms}</table>
{imgs}
<h2>All figures</h2><pre>{table}</pre>
</body></html>
"""


def _atomic_text(path: Path, text: str) -> None:
    from model.artifact import umask_file_mode

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(
    v: Verdict, html_text: str | None, report_dir: str | None, verdict_path: str | None
) -> list[str]:
    """Write ``verdict_path`` and ``report_dir/{report.html,verdict.json}`` (each atomically);
    returns the paths written."""
    written = []
    if report_dir:
        d = Path(report_dir)
        d.mkdir(parents=True, exist_ok=True)
        write_verdict(d / VERDICT_FILE, v)
        _atomic_text(d / REPORT_FILE, html_text or "")
        written += [str(d / VERDICT_FILE), str(d / REPORT_FILE)]
    if verdict_path:
        Path(verdict_path).resolve().parent.mkdir(parents=True, exist_ok=True)
        write_verdict(verdict_path, v)
        written.append(str(verdict_path))
    return written


def verdict_metrics(v: Verdict) -> dict[str, float]:
    """The verdict's numbers as MLflow metric keys (``drift.*``, ``prevalence.*``, ``performance.*``)."""
    out: dict[str, float] = {"status.exit_code": float(v.exit_code)}
    t = v.drift.get("text") or {}
    out |= {f"drift.text.{k}": float(t[k]) for k in ("auc", "threshold") if k in t}
    e = v.drift.get("embedding") or {}
    out |= {f"drift.embedding.{k}": float(e[k]) for k in ("mmd2", "p_value", "novel_share") if k in e}
    for name, s in (v.drift.get("scores") or {}).items():
        out |= {f"drift.scores.{name}.{k}": float(s[k]) for k in ("psi", "ks", "flag_rate_current")}
    for name, p in v.prevalence.items():
        out |= {f"prevalence.{name}.{k}": float(p[k]) for k in ("em", "mean_probability", "reference")}
    for name, perf in v.performance.items():
        for metric in ("precision", "recall"):
            for k in ("estimated", "reference", "realised", "feedback"):
                x = (perf.get(metric) or {}).get(k)
                if x is not None:
                    out[f"performance.{name}.{metric}.{k}"] = float(x)
    return {k: x for k, x in out.items() if np.isfinite(x)}


def log_to_mlflow(v: Verdict, html_text: str | None) -> str:
    """One run in the ``adrisk-monitor`` experiment: params (model, windows), the verdict's metrics,
    tags ``adrisk.monitor.status`` / ``adrisk.monitor.model_version``, and ``verdict.json`` (+ the
    report). Uses the client API, so no active run or experiment of the caller changes. Returns the
    run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    run = client.create_run(
        exp_id, run_name=f"monitor-{v.model.get('name')}-{v.model.get('version') or 'local'}"
    )
    rid = run.info.run_id
    try:
        params = {
            "model_uri": v.model.get("uri"),
            "current": v.current.get("path"),
            "window": v.current.get("window"),
            "reference": v.reference.get("path"),
        }
        ts = int(1000 * time.time())
        client.log_batch(
            rid,
            metrics=[Metric(k, x, ts, 0) for k, x in verdict_metrics(v).items()],
            params=[Param(k, str(x)[:500]) for k, x in params.items() if x is not None],
            tags=[
                RunTag("adrisk.monitor.status", v.status.value),
                RunTag("adrisk.monitor.model_version", str(v.model.get("version") or "")),
                RunTag("adrisk.monitor.reasons", "; ".join(v.reasons)[:5000]),
            ],
        )
        client.log_dict(rid, json.loads(v.model_dump_json()), VERDICT_FILE)
        if html_text:
            client.log_text(rid, html_text, REPORT_FILE)
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid
