"""``adrisk link`` (and ``score --link``): link a scored file in place and write its cluster table
and HTML report beside it. The linking itself is ``signals.linking``; this module is its file IO."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from batch.tables import ScoreError, file_format, iter_chunks, write_frame
from signals.linking import LINK_COLUMNS, LinkConfig, LinkError, LinkResult, link_chunks
from signals.report import write_report


def _side_paths(output: Path) -> tuple[Path, Path]:
    """``<stem>.clusters<ext>`` and ``<output>.report.html`` beside the output."""
    return output.with_name(f"{output.stem}.clusters{output.suffix}"), output.with_name(
        output.name + ".report.html"
    )


def link_output(
    output: str | Path,
    config: LinkConfig | None = None,
    *,
    chunk_size: int = 50_000,
    top: int = 50,
    linker: Callable[..., LinkResult] | None = None,
) -> tuple[LinkResult, Path, Path]:
    """The ``adrisk score --link`` pass over a finished scoring output (CSV / JSONL / Parquet).

    Reads the output twice (linking, then template texts), then rewrites it with ``LINK_COLUMNS``
    appended (a temporary file renamed onto it: the output is whole before and after, never half
    linked), writes the cluster table ``<stem>.clusters<ext>`` (same format) and the HTML report
    ``<output>.report.html``. Link columns already present (a re-run after a kill) are recomputed,
    so running it again is safe and gives the same ids. Scores for cluster risk are the output's own
    ``score_<label>`` / ``flagged`` columns. ``linker``: the pass itself, ``link_chunks`` (default) or
    one with the same signature and result (``batch.spark_link.link_chunks_spark``).

    Returns:
        (result, cluster table path, report path).

    Raises:
        LinkError: missing output, unknown format, no text column, or the file changing during the pass.
    """
    output = Path(output)
    if not output.is_file():
        raise LinkError(f"{output}: no such output file to link")
    try:
        fmt = file_format(output)
    except ScoreError as e:
        raise LinkError(str(e)) from None

    def chunks():
        for df in iter_chunks(output, chunk_size):
            yield df.drop(columns=[c for c in LINK_COLUMNS if c in df.columns])

    try:
        result = (linker or link_chunks)(chunks, config)
        tmp = output.with_name(f".{output.name}.link.tmp")
        tmp.unlink(missing_ok=True)
        writer, row = None, 0
        for df in chunks():
            n = len(df)
            df = df.reset_index(drop=True)
            df["contacts"] = result.contacts[row : row + n]
            df["persona_id"] = result.persona_id[row : row + n]
            df["template_id"] = result.template_id[row : row + n]
            df["template_size"] = result.template_size[row : row + n]
            writer = write_frame(df, tmp, fmt, writer, header=row == 0)
            row += n
        if writer is not None:
            writer.close()
        if row == 0:  # no rows: keep the header-only / empty output, with the link columns
            write_frame(
                pd.DataFrame(columns=[*pd.read_parquet(output).columns, *LINK_COLUMNS])
                if fmt == "parquet"
                else pd.DataFrame(columns=list(LINK_COLUMNS)),
                tmp,
                fmt,
            )
    except ScoreError as e:
        raise LinkError(str(e)) from None
    clusters_path, report_path = _side_paths(output)
    ctmp = clusters_path.with_name(f".{clusters_path.name}.tmp")
    ctmp.unlink(missing_ok=True)
    w = write_frame(result.clusters, ctmp, fmt)
    if w is not None:
        w.close()
    ctmp.replace(clusters_path)
    write_report(report_path, result.clusters, result.report, top=top)
    tmp.replace(output)
    return result, clusters_path, report_path
