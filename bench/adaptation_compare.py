"""Adaptation to a new site, side by side with the run without it (docs/adaptation.md §1).

Reads two finished training runs from their MLflow stores (copied to a temporary directory first,
so the stores are never written): the run without adaptation (what ``make demo`` trains) and the
same config with ``adapt.unlabelled_files`` set. The adapted run also logged its teacher, the model
after continued MLM pretraining and fine-tuning but before self-training (``adapt.teacher.*``), so
the table has three columns: no adaptation, MLM only, MLM + self-training (the model the run kept);
a fourth, the round-1 student whether the keep rule kept it or not, where the run logged it
(``adapt.self_training.round1.student.*``).

    .venv/bin/python bench/adaptation_compare.py \\
        --baseline /work/demo-base/mlflow.db --baseline-run demo \\
        --adapted mlflow.db --adapted-run demo-adapt

Rows: cross-site-v1 ``adult_services`` recall at each model's own threshold and AP, benign
cross-site titles flagged (of how many), test Craigslist rows flagged as adult, and every (source,
label) test AP within source, with the issue's targets. cross-site-v1 is evaluation only: these
numbers are reported, never used to choose anything.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

CROSS = "eval.cross_site"
STUDENT = "adapt.self_training.round1.student."
TASKS = [  # (source, label): the within-source tasks of risky-ads-v1 (README "Known traps")
    ("backpage_escort_ca_2018", "trafficking_indicators"),
    ("uci_sms_spam", "scam"),
    ("emscad_jobs_subset", "scam"),
]


def run_metrics(db: str, run_name: str | None = None) -> dict[str, float]:
    """The metrics of the latest finished run named ``run_name`` (any name: None) in a copy of the
    SQLite store ``db``."""
    import mlflow

    tmp = Path(tempfile.mkdtemp(prefix="adapt-compare-"))
    shutil.copy(db, tmp / "mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    named = f"attributes.run_name = '{run_name}' and " if run_name else ""
    runs = client.search_runs(
        exps,
        f"{named}attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SystemExit(f"no finished run{f' named {run_name!r}' if run_name else ''} in {db}")
    return dict(runs[0].data.metrics)


def rows(m: dict[str, float], prefix: str = "") -> dict[str, float | None]:
    """The compared figures of one model; ``prefix`` = ``adapt.teacher.`` for the teacher,
    ``adapt.self_training.round1.student.`` for the round-1 student."""

    def g(k: str) -> float | None:
        return m.get(prefix + k)

    benign_key = f"{CROSS}.source.craigslist_therapeutic.adult_services.flagged_negatives"
    audit_cl = "audit.test.source.craigslist_headings.adult_services.flagged_negatives"
    teacher_cl = "test.source.craigslist_headings.adult_services.flagged_negatives"
    out: dict[str, float | None] = {
        "cross-site adult recall at threshold": g(f"{CROSS}.adult_services.recall"),
        "cross-site adult AP": g(f"{CROSS}.adult_services.ap"),
        "cross-site benign titles flagged (share of 13)": g(benign_key),
        "test Craigslist rows flagged as adult": g(teacher_cl) if prefix else g(audit_cl),
        "test adult_services AP": g("test.adult_services.ap"),
    }
    for s, label in TASKS:
        out[f"test AP {label} within {s}"] = g(f"test.source.{s}.{label}.ap")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="SQLite MLflow store of the run without adaptation")
    ap.add_argument("--baseline-run", default="demo")
    ap.add_argument("--adapted", required=True, help="SQLite MLflow store of the adapted run")
    ap.add_argument("--adapted-run", default="demo-adapt")
    args = ap.parse_args()
    base = run_metrics(args.baseline, args.baseline_run)
    adapted = run_metrics(args.adapted, args.adapted_run)
    cols = [rows(base), rows(adapted, "adapt.teacher."), rows(adapted)]
    header = "| | no adaptation (make demo) | MLM only (teacher) | MLM + self-training (kept) |"
    if any(k.startswith(STUDENT) for k in adapted):
        cols.append(rows(adapted, STUDENT))
        header += " self-training student, round 1 (kept or not) |"
    targets = {
        "cross-site adult recall at threshold": ">= 0.85",
        "cross-site benign titles flagged (share of 13)": "<= 2/13 = 0.154",
        "test Craigslist rows flagged as adult": "<= 0.005",
    }
    base_ap = cols[0]
    print(header + " target |")
    print("|---" * (len(cols) + 2) + "|")
    for k in cols[0]:
        vals = " | ".join("n/a" if c[k] is None else f"{c[k]:.4f}" for c in cols)
        tgt = targets.get(k, "")
        if k.startswith("test AP") and base_ap[k] is not None:
            tgt = f">= {base_ap[k] - 0.005:.4f} (no adaptation - 0.005)"
        print(f"| {k} | {vals} | {tgt} |")
    st = {k.rsplit(".", 1)[-1]: v for k, v in adapted.items() if k.startswith("adapt.self_training.round1.")}
    print(
        "\nself-training round 1: "
        + ", ".join(
            f"{k} {st[k]:.4g}"
            for k in (
                "pseudo_positive",
                "pseudo_negative",
                "qualified",
                "teacher_macro_ap",
                "student_macro_ap",
                "teacher_view_macro_ap",
                "student_view_macro_ap",
                "kept",
            )
            if k in st
        )
    )
    per_label = {
        k.removeprefix("adapt.self_training.round1."): v
        for k, v in adapted.items()
        if k.startswith(
            ("adapt.self_training.round1.pseudo_positive.", "adapt.self_training.round1.pseudo_negative.")
        )
        or k.startswith(("adapt.self_training.round1.teacher_ap.", "adapt.self_training.round1.student_ap."))
        or k == "adapt.self_training.round1.pseudo_rows"
    }
    if per_label:
        print("per label: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(per_label.items())))
    mlm = {k: v for k, v in adapted.items() if k.startswith("adapt.mlm.")}
    print("MLM: " + ", ".join(f"{k.split('.')[-1]} {v:.4g}" for k, v in sorted(mlm.items())))


if __name__ == "__main__":
    main()
