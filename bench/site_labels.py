"""A new site's few moderator labels in a retrain, counted once or several times (docs/adaptation.md §3).

The new site is one source of risky-ads-v1 (default: job posts, ``emscad_jobs_subset``, label
``scam``). ``prepare`` writes a copy of the data set without that source in the train and validation
splits (the test split whole), and ``--labels`` of the site's train-split ads, drawn at random
(``--seed``), with their held labels as the moderators' answers, once per ``--repeats`` value
(each row written that many times: what ``data.extra_train_repeats`` does). It prints the training
commands, one per repeat count. ``report`` reads the finished runs from their MLflow stores and
prints, side by side: test AP and recall at the model's threshold within every source and label,
and validation AP per label (what the checkpoint and the blend were chosen on). ``spread`` writes
answers plus the site's ads that share a template cluster with one (``site_pool.jsonl``, which
``prepare`` writes), labelled by it: one answer counted for its near-identical ads.

    .venv/bin/python bench/site_labels.py prepare --out outputs/site-labels --labels 100 --repeats 1,10
    # ... the printed `adrisk train` commands (about 15 minutes each on 2 cores) ...
    .venv/bin/python bench/site_labels.py report outputs/site-labels/mlflow-x1.db outputs/site-labels/mlflow-x10.db

Everything is written under ``--out`` (keep it out of git: ``outputs/`` is ignored). The test split
is only reported on; nothing here chooses anything on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.adaptation_compare import TASKS, run_metrics  # noqa: E402

SPLITS = ("train", "validation", "test")


def prepare(data: Path, out: Path, site: str, labels: int, seed: int, repeats: list[int]) -> list[str]:
    """Write the data without ``site`` and the labelled site rows; returns the training commands."""
    frames = {s: pd.read_json(data / f"{s}.jsonl", lines=True) for s in SPLITS}
    pool = frames["train"][frames["train"]["source"] == site]
    if len(pool) < labels:
        raise SystemExit(f"{site}: {len(pool)} train rows, fewer than --labels {labels}")
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        keep = frame if split == "test" else frame[frame["source"] != site]
        keep.to_json(out / "data" / f"{split}.jsonl", orient="records", lines=True)
    pool[["text"]].to_json(out / "site_pool.jsonl", orient="records", lines=True)  # for ``spread``
    picked = pool.sample(n=labels, random_state=seed)
    picked.to_json(out / "site_labels.jsonl", orient="records", lines=True)
    commands = []
    for r in repeats:
        commands.append(
            f"MLFLOW_TRACKING_URI=sqlite:///{out.resolve()}/mlflow-x{r}.db .venv/bin/adrisk train "
            f"--config configs/demo.yaml --set run_name=site-labels-x{r} --set output_dir={out}/x{r} "
            f"--set export_onnx=false --set data.path={out}/data "
            f"--set 'data.extra_train_files=[{out}/site_labels.jsonl]' --set data.extra_train_repeats={r}"
        )
    return commands


def agreed_labels(answer_clusters, answer_labels) -> tuple[dict, int]:
    """Each template cluster's answer where all its answers agree, and how many clusters' answers
    disagree (those spread nothing). ``answer_labels``: hashable, one per answer (a 0/1 label, a
    tuple of label names)."""
    votes: dict = {}
    for c, label in zip(answer_clusters, answer_labels, strict=True):
        votes.setdefault(c, set()).add(label)
    agreed = {c: next(iter(v)) for c, v in votes.items() if len(v) == 1}
    return agreed, len(votes) - len(agreed)


def spread(answers: Path, pool: Path, out: Path) -> dict[str, int]:
    """Write the answers plus every ``pool`` ad in a template cluster with an answer, labelled by it.

    Template clusters are the review queue's (``batch.review_queue.cluster_ids`` over
    ``signals.linking`` templates and identical texts), computed over the pool and the answers
    together. A cluster whose answers disagree spreads nothing; pool rows whose text is an answer's
    are not added again; columns the pool lacks (``source``, say) are copied from the cluster's first
    answer. Returns counts: answers, added, conflicting clusters.
    """
    from batch.review_queue import cluster_ids
    from signals.linking import link_frame

    ans = pd.read_json(answers, lines=True)
    rows = pd.read_json(pool, lines=True)
    texts = rows["text"].tolist() + ans["text"].tolist()
    clusters = cluster_ids(texts, link_frame(pd.DataFrame({"text": texts})).template_id)
    in_pool, in_ans = clusters[: len(rows)], clusters[len(rows) :]
    agreed, conflicting = agreed_labels(in_ans.tolist(), [tuple(sorted(ls)) for ls in ans["labels"]])
    take = pd.Series(in_pool).isin(list(agreed)).to_numpy() & ~rows["text"].isin(set(ans["text"])).to_numpy()
    added = rows[take].copy()
    added["labels"] = [list(agreed[c]) for c in in_pool[take].tolist()]
    first = {c: i for i, c in reversed(list(enumerate(in_ans.tolist())))}  # a cluster's first answer
    for col in ans.columns.difference(added.columns).difference(["id"]):  # e.g. source: the answer's
        added[col] = [ans[col].iloc[first[c]] for c in in_pool[take].tolist()]
    pd.concat([ans, added[[c for c in ans.columns if c in added.columns]]], ignore_index=True).to_json(
        out, orient="records", lines=True
    )
    return {"answers": len(ans), "added": int(take.sum()), "conflicting_clusters": conflicting}


def report(dbs: list[str]) -> None:
    """Print each store's latest finished run: within-source test AP / recall and validation AP."""
    runs = [run_metrics(db) for db in dbs]
    print("| " + " | ".join(["figure", *dbs]) + " |")
    print("|---|" + "---:|" * len(dbs))
    keys = [(f"test AP {lab} in {src}", f"test.source.{src}.{lab}.ap") for src, lab in TASKS]
    keys += [
        (f"test recall at threshold, {lab} in {src}", f"test.source.{src}.{lab}.recall") for src, lab in TASKS
    ]
    keys += [(f"validation AP {lab}", f"validation.{lab}.ap") for lab in sorted({lab for _, lab in TASKS})]
    for name, key in keys:
        cells = [f"{m[key]:.4f}" if key in m else "-" for m in runs]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/risky-ads-v1"))
    p.add_argument("--out", type=Path, default=Path("outputs/site-labels"))
    p.add_argument("--site", default="emscad_jobs_subset")
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", default="1,10")
    r = sub.add_parser("report")
    r.add_argument("dbs", nargs="+")
    s = sub.add_parser("spread", help="answers spread to their template clusters in the pool (JSONL)")
    s.add_argument("--answers", type=Path, required=True)
    s.add_argument(
        "--pool", type=Path, required=True, help="the site's ads (JSONL; their labels are not read)"
    )
    s.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.verb == "prepare":
        reps = [int(x) for x in args.repeats.split(",")]
        print("\n".join(prepare(args.data, args.out, args.site, args.labels, args.seed, reps)))
    elif args.verb == "spread":
        print(spread(args.answers, args.pool, args.out))
    else:
        report(args.dbs)


if __name__ == "__main__":
    main()
