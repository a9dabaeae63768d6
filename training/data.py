"""Labelled data: loading (JSONL / CSV / Parquet through ``datasets``), label-schema validation,
group-aware splitting, cross-split overlap checks and fingerprints.

All problems with the data stop the run with a message that names the column, the bad values and
the rows where they occur (1-based row numbers within the file), never the ad text.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.messages import describe_columns
from model.normalize import normalize_text
from model.schema import LabelSchema, ProblemType
from training.config import DataConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_MAX_ROWS_LISTED = 10


class DataError(ValueError):
    """The data cannot be used as configured; the message says what and where (never ad text)."""


@dataclass
class Split:
    """One split. ``targets`` is (n, L) float32 0/1 in label-schema order (multi_class: one-hot)."""

    name: str
    frame: pd.DataFrame  # text, targets per label, source, group, id (normalised column names)
    targets: np.ndarray
    fingerprint: str = ""
    path: str = ""

    @property
    def texts(self) -> list[str]:
        return self.frame["text"].tolist()

    @property
    def sources(self) -> list[str] | None:
        return self.frame["source"].tolist() if "source" in self.frame else None

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class DataBundle:
    train: Split
    validation: Split
    test: Split
    report: dict = field(default_factory=dict)

    def splits(self) -> list[Split]:
        return [self.train, self.validation, self.test]


def _rows(idx: list[int]) -> str:
    shown = ", ".join(str(i + 1) for i in idx[:_MAX_ROWS_LISTED])
    return f"rows {shown}{' ...' if len(idx) > _MAX_ROWS_LISTED else ''} ({len(idx)} in all)"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one JSONL / CSV / Parquet file through ``datasets`` into a DataFrame.

    Raises:
        DataError: missing file or unknown extension.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown data format (use .jsonl, .csv or .parquet)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as e:  # malformed files fail deep in datasets/pyarrow; their text may quote rows
        cause = e.__cause__ or e.__context__ or e
        row = re.search(r"in row (\d+)", str(cause))
        near = f" near row {int(row.group(1)) + 1}" if row else ""
        raise DataError(f"{path}: cannot be read as {fmt}{near} ({type(cause).__name__})") from None
    return ds.to_pandas()


def _parse_list(value) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                return [str(v) for v in json.loads(s)]
            except json.JSONDecodeError:
                pass
        return [p for p in (x.strip() for x in s.replace("|", ",").split(",")) if p] if s else []
    raise DataError(f"cannot read labels of type {type(value).__name__}")


def _unknown_labels_message(
    where: str, column: str, unknown: dict[str, list[int]], schema: LabelSchema
) -> str:
    lines = [f"{where}: unknown labels in column '{column}' (schema: {list(schema.labels)}):"]
    for name, idx in sorted(unknown.items()):
        hint = difflib.get_close_matches(name.strip().lower(), schema.labels, n=1)
        lines.append(f"  {name!r} in {_rows(idx)}" + (f" - did you mean {hint[0]!r}?" if hint else ""))
    return "\n".join(lines)


def targets_from_frame(df: pd.DataFrame, cfg: DataConfig, schema: LabelSchema, where: str) -> np.ndarray:
    """Build (n, L) 0/1 targets from the configured label format, validating every value.

    Raises:
        DataError: missing columns, unknown or misspelt labels (listed with their rows), bad values.
    """
    n, labels = len(df), schema.labels
    y = np.zeros((n, len(labels)), dtype=np.float32)
    col_index = {name: j for j, name in enumerate(labels)}
    if cfg.label_format == "columns":
        missing = [c for c in labels if c not in df.columns]
        if missing:
            raise DataError(
                f"{where}: label columns {missing} not found; columns: {describe_columns(df.columns)}"
            )
        for j, name in enumerate(labels):
            vals = pd.to_numeric(
                df[name].replace({True: 1, False: 0, "true": 1, "false": 0}), errors="coerce"
            )
            bad = np.flatnonzero(~vals.isin([0, 1]).to_numpy())
            if bad.size:
                raise DataError(
                    f"{where}: column '{name}' must hold 0/1; bad values in {_rows(bad.tolist())}"
                )
            y[:, j] = vals.to_numpy(dtype=np.float32)
    else:
        if cfg.labels_column not in df.columns:
            raise DataError(
                f"{where}: labels column '{cfg.labels_column}' not found; columns: {describe_columns(df.columns)}"
            )
        unknown: dict[str, list[int]] = defaultdict(list)
        empty: list[int] = []
        for i, value in enumerate(df[cfg.labels_column].tolist()):
            try:
                names = [value] if cfg.label_format == "class" else _parse_list(value)
            except DataError as e:
                raise DataError(f"{where}: column '{cfg.labels_column}', row {i + 1}: {e}") from None
            if cfg.label_format == "class" and (
                value is None or (isinstance(value, float) and math.isnan(value))
            ):
                empty.append(i)
                continue
            for name in names:
                col = col_index.get(str(name))
                if col is None:
                    unknown[str(name)].append(i)
                else:
                    y[i, col] = 1.0
        if unknown:
            raise DataError(_unknown_labels_message(where, cfg.labels_column, unknown, schema))
        if empty:
            raise DataError(f"{where}: class column '{cfg.labels_column}' is empty in {_rows(empty)}")
    if schema.problem_type is ProblemType.MULTI_CLASS:
        bad = np.flatnonzero(y.sum(axis=1) != 1)
        if bad.size:
            raise DataError(
                f"{where}: multi_class needs exactly one label per row; not so in {_rows(bad.tolist())}"
            )
    return y


def prepare_frame(
    df: pd.DataFrame, cfg: DataConfig, schema: LabelSchema, where: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """Validate columns and text, and map them to the normalised layout (text, source, group, id).

    Raises:
        DataError: text column missing (names the configured column and those found), or rows
            with missing / non-string text.
    """
    if cfg.text_column not in df.columns:
        raise DataError(
            f"{where}: text column '{cfg.text_column}' not found; columns found: {describe_columns(df.columns)}"
        )
    text = df[cfg.text_column]
    bad = [i for i, t in enumerate(text.tolist()) if not isinstance(t, str)]
    if bad:
        raise DataError(
            f"{where}: text column '{cfg.text_column}' is missing or not a string in {_rows(bad)}"
        )
    y = targets_from_frame(df, cfg, schema, where)
    out = pd.DataFrame({"text": text.astype(str).to_numpy()})
    for key, col in (("source", cfg.source_column), ("group", cfg.group_column), ("id", cfg.id_column)):
        if col and col in df.columns:
            out[key] = df[col].astype(str).to_numpy()
    for j, name in enumerate(schema.labels):
        out[f"y.{name}"] = y[:, j]
    return out, y


def fingerprint(frame: pd.DataFrame, labels: tuple[str, ...]) -> str:
    """sha256 over rows' normalised text and targets, in order: same data -> same fingerprint."""
    h = hashlib.sha256()
    cols = [f"y.{n}" for n in labels]
    for text, ys in zip(frame["text"].tolist(), frame[cols].to_numpy().tolist(), strict=True):
        h.update(normalize_text(text).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f" + bytes(int(v) for v in ys) + b"\x1e")
    return h.hexdigest()


def _find_split_files(root: Path, cfg: DataConfig) -> dict[str, Path] | None:
    given = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}
    found = {}
    for split in SPLITS:
        name = given[split]
        if name:
            found[split] = root / name
            continue
        names = [split] + (["valid", "val", "dev"] if split == "validation" else [])
        hits = [root / f"{n}{ext}" for n in names for ext in _FORMATS if (root / f"{n}{ext}").is_file()]
        if hits:
            found[split] = hits[0]
    if not found:
        return None
    missing = [s for s in SPLITS if s not in found]
    if missing:
        raise DataError(f"{root}: found {sorted(found)} split files but not {missing}")
    return found


