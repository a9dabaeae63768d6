"""The monitor's shift suite: does ``adrisk monitor`` fire on injected shifts, stay quiet on unshifted
traffic, and estimate precision / recall without labels?

Reference: the validation split (what the model was calibrated on). Windows of ``--window-size`` ads
drawn from the test split (labelled, so every label-free estimate is checked against the realised
figure), without replacement up to the split's size (3,285 ads) and with replacement (a seeded
bootstrap of the split) above it or with ``--bootstrap``: a 10,000-ad window, the production size
``bench/monitor_cost.py`` uses, holds each test ad about three times over. Its realised figures vary
around the test split's own by a 10,000-ad window's sampling error, but no new ads come in: the
centre is still the test split's figure, which for a rare label rests on few ads (29 flagged
trafficking ads). The drift tests keep the copies of one ad in one group (never split between folds
or permutations); the Evidently column is left out (its group-blind folds would meet copies).

* no shift: ``--no-shift`` random draws;
* prevalence: each label's positives re-weighted to x1.5 / x3 and x0.6 / x0.3 of the test prevalence
  (positives and negatives of that label drawn separately: p(x | y) unchanged);
* a source the reference lacks (job posts removed from the reference; 5% natural / 15% of the window)
  and a source the window over-represents (SMS at 25% / 45%);
* style: ``training/views.py``'s ``short`` and ``plain`` views on 30% / 100% of the ads;
* obfuscation (leetspeak and dotted letters in 50% of the words) on 30% / 100% of the ads;
* another language: character noise (5% / 20% of letters replaced) and hand-written Spanish, French,
  Portuguese, Italian and German classified-ad titles at 10% / 40% of the window.

Beside the monitor it runs what a user would run at defaults: Evidently's text-drift rule (a domain
classifier, folds ignoring that ads come in groups, drift when ROC AUC > 0.55; reimplemented here
with the monitor's own features) and, for performance, no estimate at all (the reference's
precision and recall taken to hold). Prints one row per window and the summary; ``--json`` keeps
every number.

    .venv/bin/python bench/shift_suite.py --model models:/risky-ads@champion
    .venv/bin/python bench/shift_suite.py --model models:/risky-ads@champion --window-size 10000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: idle torch threads sleep (shared machines)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from monitor.drift import ad_groups, text_drift  # noqa: E402
from monitor.run import assess  # noqa: E402
from monitor.verdict import MonitorSettings  # noqa: E402
from monitor.window import Window, prepare_window, score_window  # noqa: E402

# Hand-written classified-ad titles in other languages (benign listings), for the language shift.
OTHER_LANGUAGE = [
    "Vendo bicicleta de montaña en buen estado, poco uso",
    "Se alquila piso de dos habitaciones cerca del centro",
    "Busco profesor de guitarra para clases los sábados",
    "Sofá de tres plazas, color gris, entrega a domicilio",
    "Ofrezco servicio de mudanzas económico y rápido",
    "Cachorros de labrador vacunados, listos para entregar",
    "Trabajo de camarero a media jornada, experiencia mínima",
    "Vends vélo de course en aluminium, taille 56",
    "Appartement meublé à louer, quartier calme, proche métro",
    "Cours particuliers de mathématiques pour lycéens",
    "Recherche colocataire pour maison avec jardin",
    "Table en chêne massif avec six chaises, très bon état",
    "Garde d'enfants disponible le soir et le week-end",
    "Vendo carro usado, revisão em dia, único dono",
    "Aluga-se quarto mobiliado para estudante",
    "Aulas de inglês online para iniciantes",
    "Geladeira frost free funcionando perfeitamente",
    "Procuro emprego como pedreiro ou ajudante de obras",
    "Vendo lavatrice quasi nuova, ritiro in zona",
    "Affittasi monolocale arredato vicino all'università",
    "Lezioni di pianoforte per bambini e adulti",
    "Cerco lavoro come badante, referenze disponibili",
    "Verkaufe Kinderwagen in gutem Zustand, kaum benutzt",
    "Zwei-Zimmer-Wohnung zu vermieten, ab sofort frei",
    "Nachhilfe in Mathe und Physik für Schüler",
    "Suche Putzhilfe für Einfamilienhaus, zweimal pro Woche",
    "Esstisch aus Holz mit vier Stühlen abzugeben",
    "Reparación de computadoras y celulares a domicilio",
    "Clases de yoga para principiantes en el parque",
    "Vendo colchón matrimonial nuevo, sin uso",
]
# The stronger strength of each injected shift (all must fire).
STRONG = {"x3.0", "x0.3", "15%", "45%", "100% of ads", "20% of letters", "40% of ads"}
# Window kinds (--only): unshifted draws, the whole split, prevalence, sources, style / obfuscation /
# character noise (re-scored), hand-written other-language rows (re-scored).
KINDS = ("no-shift", "whole", "prevalence", "source", "style", "language")
LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "$", "t": "7"})


def obfuscate(text: str, rng: np.random.Generator) -> str:
    """Half the words of 4+ letters written in leetspeak or with dotted letters (s.e.x.y)."""
    out = []
    for w in text.split(" "):
        if len(w) >= 4 and w.isalpha() and rng.random() < 0.5:
            w = w.lower().translate(LEET) if rng.random() < 0.5 else ".".join(w)
        out.append(w)
    return " ".join(out)


def char_noise(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each letter replaced by a random lower-case letter with probability ``rate``."""
    chars = list(text)
    for i, c in enumerate(chars):
        if c.isalpha() and rng.random() < rate:
            chars[i] = chr(ord("a") + int(rng.integers(26)))
    return "".join(chars)


