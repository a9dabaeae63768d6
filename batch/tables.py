"""Tabular IO shared by the batch jobs: formats (CSV / JSONL / Parquet), chunked reads, the
concatenation of part files under one schema, atomic appends, and the jobs' user-facing error."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.pyfunc import ADDED_COLUMNS, SCORE_PREFIX
from model.pyfunc import is_missing as _is_missing

logger = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
ON_BAD_ROW = ("error", "mark")  # what a JSON Lines line that is not one JSON object does
INVALID_JSON = "invalid_json"  # the ``error`` value of a marked line that is not JSON (or not UTF-8)
NOT_AN_OBJECT = "not_an_object"  # ... of a marked line holding an array, a string, a number or null
WRONG_FIELD_COUNT = "wrong_field_count"  # ... of a marked CSV row with more fields than the header
BAD_ROW_ERRORS = (INVALID_JSON, NOT_AN_OBJECT, WRONG_FIELD_COUNT)
# the column a marked line's error travels in from the reader to ``batch.score.score_frame`` (dropped there)
BAD_ROW_COLUMN = "__adrisk_bad_row__"
_BAD_CSV_ROW = "\x00adrisk-bad-csv-row"  # what the CSV reader puts in the first field of a too-long row
_BAD_LINES_LOGGED = 10


class ScoreError(Exception):
    """A user-facing problem with the job's arguments or files."""


