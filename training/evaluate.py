"""``adrisk evaluate``: metrics of a trained model on a labelled file, as a table and a JSON report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.predictor import Predictor
from model.uri import ModelRef
from training.audit import run_audit
from training.config import Config, DataConfig, IdentityConfig
from training.data import Split, load_data, prepare_frame, read_table
from training.eval_sets import evaluate_eval_set, format_eval_sets, load_eval_set
from training.identity_audit import run_identity_audit
from training.identity_terms import TERMS_VERSION
from training.metrics import evaluate_scores, format_table


@dataclass
class Evaluation:
    """``metrics`` keys are ``{split}.{label}.{metric}`` and ``{split}.source.{source}.{label}.{metric}``
    (undefined metrics are NaN); ``table`` is the printed table; ``report`` the JSON-ready report."""

    metrics: dict[str, float]
    table: str
    report: dict = field(default_factory=dict)


def evaluate_model(
    predictor: Predictor,
    ref: ModelRef,
    data: DataConfig,
    split: str = "eval",
    config: Config | None = None,
    audit: bool = True,
) -> Evaluation:
    """Score ``data.path`` with ``predictor`` at the model's own thresholds and compute every metric
    per label and per source slice (see ``training.metrics.evaluate_scores``).

    With ``audit``, the shortcut audit (``training.audit``; keys ``audit.*``) runs on the file: its
    one-feature models are fitted on the evaluated rows themselves (in-sample; a lookup table of a
    few values barely overfits); so does the identity-term audit (``training.identity_audit``; keys
    ``identity.*``, in the report under ``identity_audit``: benign templates at the model's thresholds,
    and Borkan subgroup AUCs on the file's rows; ``config.identity`` sets its size). With ``config``,
    its ``eval_sets`` are scored too (``eval.<name>.*``; ``negatives_from_test`` reads the config's
    test split).

    Raises:
        training.data.DataError: unreadable file, missing text/label columns, unknown labels (rows named,
            text never shown).
    """
    frame, y = prepare_frame(read_table(data.path), data, predictor.meta.label_schema, data.path)
    probs = predictor.predict_proba(frame["text"].tolist())
    sources = frame["source"].tolist() if "source" in frame else None
    thr = predictor.meta.threshold_vector()
    metrics = evaluate_scores(probs, y, predictor.labels, thr, split, sources)
    table = format_table(metrics, predictor.labels, split)
    identity_report: dict | None = None
    if audit:
        texts = frame["text"].tolist()
        res = run_audit(
            predictor.labels,
            texts,
            y,
            sources,
            texts,
            y,
            sources,
            predictor.predict_proba,
            thr,
            eval_probs=probs,
        )
        metrics |= res.prefixed()
        table += "\n\n" + res.table
        if config is None or config.identity.audit:
            schema = predictor.meta.label_schema
            ident = run_identity_audit(
                predictor.labels,
                thr,
                predictor.predict_proba,  # the model as served (an artifact's identity mask included)
                texts,
                y,
                probs,
                [n != schema.benign_label for n in predictor.labels],
                templates_per_category=(
                    config.identity if config else IdentityConfig()
                ).templates_per_category,
            )
            metrics |= ident.logged()  # the per-term, per-label figures are in the table
            table += "\n\n" + ident.table
            identity_report = {
                "terms_version": TERMS_VERSION,
                "passed": ident.passed,
                "failing": ident.failing,
            }
    if config is not None and config.eval_sets:
        test: Split | None = None
        if any(e.negatives_from_test for e in config.eval_sets.values()):
            test = load_data(config.data, predictor.meta.label_schema, config.seed).test
        for name, entry in config.eval_sets.items():
            es = load_eval_set(name, entry, predictor.meta.label_schema, test)
            metrics |= evaluate_eval_set(es, predictor.predict_proba(es.split.texts), predictor.labels, thr)
        table += "\n\nextra evaluation sets (the model's own thresholds)\n" + format_eval_sets(
            metrics, list(config.eval_sets), predictor.labels
        )
    report = {
        "model": {"uri": ref.uri, "name": ref.name, "version": ref.version},
        "data": data.path,
        "rows": int(len(y)),
        "metrics": {k: (None if np.isnan(v) else v) for k, v in metrics.items()},
    }
    if identity_report is not None:
        report["identity_audit"] = identity_report
    return Evaluation(metrics, table, report)