def transformed(w: Window, texts: list[str]) -> Window:
    """``w`` with new texts: scores, groups, masks and embeddings are recomputed."""
    return Window(ids=w.ids, texts=texts, probs=w.probs, labels=w.labels, sources=w.sources)


def draw(pool: np.ndarray | int, k: int, rng: np.random.Generator, replace: bool) -> np.ndarray:
    """``k`` row indices from ``pool`` (indices, or ``range(pool)``): with replacement when ``replace``,
    else without (``k`` capped at the pool's size)."""
    pool = np.arange(pool) if isinstance(pool, int) else np.asarray(pool)
    return rng.choice(pool, k if replace else min(k, len(pool)), replace=replace)


def prevalence_draw(
    y: np.ndarray, share: float, n: int, rng: np.random.Generator, replace: bool = False
) -> np.ndarray:
    """Row indices: round(share * n) positives of ``y`` (n,) 0/1, the rest negatives (without
    replacement: capped at what exists)."""
    pos, neg = np.flatnonzero(y > 0.5), np.flatnonzero(y <= 0.5)
    k = max(0, round(share * n)) if replace else min(len(pos), max(0, round(share * n)))
    return np.r_[draw(pos, k, rng, replace), draw(neg, n - k, rng, replace)]


def source_draw(
    sources: list[str], source: str, share: float, n: int, rng: np.random.Generator, replace: bool = False
) -> np.ndarray:
    """Row indices: round(share * n) rows of ``source`` (without replacement: capped at what exists),
    the rest from the other sources."""
    s = np.asarray(sources)
    inside, outside = np.flatnonzero(s == source), np.flatnonzero(s != source)
    k = round(share * n) if replace else min(len(inside), round(share * n))
    return np.r_[draw(inside, k, rng, replace), draw(outside, n - k, rng, replace)]


