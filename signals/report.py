"""The static HTML cluster report: the top-ranked personas and template clusters, for an analyst's browser.

One self-contained file (inline CSS, no scripts, fonts, images or other external assets), every
piece of text HTML-escaped. Per cluster: rank, kind, id, size, distinct contacts and places, the
members' scores (max, mean, share flagged, with a bar), first/last seen, and for template clusters
the template with its slots highlighted (the variants seen in a slot are listed on hover and below).
Contact values are never shown, only counts.
"""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2430;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px}.sub{color:#5b6575;margin:0 0 16px}
.stats{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:18px}
.stat{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 12px}
.stat b{display:block;font-size:18px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;margin-bottom:12px}
.head{display:flex;gap:14px;align-items:baseline;flex-wrap:wrap}
.rank{font-weight:700;font-size:16px}.kind{font-size:12px;padding:1px 7px;border-radius:10px;color:#fff}
.persona{background:#6c4bd8}.template{background:#0f7b6c}
.m{color:#5b6575}.m b{color:#1d2430}
.bar{display:inline-block;width:90px;height:8px;background:#e7eaef;border-radius:4px;vertical-align:middle}
.bar i{display:block;height:8px;border-radius:4px;background:#d4442e}
.tpl{margin-top:8px;padding:8px 10px;background:#fafbfc;border-left:3px solid #0f7b6c;white-space:pre-wrap}
mark.slot{background:#ffe08a;border-radius:3px;padding:0 3px;font-weight:600}
.vars{margin:6px 0 0;color:#5b6575;font-size:12px}
"""


def _num(x, fmt: str = "{:.3f}") -> str:
    try:
        if x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x):
            return "–"
    except (TypeError, ValueError):
        return "–"
    return fmt.format(x)


def _when(x) -> str:
    return "–" if x is None or pd.isna(x) else pd.Timestamp(x).strftime("%Y-%m-%d %H:%M")


def _template_html(segments_json: str | None, text: str | None) -> tuple[str, list[str]]:
    if not segments_json:
        return (html.escape(text) if text else ""), []
    parts: list[str] = []
    variants: list[str] = []
    for seg in json.loads(segments_json):
        if "text" in seg:
            parts.append(html.escape(seg["text"]))
        else:
            vals = [str(v) for v in seg.get("slot", [])]
            n = len(variants) + 1
            variants.append(f"slot {n}: " + " | ".join(html.escape(v) for v in vals))
            parts.append(
                f'<mark class="slot" title="{html.escape(" | ".join(vals), quote=True)}">'
                f"\u27e8{n}\u27e9</mark>"
            )
    return " ".join(parts), variants


def _splits_html(r: dict) -> list[str]:
    """The persona components split at the size bound, and why (empty when none was)."""
    splits = r.get("persona_splits") or []
    if not splits:
        return []
    esc = html.escape
    out = [
        '<div class="card"><b>Persona components split.</b> '
        f"{esc(str(r.get('personas_split', len(splits))))} component(s) of more than "
        f"{esc(str(r.get('max_persona')))} ads were joined only by chains of single shared contacts "
        "(reused or recycled numbers can chain unrelated posters). They were resolved again: ads "
        "sharing an identical text or two or more contacts stay together; single-contact links join "
        "ads only while the persona stays within the bound. Largest:<ul>"
    ]
    for x in splits:
        out.append(
            f"<li>component {esc(str(x['component']))}: {esc(str(x['ads']))} ads, split into "
            f"{esc(str(x['parts']))} personas (largest {esc(str(x['largest_part']))} ads; "
            f"{esc(str(x['contacts_cut']))} contact(s) now link across personas; "
            f"{esc(str(x['parts_over_bound']))} held above the bound by must-links)</li>"
        )
    out.append("</ul></div>")
    return out


def render_report(
    clusters: pd.DataFrame, report: dict | None = None, *, top: int = 50, title: str = "adrisk cluster report"
) -> str:
    """HTML text of the report: ``top`` highest-ranked rows of a ``signals.linking`` cluster table.

    Args:
        clusters: ``LinkResult.clusters`` (ranked; columns of ``signals.linking.CLUSTER_COLUMNS``, plus
            ``template`` / ``template_segments`` for template clusters when computed).
        report: ``LinkResult.report`` (counts shown in the header); optional.
        top: how many clusters to show (>= 1).
        title: page title (escaped).

    Raises:
        ValueError: ``top`` < 1.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    r = report or {}
    esc = html.escape
    stats = [
        ("ads", r.get("ads")),
        ("personas (2+ ads)", r.get("personas_multi")),
        ("template clusters (2+ ads)", r.get("templates_multi")),
        ("contacts found", r.get("contacts")),
        ("hub contacts cut", r.get("hub_contacts_cut")),
        ("hub cap", r.get("hub_cap")),
        ("persona components split", r.get("personas_split")),
        ("max persona (ads)", r.get("max_persona")),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="sub">Top {min(top, len(clusters))} of {len(clusters)} clusters, ranked by review priority '
        f"(mean score, size and distinct contacts). Generated {esc(datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC'))}."
        " Contact values are not shown.</p>",
        '<div class="stats">',
    ]
    for label, value in stats:
        if value is not None:
            out.append(f'<div class="stat"><b>{esc(str(value))}</b>{esc(label)}</div>')
    out.append("</div>")
    out += _splits_html(r)
    for row in clusters.head(top).itertuples(index=False):
        d = row._asdict()
        kind = str(d.get("kind", ""))
        share = d.get("share_flagged")
        width = 0 if share is None or pd.isna(share) else round(100 * float(share))
        out.append(
            f'<div class="card"><div class="head"><span class="rank">#{esc(str(d.get("rank", "")))}</span>'
            f'<span class="kind {esc(kind, quote=True)}">{esc(kind)}</span>'
            f'<span class="m">id <b>{esc(str(d.get("cluster_id")))}</b></span>'
            f'<span class="m">ads <b>{esc(str(d.get("size")))}</b></span>'
            f'<span class="m">contacts <b>{esc(_num(d.get("n_contacts"), "{:.0f}"))}</b></span>'
            f'<span class="m">places <b>{esc(_num(d.get("n_places"), "{:.0f}"))}</b></span>'
            f'<span class="m">score max <b>{esc(_num(d.get("score_max")))}</b> mean '
            f"<b>{esc(_num(d.get('score_mean')))}</b></span>"
            f'<span class="m">flagged <b>{esc(_num(share, "{:.0%}"))}</b> '
            f'<span class="bar"><i style="width:{width}%"></i></span></span>'
            f'<span class="m">seen <b>{esc(_when(d.get("first_seen")))}</b> → '
            f"<b>{esc(_when(d.get('last_seen')))}</b></span></div>"
        )
        if kind == "template":
            body, variants = _template_html(d.get("template_segments"), d.get("template"))
            if body:
                out.append(f'<div class="tpl">{body}</div>')
            if variants:
                out.append('<div class="vars">' + "<br>".join(variants) + "</div>")
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    path: str | Path, clusters: pd.DataFrame, report: dict | None = None, *, top: int = 50
) -> Path:
    """Write ``render_report(...)`` to ``path`` atomically (temporary file + rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(clusters, report, top=top), encoding="utf-8")
    tmp.replace(path)
    return path
