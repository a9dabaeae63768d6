"""Schema errors, split integrity and overlap counting (probe rows marked `train`)."""

import json

import pandas as pd
import pytest

from model.normalize import normalize_text
from model.schema import LabelSchema
from training.config import DataConfig
from training.data import DataError, load_data

SCHEMA = LabelSchema(labels=("adult_services", "trafficking_indicators", "scam"))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n, prefix="ad"):
    return [
        {
            "text": f"{prefix} number {i}",
            "labels": ["scam"] if i % 3 == 0 else [],
            "source": "s" + str(i % 2),
            "group": f"g{i // 2}",
        }
        for i in range(n)
    ]


def test_label_typo_probe_lists_unknown_labels_and_rows(tmp_path, probes):
    [row] = [r for r in probes if r["kind"] == "label-typo-in-data"]
    rows = _rows(5)
    rows.insert(3, {**row["value"], "source": "s", "group": "gx"})
    p = _write_jsonl(tmp_path / "all.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_data(DataConfig(path=str(p)), SCHEMA, seed=0)
    msg = str(e.value)
    assert "'Scam '" in msg and "'unknown_label'" in msg and "rows 4 " in msg
    assert "did you mean 'scam'" in msg


def test_missing_text_column_probe_names_columns(tmp_path, probes):
    [row] = [r for r in probes if r["kind"] == "missing-column"]
    p = _write_jsonl(tmp_path / "all.jsonl", [{**row["value"], "labels": []}] * 3)
    with pytest.raises(DataError, match=r"text column 'text' not found; columns found: \['body', 'labels'\]"):
        load_data(DataConfig(path=str(p)), SCHEMA, seed=0)


def test_missing_text_values_are_errors_naming_rows(tmp_path):
    rows = _rows(4)
    rows[2]["text"] = None
    p = _write_jsonl(tmp_path / "all.jsonl", rows)
    with pytest.raises(DataError, match="rows 3 "):
        load_data(DataConfig(path=str(p)), SCHEMA, seed=0)


def test_group_aware_split_never_cuts_a_group_or_a_text(tmp_path):
    rows = _rows(300)
    rows += [
        {"text": "Same  TEXT  here", "labels": [], "source": "s0", "group": f"solo{i}"} for i in range(5)
    ]
    p = _write_jsonl(tmp_path / "all.jsonl", rows)
    b = load_data(DataConfig(path=str(p)), SCHEMA, seed=1)
    assert b.report["made_split"] is True
    assert sum(b.report["rows"].values()) == 305
    groups = [set(s.frame["group"]) for s in b.splits()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert b.report["overlap"] == {"train_validation": 0, "train_test": 0, "validation_test": 0}


def test_duplicate_across_given_splits_is_counted(tmp_path, probes):
    [row] = [r for r in probes if r["kind"] == "duplicate-across-splits"]
    dup = row["value"]
    _write_jsonl(tmp_path / "train.jsonl", _rows(10) + [{"text": dup, "labels": []}])
    _write_jsonl(tmp_path / "validation.jsonl", _rows(4, "val"))
    _write_jsonl(tmp_path / "test.jsonl", _rows(4, "test") + [{"text": dup.upper() + "  ", "labels": []}])
    b = load_data(DataConfig(path=str(tmp_path)), SCHEMA, seed=0)
    assert normalize_text(dup) != normalize_text(
        dup.upper()
    )  # normalisation keeps case; uncased model lowercases
    assert b.report["overlap"]["train_test"] == 0
    _write_jsonl(tmp_path / "test.jsonl", _rows(4, "test") + [{"text": dup + "\u200b", "labels": []}])
    b = load_data(DataConfig(path=str(tmp_path)), SCHEMA, seed=0)
    assert b.report["overlap"] == {"train_validation": 0, "train_test": 1, "validation_test": 0}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_columns_and_class_formats(tmp_path, fmt):
    df = pd.DataFrame(
        {
            "body": ["a", "b", "c", "d"],
            "adult_services": [0, 1, 0, 0],
            "trafficking_indicators": [0, 1, 0, 0],
            "scam": [1, 0, 0, 1],
        }
    )
    for split in ("train", "validation", "test"):
        getattr(df, f"to_{fmt}")(tmp_path / f"{split}.{fmt}", index=False)
    cfg = DataConfig(
        path=str(tmp_path), text_column="body", label_format="columns", source_column=None, group_column=None
    )
    b = load_data(cfg, SCHEMA, seed=0)
    assert b.train.targets.tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 0, 1]]
    df["scam"] = [1, 2, 0, 0]
    df.to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match="column 'scam' must hold 0/1; bad values in rows 2 "):
        from training.data import prepare_frame, read_table

        prepare_frame(read_table(tmp_path / "x.csv"), cfg, SCHEMA, "x.csv")


def test_real_dataset_loads_with_caps(tmp_path):
    from tests.conftest import DATA_DIR

    cfg = DataConfig(path=str(DATA_DIR), max_rows_per_source={"craigslist_headings": 100})
    b = load_data(cfg, SCHEMA, seed=0)
    assert (b.train.frame["source"] == "craigslist_headings").sum() == 100
    assert len(b.validation) == 3134 and len(b.test) == 3285
    assert len(b.train.fingerprint) == 64 and b.train.fingerprint != b.test.fingerprint
