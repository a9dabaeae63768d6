"""CLI verbs contributed by ``training``: ``train`` and ``evaluate`` (and ``retrain`` etc. when present)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _check_writable(path: str | None, flag: str) -> None:
    """Before the work, not after it: create an output file's missing directories, and refuse a
    path that is a directory or cannot be created."""
    from model.cli import CLIError

    if not path:
        return
    if Path(path).is_dir():
        raise CLIError(f"{flag} {path} is a directory; give a file path")
    try:
        Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{flag} {path}: cannot create its directory ({e.strerror})") from None


def _train(args) -> int:
    from training.config import load_config
    from training.pipeline import run_training

    cfg = load_config(args.config, args.set)
    _check_writable(args.uri_file, "--uri-file")
    res = run_training(cfg, resume=args.resume)
    print(res.table)
    print(f"\nmodel artifact: {res.artifact_dir}")
    print(f"MLflow run:     {res.run_id}")
    print(f"model URI:      {res.model_uri}")
    if args.uri_file:
        Path(args.uri_file).write_text(res.model_uri + "\n")
    return 0


def _evaluate(args) -> int:
    import numpy as np

    from model.cli import load_predictor
    from model.metrics import evaluate_scores, format_table
    from training.config import DataConfig
    from training.data import prepare_frame, read_table

    _check_writable(args.report, "--report")
    predictor, ref = load_predictor(args)
    cfg = DataConfig(path=args.data, text_column=args.text_column, labels_column=args.labels_column,
                     label_format=args.label_format, source_column=args.source_column)
    frame, y = prepare_frame(read_table(args.data), cfg, predictor.meta.label_schema, args.data)
    probs = predictor.predict_proba(frame["text"].tolist())
    sources = frame["source"].tolist() if "source" in frame else None
    metrics = evaluate_scores(probs, y, predictor.labels, predictor.meta.threshold_vector(), args.split, sources)
    print(format_table(metrics, predictor.labels, args.split))
    report = {"model": {"uri": ref.uri, "name": ref.name, "version": ref.version}, "data": args.data,
              "rows": int(len(y)), "metrics": {k: (None if np.isnan(v) else v) for k, v in metrics.items()}}
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
        print(f"\nJSON report: {args.report}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training verbs to the ``adrisk`` parser."""
    from model.cli import add_model_arg

    p = sub.add_parser("train", help="fine-tune, evaluate, log to MLflow and register a model version")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--uri-file", help="also write the registered model URI to this file")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="metrics of a model on labelled data (table + JSON report)")
    add_model_arg(p)
    p.add_argument("--data", required=True, help="JSONL / CSV / Parquet with text and labels")
    p.add_argument("--text-column", default="text")
    p.add_argument("--labels-column", default="labels")
    p.add_argument("--label-format", default="list", choices=["list", "columns", "class"])
    p.add_argument("--source-column", default="source")
    p.add_argument("--split", default="eval", help="name used in metric keys")
    p.add_argument("--report", help="write the JSON report here")
    p.set_defaults(func=_evaluate)
    register_retrain(sub)


def _retrain(args) -> int:
    from training.config import load_config
    from training.retrain import retrain

    cfg = load_config(args.config, args.set)
    code, _ = retrain(cfg, dry_run=args.dry_run, wait_seconds=args.wait, force=args.force)
    return code


def _rollback(args) -> int:
    from model.registry import configure_tracking
    from training.retrain import rollback

    configure_tracking()
    champ, prev = rollback(args.model_name)
    print(f"{args.model_name}: @champion -> version {champ}, @previous -> version {prev}")
    return 0


def _feedback_export(args) -> int:
    from model.feedback import FeedbackStore

    n = FeedbackStore(args.db, must_exist=True).export(args.output)
    print(f"exported {n} feedback rows to {args.output}")
    return 0


def register_retrain(sub: argparse._SubParsersAction) -> None:
    """Add ``retrain``, ``rollback`` and ``feedback export``."""
    p = sub.add_parser("retrain", help="train a challenger; promote it to @champion only if it passes the gate",
                       description="Exit codes: 0 promoted (dry run: would promote), 3 rejected, "
                                   "4 another retrain holds the lock, 5 unchanged data+config, 1 error.")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dry-run", action="store_true", help="train and compare, record the decision, move no alias")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another retrain of the same model (default: refuse at once, exit 4)")
    p.add_argument("--force", action="store_true", help="retrain even if the champion saw the same data and config")
    p.set_defaults(func=_retrain)

    p = sub.add_parser("rollback", help="swap @champion and @previous")
    p.add_argument("--model-name", default="risky-ads")
    p.set_defaults(func=_rollback)

    p = sub.add_parser("feedback", help="moderator feedback: export as training data")
    fsub = p.add_subparsers(dest="feedback_verb", required=True)
    e = fsub.add_parser("export", help="write feedback as JSONL in the dataset schema")
    e.add_argument("--db", default=None, help="SQLAlchemy URL (default: ADRISK_FEEDBACK_URL or sqlite:///feedback.db)")
    e.add_argument("--output", required=True)
    e.set_defaults(func=_feedback_export)