def build_windows(ref: Window, test: Window, args, predictor) -> list[tuple[str, str, Window, Window]]:
    """(name, strength, reference, current) for every window of the suite."""
    from training.views import apply_view

    rng = np.random.default_rng(args.seed)
    n, labels, rep, only = args.window, predictor.labels, args.bootstrap, set(args.only.split(","))
    out = []
    for i in range(args.no_shift if "no-shift" in only else 0):
        out.append(("no shift", f"draw {i}", ref, test.take(draw(len(test), n, rng, rep))))
    # the whole split: the estimates' bias with the least sampling noise in the realised figures
    if "whole" in only:
        out.append(("whole test split", f"{len(test)} ads", ref, test))
    for j, name in enumerate(labels if "prevalence" in only else ()):
        base = float(test.labels[:, j].mean())
        for k in (1.5, 3.0, 0.6, 0.3):
            idx = prevalence_draw(test.labels[:, j], k * base, n, rng, rep)
            out.append((f"prevalence {name}", f"x{k}", ref, test.take(idx)))
    if not only & {"source", "style", "language"}:
        return out

    def rescore(w: Window, texts: list[str]) -> Window:
        w2 = transformed(w, texts)
        w2.probs = np.asarray(predictor.predict_proba(texts), dtype=np.float64)
        return w2

    keep = np.flatnonzero(np.asarray(ref.sources) != "emscad_jobs_subset")
    for strength, share in (("5% (natural)", None), ("15%", 0.15)) if "source" in only else ():
        idx = (
            draw(len(test), n, rng, rep)
            if share is None
            else source_draw(test.sources, "emscad_jobs_subset", share, n, rng, rep)
        )
        out.append(("source the reference lacks (job posts)", strength, ref.take(keep), test.take(idx)))
    for share in (0.25, 0.45) if "source" in only else ():
        idx = source_draw(test.sources, "uci_sms_spam", share, n, rng, rep)
        out.append(("source over-represented (SMS)", f"{share:.0%}", ref, test.take(idx)))
    styles = {
        "view short": lambda t, r: apply_view("short", [t])[0],
        "view plain": lambda t, r: apply_view("plain", [t])[0],
        "obfuscated": obfuscate,
    }
    for kind, fn in styles.items() if "style" in only else ():
        for share in (0.3, 1.0):
            w = test.take(draw(len(test), n, rng, rep))
            hit = rng.random(n) < share
            texts = [fn(t, rng) if h else t for t, h in zip(w.texts, hit, strict=True)]
            out.append((kind, f"{share:.0%} of ads", ref, rescore(w, texts)))
    for rate in (0.05, 0.2) if "style" in only else ():
        w = test.take(draw(len(test), n, rng, rep))
        out.append(
            (
                "character noise",
                f"{rate:.0%} of letters",
                ref,
                rescore(w, [char_noise(t, rate, rng) for t in w.texts]),
            )
        )
    for share in (0.1, 0.4) if "language" in only else ():
        w = test.take(draw(len(test), n, rng, rep))
        hit = np.flatnonzero(rng.random(n) < share)
        texts = list(w.texts)
        for i in hit:
            texts[i] = OTHER_LANGUAGE[int(rng.integers(len(OTHER_LANGUAGE)))]
        w2 = rescore(w, texts)
        w2.labels = w.labels.copy()
        w2.labels[hit] = 0.0  # the hand-written rows are benign listings
        out.append(("another language (hand-written rows)", f"{share:.0%} of ads", ref, w2))
    return out


class _Cached:
    """Cached probabilities in the predictor's place."""

    def __init__(self, labels: tuple[str, ...], probs: np.ndarray):
        self.labels, self.probs = labels, probs

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.probs


