"""Score trained artifacts side by side on the validation split and its style-stripped views
(``training/views.py``): the numbers issue 10's training options are chosen by. ``--final`` adds
the test split and cross-site-v1 (evaluation only: run it once, for the chosen default, after the
choice is made).

    nice -n 10 .venv/bin/python bench/generalisation_eval.py --data ../shared/datasets/risky-ads-v1 \
        demo0=/work/runs/demo0/outputs/model demo-aug=/work/runs/demo-aug/outputs/model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from model.predictor import Predictor
from training.views import apply_view

TASKS = {  # name -> (label, source or None)
    "adult": ("adult_services", None),
    "traff@bp": ("trafficking_indicators", "backpage_escort_ca_2018"),
    "scam@sms": ("scam", "uci_sms_spam"),
    "scam@job": ("scam", "emscad_jobs_subset"),
}
CL = "craigslist_headings"


def _frame(path: Path, labels) -> pd.DataFrame:
    df = pd.read_json(path, lines=True, dtype=False)
    for lab in labels:
        df[lab] = df["labels"].map(lambda ls, lab=lab: int(lab in ls))
    return df


def split_row(
    pred: Predictor, df: pd.DataFrame, views: list[str], base: np.ndarray | None = None
) -> dict[str, float]:
    """Per-task AP on the unchanged rows; adult_services AP / recall / Craigslist share flagged per view."""
    labels = list(pred.labels)
    thr = pred.meta.threshold_vector()
    a = labels.index("adult_services")
    y = df["adult_services"].to_numpy()
    cl = (df.source == CL).to_numpy()
    out: dict[str, float] = {}
    base = pred.predict_proba(df.text.tolist()) if base is None else base
    for v in ["unchanged", *views]:
        p = base
        if v != "unchanged":  # score only the rows the view changes
            texts = apply_view(v, df.text.tolist())
            changed = [i for i, (t, o) in enumerate(zip(texts, df.text, strict=True)) if t != o]
            p = base.copy()
            if changed:
                p[changed] = pred.predict_proba([texts[i] for i in changed])
        if v == "unchanged":
            for task, (lab, src) in TASKS.items():
                m = np.ones(len(df), bool) if src is None else (df.source == src).to_numpy()
                out[task] = average_precision_score(df[lab].to_numpy()[m], p[m, labels.index(lab)])
        out[f"{v}.ap"] = average_precision_score(y, p[:, a])
        out[f"{v}.rec"] = float((p[y == 1, a] >= thr[a]).mean())
        out[f"{v}.cl_flag"] = float((p[cl, a] >= thr[a]).mean())
    return out


def cross_site_row(
    pred: Predictor, xs: pd.DataFrame, test: pd.DataFrame, ptest: np.ndarray
) -> dict[str, float]:
    """cross-site-v1 as its README asks: adult recall at the model's threshold; AP with risky-ads-v1's
    non-adult test rows as negatives; plus the share of test Craigslist rows flagged."""
    labels = list(pred.labels)
    a = labels.index("adult_services")
    thr = pred.meta.threshold_vector()[a]
    px = pred.predict_proba(xs.text.tolist())[:, a]
    neg = test[test.adult_services == 0]
    pn = ptest[(test.adult_services == 0).to_numpy(), a]
    yx = xs.adult_services.to_numpy()
    y = np.concatenate([yx, np.zeros(len(neg))])
    return {
        "xs.recall": float((px[yx == 1] >= thr).mean()),
        "xs.ap": average_precision_score(y, np.concatenate([px, pn])),
        "xs.benign_flag": float((px[yx == 0] >= thr).mean()),
        "test.cl_flag": float((pn[(neg.source == CL).to_numpy()] >= thr).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="name=artifact_dir")
    ap.add_argument("--data", default="../shared/datasets/risky-ads-v1")
    ap.add_argument("--views", nargs="+", default=["short", "title"])
    ap.add_argument(
        "--final", metavar="CROSS_SITE_JSONL", help="also test + cross-site (final evaluation only)"
    )
    ap.add_argument(
        "--final-for",
        nargs="*",
        default=[],
        metavar="NAME",
        help="--final only for these models (default all)",
    )
    args = ap.parse_args()
    data = Path(args.data)
    rows = []
    for spec in args.models:
        name, path = spec.split("=", 1)
        pred = Predictor.load(path, runtime="torch")
        labels = list(pred.labels)
        row = {
            "model": name,
            **{
                f"val.{k}": v
                for k, v in split_row(pred, _frame(data / "validation.jsonl", labels), args.views).items()
            },
        }
        if args.final and (not args.final_for or name in args.final_for):
            test = _frame(data / "test.jsonl", labels)
            ptest = pred.predict_proba(test.text.tolist())
            row |= {
                f"test.{k}": v
                for k, v in split_row(pred, test, [], ptest).items()
                if "." not in k or k.startswith("unchanged")
            }
            row |= cross_site_row(pred, _frame(Path(args.final), labels), test, ptest)
        rows.append(row)
        print(pd.DataFrame([row]).round(3).T.to_string(), flush=True)
    print(
        "\nside by side (AP per task on unchanged rows; adult_services AP / recall at the model's threshold / "
        "share of Craigslist rows flagged on each view)"
    )
    print(pd.DataFrame(rows).set_index("model").round(3).T.to_string())


if __name__ == "__main__":
    main()
