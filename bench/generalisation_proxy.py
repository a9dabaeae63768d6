"""Cheap proxy for issue 10's training choices: TF-IDF + logistic regression trained with and
without view augmentation and source-balanced weights, scored on the validation split and on
style-stripped views of it (``training/views.py``). Never reads cross-site-v1.

    nice -n 10 .venv/bin/python bench/generalisation_proxy.py --data ../shared/datasets/risky-ads-v1

Prints one table, a row per variant: validation AP per (label, source) task, and on the ``short``
and ``plain`` views of validation the adult_services AP, its recall at the threshold chosen on the
unchanged validation split (precision >= 0.9), and the share of Craigslist rows flagged.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.pipeline import FeatureUnion

from model.normalize import normalize_text
from training.views import apply_view, augment_rows

LABELS = ("adult_services", "trafficking_indicators", "scam")
TASKS = {  # name -> (label, source or None)
    "adult": ("adult_services", None),
    "traff@bp": ("trafficking_indicators", "backpage_escort_ca_2018"),
    "scam@sms": ("scam", "uci_sms_spam"),
    "scam@job": ("scam", "emscad_jobs_subset"),
}


def load(path: str, split: str, cap_craigslist: int | None, seed: int) -> pd.DataFrame:
    df = pd.read_json(f"{path}/{split}.jsonl", lines=True)
    if cap_craigslist:
        cl = df[df.source == "craigslist_headings"]
        df = pd.concat(
            [
                df[df.source != "craigslist_headings"],
                cl.sample(n=min(cap_craigslist, len(cl)), random_state=seed),
            ]
        )
    for lab in LABELS:
        df[lab] = df["labels"].map(lambda ls, lab=lab: int(lab in ls))
    return df.reset_index(drop=True)


def threshold_at_precision(y: np.ndarray, p: np.ndarray, target: float = 0.9) -> float:
    prec, _, thr = precision_recall_curve(y, p)
    ok = np.flatnonzero(prec[:-1] >= target)
    return float(thr[ok[0]]) if ok.size else 0.5


def run(
    train: pd.DataFrame, val: pd.DataFrame, views: list[str], balanced: bool, seed: int
) -> dict[str, float]:
    texts = train.text.tolist()
    ys = train[list(LABELS)].to_numpy()
    srcs = train.source.to_numpy()
    if views:
        add, rows = augment_rows(texts, views, seed=seed)
        texts = texts + add
        ys = np.concatenate([ys, ys[rows]])
        srcs = np.concatenate([srcs, srcs[rows]])
    w = np.ones(len(texts))
    if balanced:  # each source carries the same total weight
        for s in np.unique(srcs):
            w[srcs == s] = len(texts) / (len(np.unique(srcs)) * (srcs == s).sum())
    feats = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=100_000)),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, max_features=150_000
                ),
            ),
        ]
    )
    x = feats.fit_transform([normalize_text(t) for t in texts])
    out: dict[str, float] = {}
    val_x = {"orig": feats.transform([normalize_text(t) for t in val.text])}
    for v in ("short", "plain"):
        val_x[v] = feats.transform([normalize_text(t) for t in apply_view(v, val.text.tolist())])
    vsrc = val.source.to_numpy()
    for j, lab in enumerate(LABELS):
        clf = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000, random_state=seed)
        clf.fit(x, ys[:, j], sample_weight=w)
        p = {k: clf.predict_proba(m)[:, 1] for k, m in val_x.items()}
        y = val[lab].to_numpy()
        for task, (tl, src) in TASKS.items():
            if tl != lab:
                continue
            m = np.ones(len(val), bool) if src is None else vsrc == src
            out[task] = average_precision_score(y[m], p["orig"][m])
        if lab == "adult_services":
            thr = threshold_at_precision(y, p["orig"])
            for v in ("short", "plain"):
                out[f"{v}.ap"] = average_precision_score(y, p[v])
                out[f"{v}.rec"] = float((p[v][y == 1] >= thr).mean())
                out[f"{v}.cl_flag"] = float((p[v][vsrc == "craigslist_headings"] >= thr).mean())
            out["orig.cl_flag"] = float((p["orig"][vsrc == "craigslist_headings"] >= thr).mean())
    return out


class GroupDRO:
    """Online group DRO weights (Sagawa et al. 2020, "Distributionally robust neural networks for group
    shifts", Algorithm 1): the loss is a q-weighted sum of per-group mean losses, q following an
    exponentiated-gradient ascent on the groups' losses. Kept here, with the experiment it measured:
    adrisk's loop no longer offers it (docs/generalisation.md §5)."""

    def __init__(self, n_groups: int, eta: float):
        import torch

        self.eta = eta
        self.q = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64)

    def loss(self, per_row_loss, group_ids):
        import torch

        g = self.q.numel()
        counts = torch.bincount(group_ids, minlength=g).to(per_row_loss.dtype)
        sums = torch.zeros(g, dtype=per_row_loss.dtype).scatter_add(0, group_ids, per_row_loss)
        present = counts > 0
        means = torch.where(present, sums / counts.clamp(min=1), torch.zeros_like(sums))
        with torch.no_grad():
            step = torch.where(
                present, self.eta * means.detach().double(), torch.zeros(g, dtype=torch.float64)
            )
            self.q = self.q * torch.exp(step)
            self.q = self.q / self.q.sum()
        w = self.q.to(per_row_loss.dtype) * present
        return (w * means).sum() / w.sum().clamp(min=1e-12)