def load_scored(args, predictor, embedder, labels: tuple[str, ...]) -> tuple[Window, Window]:
    """The validation and test splits scored, linked (one pass: groups shared by all windows) and
    embedded; kept in ``--cache`` (keyed by the model's metadata and weights) for reruns."""
    import hashlib

    key = hashlib.sha256(predictor.meta.model_dump_json().encode()).hexdigest()[:16]
    cache = Path(args.cache) / f"shift-suite-{key}.npz" if args.cache else None
    z = np.load(cache, allow_pickle=False) if cache is not None and cache.is_file() else None
    wins = []
    for split, name in (("validation", "ref_probs"), ("test", "test_probs")):
        prepared = prepare_window(Path(args.data) / f"{split}.jsonl", labels, what=split)
        scorer = predictor if z is None else _Cached(labels, z[name])
        wins.append(score_window(prepared, scorer, model_version="bench"))
    ref, test = wins
    if z is not None:
        groups, masked = z["groups"], list(z["masked"])
        ref.embeddings, test.embeddings = z["ref_emb"], z["test_emb"]
    else:
        groups, masked = ad_groups(ref.texts + test.texts)
        ref.embeddings, test.embeddings = embedder.embed(ref.texts), embedder.embed(test.texts)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, ref_probs=ref.probs, test_probs=test.probs, groups=groups, ref_emb=ref.embeddings,
                     test_emb=test.embeddings, masked=np.asarray(masked))  # fmt: skip
    ref.groups, test.groups = groups[: len(ref)], groups[len(ref) :]
    ref.masked, test.masked = masked[: len(ref)], masked[len(ref) :]
    return ref, test


def evidently_rule(ref: Window, cur: Window, seed: int) -> tuple[float, bool]:
    """Evidently's text-drift rule at its defaults: the same domain classifier with folds that ignore
    groups (every ad its own group) on the raw texts, drift when ROC AUC > 0.55 (or the small-sample
    bootstrap bound)."""
    res = text_drift(ref.texts, cur.texts, ref.ids, cur.ids, np.arange(len(ref) + len(cur)), seed=seed)
    return res.auc, res.drifted


