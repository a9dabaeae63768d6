"""Usage: .venv/bin/python bench/blend_decisions.py [--config C] [--paired] RUN [RUN ...]
RUN: a trained artifact directory, optionally followed by the ``--set`` overrides it was trained with,
comma-separated: ``outputs/demo/model`` or ``runs/seed43/mask/model:seed=43``. ``identity.mask`` follows
the artifact (``adrisk.json`` records the mask it was trained with) unless given.

What the TF-IDF blend's decision (``training/blend.py``) does to each run's test AP. For every run it
rebuilds what training decided on: the config's splits (with the run's overrides, identity mask
included), the TF-IDF baseline fitted on the training rows (style views included, as training fits it), the artifact's transformer logits (torch
runtime) of the validation rows, their style views and the test rows. It then prints, per label:

1. the blend as shipped (``adrisk.json``) and the decision this code makes on the same inputs, with
   its two rules' figures (cross-fitted validation AP; each view's recall, transformer -> blend);
2. test AP overall and within each source where the label has both classes, for the transformer
   alone, for the stacked blend (its weights fitted on validation as training fits them) whatever
   the decision, and as this code decides.

Within each source, test AP is also split by whether the ad names an identity term of the
mitigations' list (``training/identity_terms.py``, read on the unmasked text): ``/names a term`` and
``/names none``. A mitigation that costs AP only where ads name a term costs the terms' own evidence.

``--paired``: the runs are pairs (without, with) of a change such as ``identity.mask``; the last table
is the change of each test AP as this code decides, per pair, with its mean, standard deviation and
standard error over the pairs.

So it shows how much of one run's test AP rides on a yes/no decision taken on the validation split,
and lets two runs (a seed pair, a mitigation and none) be compared with the decision held fixed.
The test split is read only to report; nothing here chooses anything on it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import expit
from sklearn.metrics import average_precision_score

from model.artifact import load_meta
from model.predictor import Predictor
from training.baseline import TfidfBaseline
from training.blend import blend_from_baseline, fit_blend, fit_stack
from training.config import load_config
from training.counterfactual import prepare_bundle
from training.data import load_data
from training.identity_terms import forms_of, mitigation_terms, term_pattern
from training.metrics import evaluate_scores
from training.pipeline import BLEND_CHECK_VIEWS, fine_tuning_rows
from training.views import apply_view


def parse_run(spec: str) -> tuple[str, list[str]]:
    """``DIR[:k=v,k=v]`` -> (DIR, ["k=v", ...])."""
    directory, _, sets = spec.partition(":")
    return directory, [s for s in sets.split(",") if s]


def within_source_ap(
    logits: np.ndarray, targets: np.ndarray, labels, sources, names_term: np.ndarray
) -> dict[str, float]:
    """Test AP per label, overall and per source with both classes: ``{label}`` / ``{label}/{source}``,
    and within a source split by ``names_term`` ((n,) bool): ``.../names a term``, ``.../names none``."""
    m = evaluate_scores(expit(logits), targets, labels, [0.5] * len(labels), "test", sources)
    src = np.asarray(sources)
    out = {}
    for j, name in enumerate(labels):
        if f"test.{name}.ap" in m:
            out[name] = m[f"test.{name}.ap"]
        for s in sorted(set(sources)):
            key = f"test.source.{s}.{name}.ap"
            rows = src == s
            if key in m and 0 < targets[rows, j].sum() < rows.sum():
                out[f"{name}/{s}"] = m[key]
                for part, sel in (("names a term", rows & names_term), ("names none", rows & ~names_term)):
                    if 0 < targets[sel, j].sum() < sel.sum():
                        out[f"{name}/{s}/{part}"] = float(
                            average_precision_score(targets[sel, j], logits[sel, j])
                        )
    return out


def run(config: str, directory: str, overrides: list[str]) -> dict[str, float]:
    """Print one run's tables; returns its test AP per key as this code decides."""
    start = time.perf_counter()
    if not any(o.startswith("identity.mask=") for o in overrides):  # as the artifact was trained
        overrides = [*overrides, f"identity.mask={'true' if load_meta(directory).identity_mask else 'false'}"]
    cfg = load_config(config, overrides)
    labels = cfg.label_schema.labels
    raw = load_data(cfg.data, cfg.label_schema, cfg.seed)
    term = term_pattern(forms_of(mitigation_terms()))
    names_term = np.array([term.search(t) is not None for t in raw.test.texts])
    bundle, _ = prepare_bundle(cfg, raw)
    rows = fine_tuning_rows(cfg, bundle.train)
    baseline = TfidfBaseline(cfg.label_schema, cfg.baseline, cfg.seed).fit(rows.texts, rows.targets)
    predictor = Predictor.load(directory, runtime="torch")
    val, test = bundle.validation, bundle.test
    views = {v: apply_view(v, val.texts) for v in BLEND_CHECK_VIEWS}
    val_z = predictor.logits(val.texts)
    blend, report = fit_blend(
        blend_from_baseline(baseline, labels),
        val_z,
        val.texts,
        val.targets,
        min_gain=cfg.baseline.blend_min_gain,
        seed=cfg.seed,
        views={v: (predictor.logits(t), t) for v, t in views.items()},
        target_precision=cfg.target_precisions(),
    )
    shipped = load_meta(directory).blend
    shipped_labels = set(shipped.labels) if shipped else set()
    # the stacker of every label with enough validation rows, decided or not, fitted as training fits it
    val_t, z, tfidf = (
        blend.tfidf_logits(val.texts),
        predictor.logits(test.texts),
        blend.tfidf_logits(test.texts),
    )
    stacked = z.copy()
    for j, name in enumerate(labels):
        if report.model_ap[name] is not None:
            w = fit_stack(np.stack([val_z[:, j], val_t[:, j]], axis=1), val.targets[:, j])
            stacked[:, j] = w.model * z[:, j] + w.tfidf * tfidf[:, j] + w.bias
    alone = within_source_ap(z, test.targets, labels, test.sources, names_term)
    with_blend = within_source_ap(stacked, test.targets, labels, test.sources, names_term)
    decided = {k: with_blend[k] if report.used[k.split("/")[0]] else alone[k] for k in alone}
    print(f"\n{directory} ({', '.join(overrides) or 'config as is'}; {time.perf_counter() - start:.0f} s)")
    print(
        "| label | shipped | this code | validation AP: transformer -> cross-fitted | views: recall transformer -> blend |"
    )
    print("|---|---|---|---|---|")
    for name in labels:
        m_ap, b_ap = report.model_ap[name], report.blend_ap[name]
        aps = "-" if m_ap is None or b_ap is None else f"{m_ap:.4f} -> {b_ap:.4f}"
        vr = ", ".join(f"{v} {a:.3f} -> {b:.3f}" for v, (a, b) in report.view_recall.get(name, {}).items())
        print(
            f"| {name} | {'blended' if name in shipped_labels else '-'} | "
            f"{'blended' if report.used[name] else '-'} | {aps} | {vr or '-'} |"
        )
    print("\n| test AP | transformer alone | stacked blend | change | as decided |")
    print("|---|---:|---:|---:|---:|")
    for key in alone:
        print(
            f"| {key} | {alone[key]:.4f} | {with_blend[key]:.4f} | {with_blend[key] - alone[key]:+.4f} "
            f"| {decided[key]:.4f} |"
        )
    return decided


def paired_table(results: list[dict[str, float]]) -> None:
    """Runs taken as (without, with) pairs: each test AP's change as decided, and its mean over pairs."""
    pairs = list(zip(results[::2], results[1::2], strict=True))
    print(
        f"\n| test AP as decided, with - without | {' | '.join(f'pair {i + 1}' for i in range(len(pairs)))} "
        "| mean | SD | SE |"
    )
    print("|---|" + "---:|" * (len(pairs) + 3))
    for key in pairs[0][0]:
        d = np.array([w[key] - wo[key] for wo, w in pairs])
        sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
        cells = " | ".join(f"{x:+.4f}" for x in d)
        print(f"| {key} | {cells} | {d.mean():+.4f} | {sd:.4f} | {sd / np.sqrt(len(d)):.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--paired", action="store_true", help="runs are (without, with) pairs: print the changes")
    args = ap.parse_args()
    if args.paired and len(args.runs) % 2:
        ap.error("--paired needs an even number of runs: (without, with) pairs")
    results = [run(args.config, *parse_run(spec)) for spec in args.runs]
    if args.paired:
        paired_table(results)


if __name__ == "__main__":
    main()