def file_format(path: Path) -> str:
    """``csv``, ``jsonl`` or ``parquet`` from the extension. Raises ScoreError otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ScoreError(f"{path}: unknown format; use one of {sorted(FORMATS)}")
    return fmt


class InputChanged(ScoreError):
    """The part of the input a resumed job already scored is not what it scored."""


@dataclass(frozen=True)
class ReadPosition:
    """How far a JSON Lines file has been read: ``bytes`` and ``lines`` from its start, and the sha256
    of those bytes (a resumed job checks the lines it already scored are unchanged)."""

    bytes: int = 0
    lines: int = 0
    sha256: str = hashlib.sha256(b"").hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)


def iter_chunks(path: Path, chunk_size: int, *, on_bad_row: str = "error") -> Iterator[pd.DataFrame]:
    """DataFrames of at most ``chunk_size`` rows, in file order. CSV columns are read as strings
    (an empty field is missing); JSONL values keep their JSON types; Parquet keeps its schema.

    Args:
        on_bad_row: ``error``: a JSON Lines line that is not one JSON object, or a CSV row with more
            fields than the header, stops the read naming its file line; ``mark``: it becomes a row
            whose ``BAD_ROW_COLUMN`` holds ``invalid_json``, ``not_an_object`` or
            ``wrong_field_count`` (see ``iter_jsonl_chunks``).

    Raises:
        ScoreError: a row that cannot be parsed (its file line, never its content).
    """
    fmt = file_format(path)
    if fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
            yield batch.to_pandas()
        return
    if fmt == "jsonl":
        for df, _ in iter_jsonl_chunks(path, chunk_size, on_bad_row=on_bad_row):
            yield df
        return
    yield from _csv_chunks(path, chunk_size, on_bad_row)


def _csv_chunks(path: Path, chunk_size: int, on_bad_row: str) -> Iterator[pd.DataFrame]:
    """CSV chunks. A row with more fields than the header stops the read (pandas names its file
    line) or, with ``mark``, becomes a row with only ``BAD_ROW_COLUMN`` set, so row ``k`` of the
    output is still data row ``k``."""
    options: dict = {"dtype": str, "keep_default_na": False, "na_values": [""]}
    if on_bad_row == "mark":
        try:
            width = len(pd.read_csv(path, nrows=0).columns)
        except (ValueError, TypeError) as e:
            raise ScoreError(f"{path}: not valid CSV: {type(e).__name__}: {e}") from None
        # the python engine hands a too-long row to this callable (the C engine cannot keep it)
        marker = [_BAD_CSV_ROW] + [None] * (width - 1)
        options.update(engine="python", index_col=False, on_bad_lines=lambda fields: list(marker))
    try:
        with pd.read_csv(path, chunksize=chunk_size, **options) as reader:
            for chunk in _checked_chunks(reader, path, "csv"):
                if on_bad_row == "mark":
                    bad = (chunk.iloc[:, 0] == _BAD_CSV_ROW).to_numpy()
                    if bad.any():
                        logger.warning(
                            "%s: %d rows with more fields than the header, kept with an error",
                            path,
                            bad.sum(),
                        )
                        chunk.loc[bad, :] = None
                        chunk[BAD_ROW_COLUMN] = [WRONG_FIELD_COUNT if b else None for b in bad]
                yield chunk
    except (ValueError, TypeError) as e:  # pandas' parse errors give file lines, never the content
        hint = "" if on_bad_row == "mark" else "; pass --on-bad-row mark to keep such rows with an error"
        raise ScoreError(f"{path}: not valid CSV: {type(e).__name__}: {e}{hint}") from None


def iter_jsonl_chunks(
    path: Path, chunk_size: int, *, on_bad_row: str = "error", start: ReadPosition | None = None
) -> Iterator[tuple[pd.DataFrame, ReadPosition]]:
    """``(chunk, position after it)`` for a JSON Lines file: one JSON object per line, values keep
    their JSON types, blank lines are skipped, a leading byte-order mark is ignored.

    Args:
        on_bad_row: ``error``: a line that is not valid JSON (or UTF-8), or holds an array, a string,
            a number or null, raises ``ScoreError`` naming its file line and byte offset (never its
            content); ``mark``: it becomes a row with only ``BAD_ROW_COLUMN`` set (``invalid_json`` or
            ``not_an_object``), so nothing is lost and row ``k`` of the output is still data line ``k``.
        start: continue from this position (of an earlier read of the same file) after checking that
            the file's first ``start.bytes`` bytes still hash to ``start.sha256``.

    Raises:
        ScoreError: a bad line with ``on_bad_row="error"``, or an unknown ``on_bad_row``.
        InputChanged: the bytes before ``start`` changed.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ScoreError(f"--on-bad-row must be one of {list(ON_BAD_ROW)}, got {on_bad_row!r}")
    pos = start or ReadPosition()
    digest = hashlib.sha256()
    bad_lines = 0
    with open(path, "rb") as f:
        if start is not None:
            left = start.bytes
            while left > 0 and (block := f.read(min(left, 1 << 20))):
                digest.update(block)
                left -= len(block)
            if left or digest.hexdigest() != start.sha256:
                raise InputChanged(
                    f"{path}: its first {start.lines} lines, already scored, changed since the run started"
                )
        offset, line_no, rows = pos.bytes, pos.lines, []
        for raw in f:
            digest.update(raw)
            line_start, offset, line_no = offset, offset + len(raw), line_no + 1
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            row, problem = _parse_line(raw)
            if problem is not None:
                where = f"{path}: line {line_no} (byte {line_start})"
                if on_bad_row == "error":
                    raise ScoreError(
                        f"{where} {problem[1]}; JSON Lines needs one JSON object per line: fix or delete "
                        f"that line and rerun with --resume, or pass --on-bad-row mark to keep it as a row "
                        f"with error={problem[0]}"
                    )
                bad_lines += 1
                if bad_lines <= _BAD_LINES_LOGGED:
                    logger.warning("%s %s: kept as a row with error=%s", where, problem[1], problem[0])
                row = {BAD_ROW_COLUMN: problem[0]}
            rows.append(row)
            if len(rows) == chunk_size:
                yield pd.DataFrame.from_records(rows), ReadPosition(offset, line_no, digest.hexdigest())
                rows = []
        if rows:
            yield pd.DataFrame.from_records(rows), ReadPosition(offset, line_no, digest.hexdigest())
    if bad_lines > _BAD_LINES_LOGGED:
        logger.warning("%s: %d bad lines in all, kept as rows with an error", path, bad_lines)


def _parse_line(raw: bytes) -> tuple[dict, None] | tuple[None, tuple[str, str]]:
    """``(object, None)``, or ``(None, (error value, what is wrong))`` for a line that is not one
    JSON object (the description never quotes the line)."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return None, (INVALID_JSON, f"is not valid UTF-8 (byte {e.start} of the line)")
    except json.JSONDecodeError as e:
        return None, (INVALID_JSON, f"is not valid JSON ({e.msg}, column {e.colno})")
    if not isinstance(value, dict):
        kinds = {list: "a JSON array", str: "a JSON string", bool: "a JSON boolean", type(None): "null"}
        return None, (NOT_AN_OBJECT, f"is {kinds.get(type(value), 'a JSON number')}, not an object")
    return value, None


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