def group_split(frame: pd.DataFrame, cfg: DataConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Split one table into train/validation/test so that no group (the group column, else the
    normalised text) spans two splits. Uses scikit-learn's ``GroupShuffleSplit``."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = frame["group"] if "group" in frame else frame["text"].map(normalize_text)
    gss = GroupShuffleSplit(n_splits=1, test_size=cfg.test_fraction, random_state=seed)
    rest_idx, test_idx = next(gss.split(frame, groups=groups))
    rest = frame.iloc[rest_idx]
    val_share = cfg.validation_fraction / (1 - cfg.test_fraction)
    gss = GroupShuffleSplit(n_splits=1, test_size=val_share, random_state=seed + 1)
    tr_idx, va_idx = next(gss.split(rest, groups=groups.iloc[rest_idx]))
    return {"train": rest.iloc[tr_idx], "validation": rest.iloc[va_idx], "test": frame.iloc[test_idx]}


def overlap_report(frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Count rows of a later split whose normalised text also occurs in an earlier one
    (train/validation, train/test, validation/test)."""
    norm = {k: set(v["text"].map(normalize_text)) for k, v in frames.items()}
    out = {}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        out[f"{a}_{b}"] = int(frames[b]["text"].map(normalize_text).isin(norm[a]).sum())
    return out


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= n else frame.sample(n=n, random_state=seed).sort_index()


def load_data(
    cfg: DataConfig, schema: LabelSchema, seed: int, exclude_texts: list[str] | None = None
) -> DataBundle:
    """Load, validate and split the configured data.

    Rows of ``extra_train_files`` (e.g. exported moderator feedback) whose normalised text occurs
    in validation, test or ``exclude_texts`` (a retrain's gate set) are dropped and counted in
    ``report["extra_train"]``, so the gate stays honest; the others join the train split
    ``extra_train_repeats`` times each.

    Raises:
        DataError: see ``prepare_frame`` / ``targets_from_frame``; missing files.
    """
    root = Path(cfg.path)
    if not root.exists():
        raise DataError(f"data path not found: {root}")
    files = _find_split_files(root, cfg) if root.is_dir() else None
    frames: dict[str, pd.DataFrame] = {}
    paths: dict[str, str] = {}
    if files:
        for split, p in files.items():
            frames[split], _ = prepare_frame(read_table(p), cfg, schema, str(p))
            paths[split] = str(p)
        made_split = False
    else:
        if root.is_dir():
            raise DataError(
                f"{root}: no train/validation/test files (train.jsonl, ...); for one file to be "
                "split, point data.path at the file itself"
            )
        whole, _ = prepare_frame(read_table(root), cfg, schema, str(root))
        frames = group_split(whole, cfg, seed)
        paths = {s: f"{root}#{s}" for s in SPLITS}
        made_split = True
    if cfg.limit:
        frames = {k: _sample(v, cfg.limit, seed) for k, v in frames.items()}
    if cfg.max_rows_per_source and "source" in frames["train"]:
        tr = frames["train"]
        parts = []
        for src, part in tr.groupby("source", sort=False):
            cap = cfg.max_rows_per_source.get(str(src))
            parts.append(_sample(part, cap, seed) if cap else part)
        frames["train"] = pd.concat(parts).sort_index()
    extra_report = {"rows": 0, "excluded_gate_duplicates": 0, "kept": 0, "repeats": cfg.extra_train_repeats}
    if cfg.extra_train_files:
        held_out = set(frames["validation"]["text"].map(normalize_text)) | set(
            frames["test"]["text"].map(normalize_text)
        )
        held_out |= {normalize_text(t) for t in exclude_texts or []}
        for extra in cfg.extra_train_files:
            add, _ = prepare_frame(read_table(extra), cfg, schema, extra)
            dup = add["text"].map(normalize_text).isin(held_out).to_numpy()
            extra_report["rows"] += int(len(add))
            extra_report["excluded_gate_duplicates"] += int(dup.sum())
            if dup.any():
                logger.warning(
                    "%s: %d rows repeat a held-out (validation/test/gate) text and are excluded",
                    extra,
                    int(dup.sum()),
                )
            kept = add[~dup]
            extra_report["kept"] += int(len(kept))
            frames["train"] = pd.concat(
                [frames["train"], *[kept] * cfg.extra_train_repeats], ignore_index=True
            )
            paths["train"] += f"+{extra}"
    if cfg.shuffle_train_labels:  # negative control: keep label frequencies, break text-label link
        tr = frames["train"].reset_index(drop=True)
        ycols = [f"y.{n}" for n in schema.labels]
        tr[ycols] = tr[ycols].to_numpy()[np.random.default_rng(seed).permutation(len(tr))]
        frames["train"] = tr
        logger.warning("train labels are shuffled (negative control)")
    empty = [k for k in SPLITS if len(frames[k]) == 0]
    if empty:
        raise DataError(
            f"{root}: the {', '.join(empty)} split{'s' if len(empty) > 1 else ''} "
            f"{'have' if len(empty) > 1 else 'has'} no rows ({', '.join(paths[k] for k in empty)})"
        )
    yv = frames["validation"][[f"y.{n}" for n in schema.labels]].to_numpy()
    if not ((yv.sum(axis=0) > 0) & (yv.sum(axis=0) < len(yv))).any():
        raise DataError(
            f"{paths['validation']}: no label has both positive and negative rows in the validation "
            f"split ({len(yv)} rows), so checkpoints and thresholds cannot be chosen; add labelled rows"
        )
    overlaps = overlap_report(frames)
    if any(overlaps.values()):
        logger.warning(
            "the same normalised text occurs in more than one split: %s%s",
            overlaps,
            "" if made_split else " (given splits; counted, not removed)",
        )
    splits = {}
    for name, fr in frames.items():
        fr = fr.reset_index(drop=True)
        y = fr[[f"y.{n}" for n in schema.labels]].to_numpy(dtype=np.float32)
        splits[name] = Split(name, fr, y, fingerprint(fr, schema.labels), paths[name])
    report: dict[str, Any] = {
        "made_split": made_split,
        "extra_train": extra_report,
        "overlap": overlaps,
        "rows": {k: len(v) for k, v in splits.items()},
        "positives": {
            k: dict(zip(schema.labels, v.targets.sum(axis=0).astype(int).tolist(), strict=True))
            for k, v in splits.items()
        },
    }
    logger.info("data: %s rows, positives %s", report["rows"], report["positives"]["train"])
    return DataBundle(splits["train"], splits["validation"], splits["test"], report)
