"""bench/site_labels.py: the new site leaves the train and validation splits, the test split stays whole,
and the picked site rows (the moderators' answers) come from the site's train split only."""

import json

import pandas as pd
import pytest

from bench.site_labels import prepare


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prepare_moves_the_site_out_of_training_and_picks_its_labels(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 30), ("validation", 6), ("test", 6)):
        rows = [
            {"text": f"{split} {src} ad {i}", "labels": ["scam"] if i % 2 else [], "source": src}
            for src in ("site", "other")
            for i in range(n)
        ]
        _write(data / f"{split}.jsonl", rows)
    out = tmp_path / "out"
    commands = prepare(data, out, "site", labels=10, seed=0, repeats=[1, 5])
    read = {s: pd.read_json(out / "data" / f"{s}.jsonl", lines=True) for s in ("train", "validation", "test")}
    assert set(read["train"]["source"]) == {"other"} and len(read["train"]) == 30
    assert set(read["validation"]["source"]) == {"other"}
    assert len(read["test"]) == 12  # the site's test rows are what the runs are judged on
    picked = pd.read_json(out / "site_labels.jsonl", lines=True)
    assert len(picked) == 10 and picked["text"].str.startswith("train site").all()
    assert picked["text"].is_unique
    site_pool = pd.read_json(out / "site_pool.jsonl", lines=True)  # the site's train ads, text only
    assert list(site_pool.columns) == ["text"] and len(site_pool) == 30
    assert [c.count("extra_train_repeats=") for c in commands] == [1, 1]
    assert "extra_train_repeats=5" in commands[1]
    # the same seed picks the same rows
    again = prepare(data, tmp_path / "again", "site", labels=10, seed=0, repeats=[1])
    assert pd.read_json(tmp_path / "again" / "site_labels.jsonl", lines=True).equals(picked) and again


def test_prepare_refuses_more_labels_than_the_site_has(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        _write(
            data / f"{split}.jsonl",
            [{"text": f"{split} {i}", "labels": [], "source": "site"} for i in range(3)],
        )
    with pytest.raises(SystemExit, match="fewer than --labels 5"):
        prepare(data, tmp_path / "out", "site", labels=5, seed=0, repeats=[1])


def test_spread_labels_each_answers_template_cluster_and_skips_disagreement(tmp_path):
    from bench.site_labels import spread
    from tests.signals.test_linking import BASE_A, BASE_B

    names = ["amy", "bea", "cat", "dee"]
    a = [BASE_A.format(phone=f"415-555-01{i:02d}", name=n) for i, n in enumerate(names)]
    b = [BASE_B.format(phone=f"212-555-02{i:02d}", name=n) for i, n in enumerate(names)]
    answers = [
        {"text": a[0], "labels": ["adult_services"], "source": "site"},
        {"text": b[0], "labels": [], "source": "site"},  # B's two answers disagree: B spreads nothing
        {"text": b[1], "labels": ["scam"], "source": "site"},
    ]
    pool = [{"text": t} for t in [a[0], *a[1:], *b[2:], "a plain unrelated ad about a used bike"]]
    _write(tmp_path / "answers.jsonl", answers)
    _write(tmp_path / "pool.jsonl", pool)
    counts = spread(tmp_path / "answers.jsonl", tmp_path / "pool.jsonl", tmp_path / "out.jsonl")
    assert counts == {"answers": 3, "added": 3, "conflicting_clusters": 1}
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    added = out.iloc[3:]
    assert sorted(added["text"]) == sorted(a[1:])  # A's copy of the answered text is not added twice
    assert all(labels == ["adult_services"] for labels in added["labels"])
    assert (added["source"] == "site").all()  # the pool has no source: the answer's is copied
