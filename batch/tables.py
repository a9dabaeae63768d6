"""Tabular IO shared by the batch jobs: formats (CSV / JSONL / Parquet), chunked reads, the
concatenation of part files under one schema, atomic appends, and the jobs' user-facing error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.pyfunc import ADDED_COLUMNS, SCORE_PREFIX
from model.pyfunc import is_missing as _is_missing

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class ScoreError(Exception):
    """A user-facing problem with the job's arguments or files."""


def file_format(path: Path) -> str:
    """``csv``, ``jsonl`` or ``parquet`` from the extension. Raises ScoreError otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ScoreError(f"{path}: unknown format; use one of {sorted(FORMATS)}")
    return fmt


def iter_chunks(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    """DataFrames of at most ``chunk_size`` rows, in file order. CSV columns are read as strings
    (an empty field is missing); JSONL values keep their JSON types; Parquet keeps its schema."""
    fmt = file_format(path)
    if fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
            yield batch.to_pandas()
        return
    try:
        if fmt == "csv":
            reader = pd.read_csv(path, chunksize=chunk_size, dtype=str, keep_default_na=False, na_values=[""])
        else:  # utf-8-sig: a leading byte-order mark (Windows tools) is skipped, as read_csv does
            reader = pd.read_json(
                path, lines=True, chunksize=chunk_size, dtype=False, convert_dates=False, encoding="utf-8-sig"
            )
        with reader:
            yield from _checked_chunks(reader, path, fmt)
    except (ValueError, TypeError) as e:  # pandas' parse errors give positions, never the content
        kind = "CSV" if fmt == "csv" else "JSON Lines (one JSON object per line)"
        raise ScoreError(f"{path}: not valid {kind}: {type(e).__name__}: {e}") from None


def _checked_chunks(reader, path: Path, fmt: str) -> Iterator[pd.DataFrame]:
    for chunk in reader:
        if fmt == "csv" and not isinstance(chunk.index, pd.RangeIndex):
            # pandas turns the leading fields of rows longer than the header into an index,
            # shifting every column: refuse instead of scoring the wrong field
            raise ScoreError(
                f"{path}: a data row has more fields than the header "
                "(quote fields that contain the delimiter)"
            )
        yield chunk


def estimate_rows(path: Path) -> int | None:
    """Row count for the progress bar: exact for Parquet and JSONL, an estimate (lines) for CSV."""
    fmt = file_format(path)
    if fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    lines = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
    return max(lines - (1 if fmt == "csv" else 0), 0)


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """``df`` as an Arrow table; object columns mixing types (JSONL ``"a"`` and ``42``) become text."""
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        df = df.copy()
        for col in df.select_dtypes(include="object").columns:
            df[col] = [
                v
                if v is None or isinstance(v, str) or _is_missing(v)
                else json.dumps(v)
                if isinstance(v, dict | list)
                else str(v)
                for v in df[col]
            ]
        return pa.Table.from_pandas(df, preserve_index=False)


def _as_text(arr: pa.ChunkedArray) -> pa.Array:
    """Any column as text (null stays null; nested values as JSON), for types no cast unifies."""
    return pa.array(
        [
            v
            if v is None or isinstance(v, str)
            else json.dumps(v, default=str)
            if isinstance(v, dict | list)
            else str(v)
            for v in arr.to_pylist()
        ],
        type=pa.large_string(),
    )


def _output_schema(parts: list[Path]) -> pa.Schema:
    """One schema for all parts: every column any part has (input columns in first-seen order, then
    the added columns), each with a type all parts promote to, or text when they conflict (a JSONL
    key whose values change type, or appear or change position, from one chunk to the next)."""
    types: dict[str, list[pa.DataType]] = {}
    for p in parts:
        for f in pq.read_schema(p).remove_metadata():
            types.setdefault(f.name, []).append(f.type)
    first = pq.read_schema(parts[0]).names
    added = [n for n in first if n in ADDED_COLUMNS or n.startswith(SCORE_PREFIX)]
    order = [n for n in types if n not in added] + added
    fields = []
    for name in order:
        try:
            t = (
                pa.unify_schemas(
                    [pa.schema([pa.field(name, t)]) for t in types[name]], promote_options="permissive"
                )
                .field(name)
                .type
            )
        except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
            t = pa.large_string()
        fields.append(pa.field(name, t))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in its order (missing ones null) and types."""
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(len(table), type=f.type))
            continue
        col = table[f.name]
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
                col = _as_text(col)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def concatenate(parts: list[Path], output: Path, fmt: str) -> None:
    """Write the parts, in order, to ``output`` in format ``fmt`` (one part in memory at a time).

    Parts can differ in columns, column order and types (JSONL chunks are read independently);
    every part is conformed to one schema first so CSV columns never shift under the header."""
    if not parts:
        if fmt == "parquet":
            raise ScoreError("the input has no rows")
        output.write_text("", encoding="utf-8")
        return
    schema = _output_schema(parts)
    if fmt == "parquet":
        with pq.ParquetWriter(output, schema) as writer:
            for p in parts:
                writer.write_table(_conform(pq.read_table(p).replace_schema_metadata(None), schema))
        return
    with open(output, "w", encoding="utf-8", newline="") as f:
        for i, p in enumerate(parts):
            df = _conform(pq.read_table(p).replace_schema_metadata(None), schema).to_pandas()
            if fmt == "csv":
                df.to_csv(f, header=(i == 0), index=False)
            else:
                text = df.to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
                f.write(text if text.endswith("\n") or not text else text + "\n")


def write_frame(df: pd.DataFrame, path: Path, fmt: str, writer=None, header: bool = True):
    """Append one chunk to ``path`` in ``fmt``; returns the (Parquet) writer to pass back in."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":
        table = pa.Table.from_pandas(df, preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table.cast(writer.schema))
        return writer
    with open(path, "a" if not header else "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            df.to_csv(f, index=False, header=header)
        else:
            f.write(df.to_json(orient="records", lines=True, force_ascii=False, date_format="iso"))
    return None