def row_errors(a, labels: tuple[str, ...], ref_perf: dict) -> dict:
    """Per label and metric: CBPE estimate, realised, the reference's figure; coverage of the interval."""
    out = {}
    for name in labels:
        perf = a.performance.get(name)
        if not perf:
            continue
        for metric in ("precision", "recall"):
            m = perf[metric]
            if m.get("realised") is None or m.get("estimated") is None:
                continue
            iv = m.get("interval")
            out[f"{name}.{metric}"] = {
                "estimated": m["estimated"],
                "realised": m["realised"],
                "reference": ref_perf[name][metric],
                "covered": bool(iv and iv[0] <= m["realised"] <= iv[1]),
            }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models:/risky-ads@champion")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "risky-ads-v1"))
    p.add_argument(
        "--window-size",
        "--window",
        dest="window",
        type=int,
        default=1000,
        help="ads per window (default 1000); above the test split's size windows are bootstrap draws",
    )
    p.add_argument(
        "--bootstrap",
        action="store_true",
        help="draw windows with replacement (implied when --window-size exceeds the test split)",
    )
    p.add_argument("--no-shift", type=int, default=25, help="unshifted windows (default 25)")
    p.add_argument(
        "--only",
        default=",".join(KINDS),
        help=f"comma-separated window kinds to run, of {','.join(KINDS)} (default all; a skipped kind "
        "changes the draws of the kinds after it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="write every window's numbers here")
    p.add_argument("--cache", help="keep the scored, linked and embedded splits here for reruns (npz)")
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the Evidently-rule column (run on no-shift windows drawn without replacement)",
    )
    args = p.parse_args()
    if not set(args.only.split(",")) <= set(KINDS):
        p.error(f"--only: give some of {','.join(KINDS)}")

    from model.embeddings import SentenceEmbedder
    from model.predictor import Predictor
    from model.registry import configure_tracking
    from model.uri import resolve_model

    configure_tracking()
    t0 = time.perf_counter()
    mref = resolve_model(args.model)
    predictor = Predictor.load(mref.directory, num_threads=args.threads)
    embedder = SentenceEmbedder(mref.directory, predictor.encoder, num_threads=args.threads)
    labels = tuple(predictor.labels)
    thresholds = predictor.meta.threshold_vector()
    benign = predictor.meta.label_schema.benign_label
    flaggable = [n != benign for n in labels]

    ref, test = load_scored(args, predictor, embedder, labels)
    print(
        f"scored, linked and embedded {len(ref)} reference + {len(test)} test ads in {time.perf_counter() - t0:.0f}s",
        file=sys.stderr,
    )

    args.bootstrap = args.bootstrap or args.window > len(test)
    print(
        f"shift suite: model {args.model}; reference {len(ref)} validation ads; windows of {args.window} ads "
        f"drawn from {len(test)} test ads "
        + ("with replacement (bootstrap)" if args.bootstrap else "without replacement")
        + f"; seed {args.seed}; windows: {args.only}"
    )
    settings = MonitorSettings(seed=args.seed)
    ref_perf = {}
    for j, name in enumerate(labels):
        if flaggable[j]:
            flag = ref.probs[:, j] >= thresholds[j]
            y = ref.labels[:, j] > 0.5
            tp = int((flag & y).sum())
            ref_perf[name] = {"precision": tp / max(int(flag.sum()), 1), "recall": tp / max(int(y.sum()), 1)}
    windows = build_windows(ref, test, args, predictor)
    rows = []
    print(
        "| window | strength | monitor fired | status | signals | text AUC | Evidently rule: AUC / fired "
        "| MMD p | max PSI | max abs error P / R (monitor) | (reference taken to hold) |"
    )
    print("|---|---|---|---|---|---:|---|---:|---:|---|---|")
    for kind, strength, rw, cw in windows:
        t1 = time.perf_counter()
        a = assess(rw, cw, labels, thresholds, flaggable=flaggable, embed=embedder.embed, settings=settings)
        # not on bootstrap windows: a classifier whose folds ignore groups meets copies of one ad in both
        # folds and separates the window from the reference by memory
        baseline = not args.no_baseline and not args.bootstrap and kind == "no shift"
        ev = evidently_rule(rw, cw, args.seed) if baseline else (None, None)
        errs = row_errors(a, labels, ref_perf)
        signals = sorted({r.split(":")[0].split(" ")[0] for r in a.reasons if not r[0].isdigit()})
        pe = [abs(v["estimated"] - v["realised"]) for k, v in errs.items() if k.endswith("precision")]
        re_ = [abs(v["estimated"] - v["realised"]) for k, v in errs.items() if k.endswith("recall")]
        pe0 = [abs(v["reference"] - v["realised"]) for k, v in errs.items() if k.endswith("precision")]
        re0 = [abs(v["reference"] - v["realised"]) for k, v in errs.items() if k.endswith("recall")]
        emb = a.drift["embedding"] or {}
        row = {
            "window": kind,
            "strength": strength,
            "fired": a.fired,
            "status": a.status.value,
            "reasons": a.reasons,
            "text_auc": a.drift["text"]["auc"],
            "novel_share": (a.drift["embedding"] or {}).get("novel_share"),
            "evidently_auc": ev[0],
            "evidently_fired": ev[1],
            "mmd_p": emb.get("p_value"),
            "max_psi": max(s["psi"] for s in a.drift["scores"].values()),
            "errors": errs,
            "prevalence": {
                n: {k: a.prevalence[n].get(k) for k in ("em", "mean_probability", "realised", "reference")}
                for n in labels
            },
            "seconds": round(time.perf_counter() - t1, 1),
        }
        rows.append(row)
        ev_cell = "-" if ev[0] is None else f"{ev[0]:.3f} / {'yes' if ev[1] else 'no'}"
        print(
            f"| {kind} | {strength} | {'YES' if a.fired else 'no'} | {a.status.value} | {', '.join(signals) or '-'} "
            f"| {row['text_auc']:.3f} | {ev_cell} | {row['mmd_p'] if row['mmd_p'] is not None else '-'} "
            f"| {row['max_psi']:.3f} | {max(pe, default=0):.3f} / {max(re_, default=0):.3f} "
            f"| {max(pe0, default=0):.3f} / {max(re0, default=0):.3f} |",
            flush=True,
        )
    summarize(rows, labels)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return 0


