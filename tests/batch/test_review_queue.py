"""`adrisk review-queue`: BADGE picks, one per template cluster, a reason each; edge cases answered."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batch.review_queue import badge_select, cluster_ids, gradient_embeddings, random_select
from tests.signals.test_linking import BASE_A

DISTINCT = [
    "2 bedroom apartment for rent near the park",
    "used mountain bike, good condition",
    "looking for a part time barista",
    "vintage oak desk, must go this week",
    "guitar lessons for beginners downtown",
    "lost cat near main street, reward",
    "selling my old laptop, works fine",
    "room available in shared flat from june",
]


def _run(tmp_path, rows, budget, suffix=".jsonl", model=None, extra=()):
    from adrisk.cli import main

    src = tmp_path / f"in{suffix}"
    df = pd.DataFrame({"id": list(range(len(rows))), "text": rows})
    if suffix == ".jsonl":
        df.to_json(src, orient="records", lines=True)
    else:
        df.to_csv(src, index=False)
    out = tmp_path / "queue.jsonl"
    rc = main(
        [
            "review-queue",
            "--model",
            str(model),
            "--input",
            str(src),
            "--output",
            str(out),
            "--budget",
            str(budget),
            *extra,
        ]
    )
    return rc, (pd.read_json(out, lines=True) if out.stat().st_size else pd.DataFrame())


def test_budget_larger_than_input_queues_every_ad_once(tmp_path, tiny_artifact, capsys):
    rc, q = _run(tmp_path, DISTINCT, budget=50, model=tiny_artifact)
    assert rc == 0
    assert sorted(q["row"]) == list(range(len(DISTINCT)))
    assert q["queue_rank"].tolist() == list(range(1, len(DISTINCT) + 1))
    assert q["reason"].str.contains("least sure of").all()
    assert q["labels"].isna().all() and q["reviewer"].isna().all()  # empty answer columns
    assert f"queued {len(DISTINCT)} of {len(DISTINCT)} ads (budget 50)" in capsys.readouterr().out


def test_empty_input_gives_an_empty_queue(tmp_path, tiny_artifact, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("")
    out = tmp_path / "queue.csv"
    from adrisk.cli import main

    assert (
        main(
            [
                "review-queue",
                "--model",
                str(tiny_artifact),
                "--input",
                str(src),
                "--output",
                str(out),
                "--budget",
                "5",
            ]
        )
        == 0
    )
    assert out.is_file()
    assert "the input has no rows" in capsys.readouterr().out


def test_one_template_cluster_yields_one_pick_that_says_so(tmp_path, tiny_artifact, capsys):
    names = ["Kim", "Ana", "Lee", "Sam", "Jo", "Max"]
    rows = [BASE_A.format(phone=f"415-555-01{i:02d}", name=n) for i, n in enumerate(names)]
    rc, q = _run(tmp_path, rows, budget=4, model=tiny_artifact)
    assert rc == 0 and len(q) == 1
    assert q["template_size"].iloc[0] == len(rows)
    assert f"cluster of {len(rows)} near-identical ads" in q["reason"].iloc[0]
    assert "only 1 template cluster(s)" in capsys.readouterr().out


def test_ads_without_text_are_reported_not_queued(tmp_path, tiny_artifact, capsys):
    rows = [DISTINCT[0], None, "   ", DISTINCT[1]]
    rc, q = _run(tmp_path, rows, budget=10, model=tiny_artifact)
    assert rc == 0 and sorted(q["row"]) == [0, 3]
    out = capsys.readouterr().out
    assert "2 ad(s) without text cannot be judged and were not queued (rows 1, 2)" in out


def test_ads_already_labelled_are_not_queued_again(tmp_path, tiny_artifact, capsys):
    done = tmp_path / "labelled.csv"  # an earlier round's filled-in queue
    pd.DataFrame({"text": [DISTINCT[0].upper(), None], "labels": ["[]", "[]"]}).to_csv(done, index=False)
    rc, q = _run(tmp_path, DISTINCT, budget=50, model=tiny_artifact, extra=["--labelled", str(done)])
    assert rc == 0 and sorted(q["row"]) == list(range(1, len(DISTINCT)))  # row 0: same text, labelled
    assert q["reason"].str.contains("least sure of").all()
    assert (
        "1 ad(s) share a template cluster with one of the 1 ads already labelled" in capsys.readouterr().out
    )
    rc, _ = _run(
        tmp_path, DISTINCT, budget=5, model=tiny_artifact, extra=["--labelled", str(tmp_path / "no.csv")]
    )
    assert rc == 1 and "labelled file not found" in capsys.readouterr().err


def test_bad_budget_and_same_output_are_one_line_errors(tmp_path, tiny_artifact, capsys):
    from adrisk.cli import main

    src = tmp_path / "in.jsonl"
    pd.DataFrame({"text": DISTINCT}).to_json(src, orient="records", lines=True)
    assert (
        main(
            [
                "review-queue",
                "--model",
                str(tiny_artifact),
                "--input",
                str(src),
                "--output",
                str(src),
                "--budget",
                "3",
            ]
        )
        == 1
    )
    assert (
        main(
            [
                "review-queue",
                "--model",
                str(tiny_artifact),
                "--input",
                str(src),
                "--output",
                str(tmp_path / "q.csv"),
                "--budget",
                "0",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "--output must differ" in err and "--budget must be at least 1" in err


def test_badge_prefers_uncertain_then_distant_rows():
    hidden = np.eye(4, dtype=np.float32)
    logits = np.array([[0.0], [5.0], [0.1], [-0.2]])  # threshold 0.5: row 0 the most uncertain
    g = gradient_embeddings(logits, np.array([0.5]), hidden)
    picks = badge_select(g, np.arange(4), budget=2, seed=0)
    assert picks[0][0] == 0
    assert picks[1][0] in (2, 3)  # row 1 is certain: its gradient embedding is near zero
    clustered = badge_select(g, np.array([0, 0, 0, 1]), budget=4, seed=0)
    assert [r for r, _ in clustered] == [0, 3]  # one per cluster, however large the budget


def test_badge_goes_on_from_labelled_centres_and_start_picks():
    g = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.0, 0.0]])
    # a labelled ad at row 0's embedding: rows 0 and 1 are near it, row 2 is the farthest
    picks = badge_select(g, np.arange(4), budget=1, seed=0, labelled=np.array([[1.0, 0.0]]))
    assert picks[0][0] in (2, 3) and np.isfinite(picks[0][1])
    started = badge_select(g, np.arange(4), budget=3, seed=0, start=[3])
    assert started[0] == (3, float("inf")) and len({r for r, _ in started}) == 3


def test_badge_weights_scale_the_draw_and_zero_weight_rows_come_last():
    g = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    # after row 0 (largest norm, first by index), only rows 1 and 3 carry weight: they come next
    picks = badge_select(g, np.arange(4), budget=3, seed=0, weights=np.array([1.0, 1.0, 0.0, 1.0]))
    assert picks[0][0] == 0 and {r for r, _ in picks[1:]} == {1, 3}
    for seed in range(5):  # a weight of 0 everywhere else: row 2 is drawn second whatever the seed
        heavy = badge_select(g, np.arange(4), budget=2, seed=seed, weights=np.array([0.0, 0.0, 1.0, 0.0]))
        assert heavy[1][0] == 2


def test_identical_texts_share_a_cluster():
    labels = cluster_ids(["Hello there", "hello  there", "other"], np.array([0, 1, 2]))
    assert labels[0] == labels[1] != labels[2]


@pytest.mark.parametrize("seed", [0, 1])
def test_badge_is_deterministic_for_a_seed(seed):
    rng = np.random.default_rng(3)
    g = rng.normal(size=(40, 6))
    assert badge_select(g, np.arange(40), 10, seed) == badge_select(g, np.arange(40), 10, seed)


def test_random_strategy_draws_one_per_cluster_skips_labelled_and_says_so(tmp_path, tiny_artifact, capsys):
    done = tmp_path / "labelled.csv"
    pd.DataFrame({"text": [DISTINCT[0]], "labels": ["[]"]}).to_csv(done, index=False)
    copies = [BASE_A.format(phone=f"415-555-01{i:02d}", name=n) for i, n in enumerate(["Kim", "Ana", "Lee"])]
    rows = [*DISTINCT, *copies, None]
    extra = ["--strategy", "random", "--labelled", str(done)]
    rc, q = _run(tmp_path, rows, budget=50, model=tiny_artifact, extra=extra)
    assert rc == 0
    picked = sorted(q["row"])
    assert picked[: len(DISTINCT) - 1] == list(range(1, len(DISTINCT)))  # row 0 is labelled already
    assert len(picked) == len(DISTINCT) - 1 + 1  # the three copies are one template cluster: one pick
    assert q["reason"].str.contains("drawn at random, one per template cluster").all()
    first = _run(tmp_path, rows, budget=3, model=tiny_artifact, extra=extra)[1]["row"].tolist()
    assert (
        len(first) == 3
        and _run(tmp_path, rows, 3, model=tiny_artifact, extra=extra)[1]["row"].tolist() == first
    )
    with pytest.raises(SystemExit):
        _run(tmp_path, DISTINCT, budget=3, model=tiny_artifact, extra=["--strategy", "newest"])
    assert "invalid choice: 'newest'" in capsys.readouterr().err


def test_random_select_is_uniform_over_rows_one_per_cluster():
    clusters = np.array([0, 0, 0, 1, 2, 3])
    picks = [random_select(clusters, 2, seed) for seed in range(400)]
    assert all(len(p) == 2 and len({clusters[i] for i, _ in p}) == 2 for p in picks)
    assert random_select(clusters, 10, 0).__len__() == 4  # one per distinct cluster at most
    assert random_select(clusters, 3, 5) == random_select(clusters, 3, 5)
    first = np.bincount([p[0][0] for p in picks], minlength=6) / len(picks)
    assert np.allclose(first, 1 / 6, atol=0.06)  # every row as likely to come first
    assert random_select(clusters, 0, 0) == [] and random_select(np.zeros(0, int), 3, 0) == []