def group_keys(sources, is_view, targets: np.ndarray) -> np.ndarray:
    """Group id per row: (source, view or original text, any label positive), ids 0..G-1."""
    pos = (np.asarray(targets).sum(axis=1) > 0).tolist()
    keys = [f"{s}|{int(v)}|{int(p)}" for s, v, p in zip(sources, is_view, pos, strict=True)]
    return np.unique(np.asarray(keys), return_inverse=True)[1].astype(np.int64)


def run_linear(
    train: pd.DataFrame,
    val: pd.DataFrame,
    views: list[str],
    dro: bool,
    seed: int,
    epochs: int = 4,
    eta: float = 0.01,
) -> dict[str, float]:
    """The same features, one linear layer trained by Adam in torch with the project's loss and, with
    ``dro``, group DRO over ``group_keys``: ERM vs DRO with everything else equal."""
    import torch

    from training.views import training_rows

    torch.manual_seed(seed)
    rows = training_rows(train.text.tolist(), train[list(LABELS)].to_numpy(), views, 1.0, seed)
    n = len(train)
    _, origin = augment_rows(train.text.tolist(), views, 1.0, seed) if views else ([], np.zeros(0, np.int64))
    sources = train.source.tolist() + [train.source.iloc[i] for i in origin.tolist()]
    group_ids = group_keys(sources, [False] * n + [True] * len(origin), rows.targets)
    feats = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=100_000)),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, max_features=150_000
                ),
            ),
        ]
    )
    x = feats.fit_transform([normalize_text(t) for t in rows.texts]).tocsr().astype(np.float32)
    y = torch.from_numpy(rows.targets.astype(np.float32))
    pos = y.sum(0)
    lin = torch.nn.Linear(x.shape[1], len(LABELS))
    opt = torch.optim.Adam(lin.parameters(), lr=2e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=torch.clamp((len(y) - pos) / pos.clamp(min=1), 1, 10), reduction="none"
    )
    groups = torch.from_numpy(group_ids)
    gdro = GroupDRO(int(groups.max()) + 1, eta) if dro else None
    rng = np.random.default_rng(seed)

    def tens(m):
        m = m.tocoo()
        return torch.sparse_coo_tensor(
            np.vstack([m.row, m.col]), m.data.astype(np.float32), m.shape
        ).coalesce()

    for _ in range(epochs):
        for b in np.array_split(rng.permutation(x.shape[0]), x.shape[0] // 64):
            per = loss_fn(lin(tens(x[b])), y[b]).mean(1)
            loss = gdro.loss(per, groups[b]) if gdro else per.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    out: dict[str, float] = {}
    with torch.no_grad():
        p = {"orig": torch.sigmoid(lin(tens(feats.transform([normalize_text(t) for t in val.text])))).numpy()}
        for v in ("short", "plain"):
            vt = [normalize_text(t) for t in apply_view(v, val.text.tolist())]
            p[v] = torch.sigmoid(lin(tens(feats.transform(vt)))).numpy()
    vsrc = val.source.to_numpy()
    for task, (lab, src) in TASKS.items():
        m = np.ones(len(val), bool) if src is None else vsrc == src
        out[task] = average_precision_score(val[lab].to_numpy()[m], p["orig"][m, LABELS.index(lab)])
    y0 = val["adult_services"].to_numpy()
    thr = threshold_at_precision(y0, p["orig"][:, 0])
    for v in ("short", "plain"):
        out[f"{v}.ap"] = average_precision_score(y0, p[v][:, 0])
        out[f"{v}.rec"] = float((p[v][y0 == 1, 0] >= thr).mean())
        out[f"{v}.cl_flag"] = float((p[v][vsrc == "craigslist_headings", 0] >= thr).mean())
    out["orig.cl_flag"] = float((p["orig"][vsrc == "craigslist_headings", 0] >= thr).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/risky-ads-v1")
    ap.add_argument("--cap-craigslist", type=int, default=3000, help="as configs/demo.yaml")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--linear", action="store_true", help="compare ERM and group DRO with a torch linear model"
    )
    args = ap.parse_args()
    train = load(args.data, "train", args.cap_craigslist, args.seed)
    val = load(args.data, "validation", None, args.seed)
    variants = {
        "none": ([], False),
        "aug:short": (["short"], False),
        "aug:short+plain": (["short", "plain"], False),
        "balanced": ([], True),
        "aug:short+balanced": (["short"], True),
    }
    if args.linear:
        variants = {"linear-erm:aug:short": (["short"], False), "linear-dro:aug:short": (["short"], True)}
    rows = []
    for name, (views, flag) in variants.items():
        t0 = time.perf_counter()
        r = (
            run_linear(train, val, views, flag, args.seed)
            if args.linear
            else run(train, val, views, flag, args.seed)
        )
        rows.append({"variant": name, **r, "fit_s": time.perf_counter() - t0})
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
    print(
        "\nvalidation (risky-ads-v1); views of validation; threshold from unchanged validation at precision 0.9"
    )
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