def summarize(rows: list[dict], labels: tuple[str, ...]) -> None:
    """The done-when figures: false alarms, strong shifts fired, estimate errors per label."""
    null = [r for r in rows if r["window"] == "no shift"]
    ev_null = [r for r in null if r["evidently_fired"] is not None]
    print(
        f"\nno-shift windows fired: monitor {sum(r['fired'] for r in null)}/{len(null)}"
        + (
            f"; Evidently rule {sum(bool(r['evidently_fired']) for r in ev_null)}/{len(ev_null)}"
            if ev_null
            else ""
        )
    )
    st = [r for r in rows if r["strength"] in STRONG]
    print(
        f"stronger shifts fired: monitor {sum(r['fired'] for r in st)}/{len(st)}"
        + (
            f"; Evidently rule {sum(bool(r['evidently_fired']) for r in st if r['evidently_fired'] is not None)}/{len(st)}"
            if ev_null
            else ""
        )
    )
    missed = [f"{r['window']} {r['strength']}" for r in st if not r["fired"]]
    if missed:
        print("  not fired: " + "; ".join(missed))
    scope = [r for r in rows if r["window"] == "no shift" or r["window"].startswith("prevalence")]
    print(
        "\nlabel-free precision / recall at the thresholds vs realised, no-shift and prevalence windows "
        f"({len(scope)}): mean abs error, share within 0.05, 90% interval coverage; beside: the reference's "
        "figure taken to hold"
    )
    print(
        "| label.metric | monitor mean abs error | within 0.05 | interval coverage | reference taken to hold: mean abs error | within 0.05 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    keys = sorted({k for r in scope for k in r["errors"]})
    for k in keys:
        es = [r["errors"][k] for r in scope if k in r["errors"]]
        e = np.array([abs(x["estimated"] - x["realised"]) for x in es])
        e0 = np.array([abs(x["reference"] - x["realised"]) for x in es])
        cov = np.mean([x["covered"] for x in es])
        print(
            f"| {k} | {e.mean():.3f} | {np.mean(e <= 0.05):.2f} | {cov:.2f} | {e0.mean():.3f} | {np.mean(e0 <= 0.05):.2f} |"
        )
    whole = [r for r in rows if r["window"] == "whole test split"]
    if whole and null:
        # No-shift windows are draws from the test split, so the whole split's realised figure is the
        # value an estimator that knew every label would predict for each: how often even it is within
        # 0.05 bounds what any label-free estimate can reach at this window size.
        print(
            f"\nno-shift windows ({len(null)}): the realised figure's spread, and the share within 0.05 of it for "
            "the monitor and for an oracle that predicts the whole test split's realised figure"
        )
        print("| label.metric | realised mean | realised sd | monitor within 0.05 | oracle within 0.05 |")
        print("|---|---:|---:|---:|---:|")
        for k, w in sorted(whole[0]["errors"].items()):
            es = [r["errors"][k] for r in null if k in r["errors"]]
            real = np.array([x["realised"] for x in es])
            est = np.array([x["estimated"] for x in es])
            print(
                f"| {k} | {real.mean():.3f} | {real.std():.3f} | {np.mean(abs(est - real) <= 0.05):.2f} "
                f"| {np.mean(abs(w['realised'] - real) <= 0.05):.2f} |"
            )
    for r in whole:
        print(
            f"\nwhole test split ({r['strength']}, fired: {'YES' if r['fired'] else 'no'}): estimated vs realised"
        )
        for k, x in r["errors"].items():
            print(f"  {k}: {x['estimated']:.3f} vs {x['realised']:.3f} (reference {x['reference']:.3f})")
    for subset, name in ((null, "no shift"), ([r for r in scope if r["window"] != "no shift"], "prevalence")):
        print(f"\nprevalence, {name}: mean abs error of EM / of the mean probability vs realised")
        for lab in labels:
            em = [abs(r["prevalence"][lab]["em"] - r["prevalence"][lab]["realised"]) for r in subset]
            mp = [
                abs(r["prevalence"][lab]["mean_probability"] - r["prevalence"][lab]["realised"])
                for r in subset
            ]
            print(f"  {lab}: {np.mean(em):.4f} / {np.mean(mp):.4f}")


if __name__ == "__main__":
    sys.exit(main())
