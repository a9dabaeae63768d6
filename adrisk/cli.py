"""The ``adrisk`` command line: every verb and its handler, in one place.

Each handler parses its arguments, calls one library function, prints, and maps the outcome to an
exit code. Where the behaviour lives:

=================  ==========================================  ====================================
verb               handler                                     library call
=================  ==========================================  ====================================
train              ``_train``                                  ``training.pipeline.run_training``
evaluate           ``_evaluate``                               ``training.evaluate.evaluate_model``
retrain            ``_retrain``                                ``training.retrain.retrain``
rollback           ``_rollback``                               ``training.retrain.rollback``
export-onnx        ``_export_onnx``                            ``training.onnx_export.add_onnx_variants``
feedback export    ``_feedback_export``                        ``serve.feedback_store.FeedbackStore.export``
predict            ``_predict``                                ``model.predictor.Predictor.predict``
score              ``_score``                                  ``batch.score.run_score`` (+ ``batch.link.link_output``)
link               ``_link_verb``                              ``batch.link.link_output``
extract            ``_extract``                                ``signals.contacts.ContactExtractor.extract``
serve              ``_serve``                                  ``serve.app.create_app``
=================  ==========================================  ====================================

MLflow tracking and registry are configured once, here, before any verb runs
(``model.registry.configure_tracking``): ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
``mlflow.db`` in the working directory; the registry is ``MLFLOW_REGISTRY_URI`` when set, else the
tracking store.

Exit codes: 0 success; 1 a handled error (one line on stderr); 2 usage error; ``retrain`` adds
3 rejected, 4 busy, 5 unchanged; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("adrisk")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_REJECTED, EXIT_BUSY, EXIT_UNCHANGED = 3, 4, 5


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


# --- shared argument helpers ----------------------------------------------------------------------


def _model_uri(value: str) -> str:
    """``--model``: a non-blank URI or path (an unset variable in a unit file must not load whatever
    model lies under the working directory)."""
    if not value or not value.strip():
        raise argparse.ArgumentTypeError(
            "must not be empty (give a models:/ URI, runs:/ URI or a model directory)"
        )
    return value


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        type=_model_uri,
        help="model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or a local model dir",
    )
    p.add_argument("--runtime", default="auto", help="torch, an ONNX variant of the model, or auto (default)")


def _add_explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--explain",
        action="store_true",
        help="add explanations: top word spans per flagged label, offsets into the text as given "
        "(docs/explanations.md)",
    )
    p.add_argument(
        "--explain-method",
        default="occlusion",
        choices=["occlusion", "integrated_gradients"],
        help="attribution method (default occlusion: any runtime; integrated_gradients needs captum)",
    )
    p.add_argument(
        "--top-k", type=_positive_int, default=5, help="spans per label with --explain (default 5)"
    )


def _add_contact_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", default="US", help="default phone region, ISO 3166 alpha-2 (default US)")
    p.add_argument(
        "--hash-contacts",
        action="store_true",
        help="replace contact values by HMAC-SHA256 keyed with $ADRISK_CONTACT_HASH_KEY",
    )


def _add_link_args(p: argparse.ArgumentParser, prefix: str) -> None:
    """The linking options shared by ``score --link`` and ``link``."""
    _add_contact_args(p)
    p.add_argument(
        "--hub-cap",
        type=int,
        default=50,
        help=f"{prefix}a contact shared by more ads is not used for linking (default 50)",
    )
    p.add_argument(
        "--similarity",
        type=float,
        default=0.5,
        help=f"{prefix}Jaccard similarity for two ads to share a template (default 0.5)",
    )
    p.add_argument(
        "--link-workers",
        type=int,
        default=1,
        help=f"{prefix}processes for contact extraction and signatures (default 1; output identical)",
    )


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=1 (repeatable)",
    )


def _check_writable(path: str | None, flag: str) -> None:
    """Before the work, not after it: create an output file's missing directories, and refuse a
    path that is a directory or cannot be created."""
    if not path:
        return
    if Path(path).is_dir():
        raise CLIError(f"{flag} {path} is a directory; give a file path")
    try:
        Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{flag} {path}: cannot create its directory ({e.strerror})") from None


def _load_predictor(args):
    """Resolve ``args.model`` and load a Predictor; returns (predictor, ModelRef)."""
    from model.predictor import Predictor
    from model.uri import resolve_model

    ref = resolve_model(args.model)
    return Predictor.load(ref.directory, runtime=getattr(args, "runtime", "auto")), ref


# --- training verbs -------------------------------------------------------------------------------


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
    return EXIT_OK


def _evaluate(args) -> int:
    from training.config import DataConfig
    from training.evaluate import evaluate_model

    _check_writable(args.report, "--report")
    predictor, ref = _load_predictor(args)
    data = DataConfig(
        path=args.data,
        text_column=args.text_column,
        labels_column=args.labels_column,
        label_format=args.label_format,
        source_column=args.source_column,
    )
    config = None
    if args.config:
        from training.config import load_config

        config = load_config(args.config, args.set)
    result = evaluate_model(predictor, ref, data, split=args.split, config=config, audit=not args.no_audit)
    print(result.table)
    if args.explain_report:
        from training.explain_report import explain_report, format_top

        rep = explain_report(predictor, data, args.explain_report, limit=args.explain_limit)
        print(
            f"\nexplain report ({rep.rows} rows): {rep.table_path}, {rep.plot_path}\n"
            f"{format_top(rep.table, predictor.labels)}"
        )
    if args.report:
        Path(args.report).write_text(json.dumps(result.report, indent=2))
        print(f"\nJSON report: {args.report}")
    return EXIT_OK


_RETRAIN_EXIT = {
    "promoted": EXIT_OK,
    "would_promote": EXIT_OK,
    "rejected": EXIT_REJECTED,
    "busy": EXIT_BUSY,
    "unchanged": EXIT_UNCHANGED,
}


def _retrain(args) -> int:
    from training.config import load_config
    from training.retrain import retrain

    cfg = load_config(args.config, args.set)
    _check_writable(args.uri_file, "--uri-file")
    result = retrain(cfg, dry_run=args.dry_run, wait_seconds=args.wait, force=args.force)
    if result.training_table:
        print(result.training_table + "\n")
    if result.table:
        print(result.table)
    if result.decision is not None:
        print(f"\n{result.decision.reason}")
    else:
        print(f"retrain: {result.outcome.value}", file=sys.stderr)
    if args.uri_file and result.challenger_uri:
        Path(args.uri_file).write_text(result.challenger_uri + "\n")
    return _RETRAIN_EXIT[result.outcome.value]


def _rollback(args) -> int:
    from training.retrain import rollback

    try:
        champ, prev = rollback(args.model_name)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(f"{args.model_name}: @champion -> version {champ}, @previous -> version {prev}")
    return EXIT_OK


def _export_onnx(args) -> int:
    from model.artifact import load_meta
    from training.onnx_export import add_onnx_variants
    from training.variant_gate import read_labelled_jsonl

    directory = Path(args.model)
    if not directory.is_dir():
        raise CLIError(f"--model must be a local model directory; {args.model} is not one")
    if not Path(args.data).is_file():
        raise CLIError(f"--data {args.data} not found")
    if not 0 <= args.confidence < 1:
        raise CLIError(f"--confidence must be in [0, 1) (0 = point estimate only), not {args.confidence}")
    meta = load_meta(directory)
    texts, targets = read_labelled_jsonl(
        args.data, meta.labels, text_column=args.text_column, labels_column=args.labels_column
    )
    runtimes = add_onnx_variants(
        directory,
        texts,
        targets,
        quantize=not args.no_quantize,
        tolerance=args.tolerance,
        num_threads=args.threads,
        mixed=args.mixed,
        confidence=args.confidence or None,
    )
    print(
        "| runtime | texts/s | passed | max abs AP delta | its widest interval bound "
        "| max abs P/R delta at threshold | kept fp32 |"
    )
    print("|---|---:|---|---:|---:|---:|---|")
    print(f"| torch | {runtimes['torch']['texts_per_s']:.1f} | reference | 0 | 0 | 0 | |")
    for name, v in runtimes["variants"].items():
        worst = max((abs(d) for d in v["ap_delta"].values() if d is not None), default=0.0)
        widest = max(
            (abs(b) for iv in v.get("ap_delta_interval", {}).values() if iv is not None for b in iv),
            default=0.0,
        )
        kept = ", ".join(v.get("fp32_groups", []))
        print(
            f"| {name} | {v['texts_per_s']:.1f} | {'yes' if v['passed'] else 'NO'} | {worst:.4f} "
            f"| {widest:.4f} | {v['decision_max_abs']:.4f} | {kept} |"
        )
    print(f"default runtime: {runtimes['default']}")
    return EXIT_OK


def _feedback_export(args) -> int:
    from serve.feedback_store import FeedbackStore

    n = FeedbackStore(args.db, must_exist=True).export(args.output)
    print(f"exported {n} feedback rows to {args.output}")
    return EXIT_OK


# --- scoring verbs --------------------------------------------------------------------------------


def _predict(args) -> int:
    texts = args.text
    if not texts:
        if sys.stdin.isatty():
            raise CLIError("give TEXT arguments or pipe one text per line on stdin", EXIT_USAGE)
        texts = [line.rstrip("\n") for line in sys.stdin]
    predictor, _ = _load_predictor(args)
    preds = predictor.predict(texts)
    if args.explain:
        from model.explain import Explainer

        explainer = Explainer(predictor, method=args.explain_method)
        benign = predictor.meta.label_schema.benign_label
        for text, p in zip(texts, preds, strict=True):
            names = [n for n, on in p.categories.items() if on and n != benign]
            exp = explainer.explain_json([text], labels=names, top_k=args.top_k)[0] if names else {}
            print(json.dumps({**p.to_dict(), "explanations": exp}, ensure_ascii=False))
        return EXIT_OK
    for p in preds:
        print(json.dumps(p.to_dict(), ensure_ascii=False))
    return EXIT_OK


def _score(args) -> int:
    from batch.score import ScoreError, run_score

    if _link_only_resume(args):
        print(f"{args.output} is already scored; running the link pass only", file=sys.stderr)
        _link(args)
        return EXIT_OK
    try:
        if args.engine == "spark":
            from batch.spark import DEFAULT_CHUNK_SIZE, run_spark_score

            if args.explain or args.workers not in (None, 1):
                raise ScoreError("--engine spark scores on the Spark cluster: drop --explain / --workers")
            summary = run_spark_score(
                args.model,
                args.input,
                args.output,
                text_column=args.text_column,
                chunk_size=DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size,
                resume=args.resume,
                master=args.master,
                partitions=args.partitions,
                runtime=args.runtime,
                progress=not args.no_progress,
            )
        else:
            summary = run_score(
                args.model,
                args.input,
                args.output,
                text_column=args.text_column,
                chunk_size=1000 if args.chunk_size is None else args.chunk_size,
                resume=args.resume,
                runtime=args.runtime,
                torch_threads=args.threads,
                progress=not args.no_progress,
                explain=args.explain,
                workers=args.workers,
            )
    except ScoreError as e:
        raise CLIError(str(e)) from None
    print(summary.format(), file=sys.stderr)
    if args.link:
        _link(args)
    return EXIT_OK


def _link_only_resume(args) -> bool:
    """``--link --resume`` after a kill during the link pass: the scored output is whole (it is renamed
    into place only when scoring ends) and no work directory is left, so only the link pass reruns."""
    out, src = Path(args.output), Path(args.input)
    partial = out.with_name(out.name + ".partial")
    return bool(
        args.link
        and args.resume
        and out.is_file()
        and not partial.exists()
        and src.is_file()
        and out.stat().st_mtime >= src.stat().st_mtime
    )


def _link(args) -> None:
    from batch.link import link_output
    from signals.linking import LinkConfig, LinkError, summary

    key = os.environ.get("ADRISK_CONTACT_HASH_KEY") if args.hash_contacts else None
    if args.hash_contacts and not key:
        raise CLIError("--hash-contacts needs the key in the ADRISK_CONTACT_HASH_KEY environment variable")
    cfg = LinkConfig(
        text_column=args.text_column,
        region=args.region,
        hub_cap=args.hub_cap,
        similarity=args.similarity,
        hash_key=key,
        workers=args.link_workers,
    )
    try:
        result, clusters, report = link_output(args.output, cfg)
    except LinkError as e:
        raise CLIError(str(e)) from None
    print(f"{summary(result)}\nwrote {clusters} and {report}", file=sys.stderr)


def _link_verb(args) -> int:
    _link(args)
    return EXIT_OK


def _extract(args) -> int:
    from signals.contacts import ContactExtractor

    texts = args.text
    if not texts:
        if sys.stdin.isatty():
            raise CLIError("give TEXT arguments or pipe one text per line on stdin", EXIT_USAGE)
        texts = [line.rstrip("\n") for line in sys.stdin]
    key = os.environ.get("ADRISK_CONTACT_HASH_KEY") if args.hash_contacts else None
    if args.hash_contacts and not key:
        raise CLIError("--hash-contacts needs the key in the ADRISK_CONTACT_HASH_KEY environment variable")
    try:
        extractor = ContactExtractor(args.region, strict=args.strict, hash_key=key)
    except ValueError as e:
        raise CLIError(str(e), EXIT_USAGE) from None
    for text in texts:
        print(json.dumps({"contacts": [c.to_dict() for c in extractor.extract(text)]}, ensure_ascii=False))
    return EXIT_OK


# flag -> serve Settings field, for flags that override ADRISK_* environment settings only when given
_SERVE_FLAGS = (
    "host",
    "port",
    "follow_alias",
    "max_batch_size",
    "max_wait_ms",
    "queue_size",
    "torch_threads",
    "max_body_bytes",
    "max_batch_items",
    "max_text_chars",
    "max_explain_items",
)


def _serve(args) -> int:
    import uvicorn
    from pydantic import ValidationError

    from serve.app import create_app
    from serve.settings import Settings

    overrides = {k: getattr(args, k) for k in _SERVE_FLAGS if getattr(args, k, None) is not None}
    try:
        settings = Settings(model=args.model, runtime=args.runtime, **overrides)
    except ValidationError as e:  # one line naming the flag / variable, not pydantic's report
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        flag = f"--{name.replace('_', '-')} / " if name in _SERVE_FLAGS else ""
        raise CLIError(f"invalid {flag}ADRISK_{name.upper()}: {first['msg']}", EXIT_USAGE) from None
    _check_port_free(settings.host, settings.port)
    # log_config=None: uvicorn logs through our logging setup; its access log is off because the app
    # logs its own request lines (route templates only, never bodies).
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return EXIT_OK


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port in use with exit 1 and one line, before the model loads (uvicorn itself would
    exit 3 after a traceback-free log line that names no remedy)."""
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise CLIError(
                f"cannot listen on {host}:{port}: {e.strerror} (another server? use --port)"
            ) from None


# --- the parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Every verb, its flags and its handler (``func``)."""
    from model.runtimes import NUM_THREADS_ENV

    threads_help = (
        f"intra-op threads for the model (default: ${NUM_THREADS_ENV}, else every usable CPU; "
        "see docs/performance.md)"
    )
    parser = argparse.ArgumentParser(
        prog="adrisk", description="Flag risky classified ads: train, evaluate, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
        "working directory); the registry is $MLFLOW_REGISTRY_URI when set, else the same store",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("train", help="fine-tune, evaluate, log to MLflow and register a model version")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--uri-file", help="also write the registered model URI to this file")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="metrics of a model on labelled data (table + JSON report)")
    _add_model_arg(p)
    p.add_argument("--data", required=True, help="JSONL / CSV / Parquet with text and labels")
    p.add_argument("--text-column", default="text")
    p.add_argument("--labels-column", default="labels")
    p.add_argument("--label-format", default="list", choices=["list", "columns", "class"])
    p.add_argument("--source-column", default="source")
    p.add_argument("--split", default="eval", help="name used in metric keys")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--config", help="a training config: its eval_sets are scored too (eval.<name>.*)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a --config key")
    p.add_argument(
        "--no-audit",
        action="store_true",
        help="skip the shortcut audit (audit.*: source/length-only "
        "models and style-stripped views; docs/generalisation.md)",
    )
    p.add_argument(
        "--explain-report",
        metavar="DIR",
        help="also rank the words/emoji with the largest attributions per label and source "
        "(explain_report.csv + .png in DIR; to MLflow when a run is active)",
    )
    p.add_argument(
        "--explain-limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="explain a seeded sample of N rows (default all; occlusion runs ~5-50 texts/s)",
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "retrain",
        help="train a challenger; promote it to @champion only if it passes the gate",
        description="Exit codes: 0 promoted (dry run: would promote), 3 rejected, "
        "4 another retrain holds the lock, 5 unchanged data+config, 1 error.",
    )
    _add_config_args(p)
    p.add_argument(
        "--dry-run", action="store_true", help="train and compare, record the decision, move no alias"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another retrain of the same model (default: refuse at once, exit 4)",
    )
    p.add_argument(
        "--force", action="store_true", help="retrain even if the champion saw the same data and config"
    )
    p.add_argument(
        "--uri-file", help="also write the challenger's model URI (models:/NAME/VERSION) to this file"
    )
    p.set_defaults(func=_retrain)

    p = sub.add_parser("rollback", help="swap @champion and @previous")
    p.add_argument("--model-name", default="risky-ads")
    p.set_defaults(func=_rollback)

    p = sub.add_parser(
        "export-onnx", help="export ONNX fp32/int8 variants into a local model dir, gated on labelled data"
    )
    p.add_argument(
        "--model", required=True, type=_model_uri, help="a local model directory (modified in place)"
    )
    p.add_argument(
        "--data", required=True, help="labelled JSONL for the accuracy gate, e.g. validation.jsonl"
    )
    p.add_argument("--text-column", default="text")
    p.add_argument("--labels-column", default="labels", help="column holding a list of label names")
    p.add_argument("--no-quantize", action="store_true", help="skip the int8 variants")
    p.add_argument(
        "--mixed",
        choices=("auto", "always", "never"),
        default="auto",
        help="sensitivity-guided mixed int8 (per-token int8 with the layers measured most sensitive kept "
        "fp32): auto = only when no batched int8 variant passes the gate (default auto)",
    )
    p.add_argument(
        "--tolerance", type=float, default=0.005, help="per-label AP gate vs fp32 torch (absolute)"
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="the AP delta's paired-bootstrap interval at this confidence must lie inside "
        "+-tolerance too (an equivalence test; 0 = the point estimate only; default 0.9)",
    )
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.set_defaults(func=_export_onnx)

    p = sub.add_parser("feedback", help="moderator feedback: export as training data")
    fsub = p.add_subparsers(dest="feedback_verb", required=True, metavar="ACTION")
    e = fsub.add_parser("export", help="write feedback as JSONL in the dataset schema")
    e.add_argument(
        "--db", default=None, help="SQLAlchemy URL (default: ADRISK_FEEDBACK_URL or sqlite:///feedback.db)"
    )
    e.add_argument("--output", required=True)
    e.set_defaults(func=_feedback_export)

    p = sub.add_parser("predict", help="score texts; prints one JSON line per text")
    _add_model_arg(p)
    p.add_argument("text", nargs="*", help="ad texts (default: one per line on stdin)")
    _add_explain_args(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "score",
        help="batch scoring job over CSV / JSONL / Parquet",
        description="Score a file in chunks with bounded memory; output rows keep the input columns "
        "and order, plus flagged, score_<label>, model_version and error. Formats by "
        "extension: .csv, .jsonl/.ndjson, .parquet.",
    )
    _add_model_arg(p)
    p.add_argument("--input", required=True, help="input file (.csv, .jsonl, .parquet)")
    p.add_argument("--output", required=True, help="output file (.csv, .jsonl, .parquet); written atomically")
    p.add_argument("--text-column", default="text", help="column holding the ad text (default: text)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="rows per chunk (default 1000; with --engine spark 50000, one Spark job each)",
    )
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last finished chunk")
    p.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: this process (default); spark: the texts are scored by Spark tasks, same output "
        '(needs pip install "adrisk[spark]" and Java 17; docs/spark.md)',
    )
    p.add_argument(
        "--master",
        default=None,
        help="with --engine spark: the Spark master for a new session (default: the active session, "
        "else local[*]); e.g. local[2], spark://host:7077, yarn",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="with --engine spark: partitions per Spark job (default: 2 per task slot, >= 64 rows each)",
    )
    p.add_argument("--threads", "--torch-threads", dest="threads", type=int, default=None, help=threads_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="scoring processes, each loading the model once with --threads (default 1) threads; output "
        "identical to one worker (default 1: measured faster than 2 on the shared 2-core machine; docs/performance.md)",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="add an explanations column: JSON {label: [{start, end, score}]} of each row's flagged "
        "labels (occlusion, top 5; ~10-100x the scoring time, docs/explanations.md)",
    )
    p.add_argument(
        "--link",
        action="store_true",
        help="cross-ad signals: add contacts, persona_id, template_id, template_size to every row and "
        "write <stem>.clusters<ext> and <output>.report.html (docs/linking.md)",
    )
    _add_link_args(p, prefix="with --link: ")
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "link",
        help="cross-ad signals over a scored file: personas, template clusters, cluster table, HTML report",
        description="Adds contacts, persona_id, template_id, template_size to every row of OUTPUT (rewritten "
        "atomically) and writes <stem>.clusters<ext> and <output>.report.html beside it (docs/linking.md). "
        "`adrisk score --link` is the same pass right after scoring.",
    )
    p.add_argument("output", help="a file written by adrisk score (.csv, .jsonl, .parquet)")
    p.add_argument("--text-column", default="text", help="column holding the ad text (default: text)")
    _add_link_args(p, prefix="")
    p.set_defaults(func=_link_verb)

    p = sub.add_parser(
        "extract",
        help="contacts (phones, e-mails, URLs, handles) in texts; one JSON line per text",
        description='Prints {"contacts": [{"type", "value", "start", "end"[, "platform"]}]} per text; '
        "phones in E.164, offsets into the text as given.",
    )
    p.add_argument("text", nargs="*", help="ad texts (default: one per line on stdin)")
    _add_contact_args(p)
    p.add_argument(
        "--strict",
        action="store_true",
        help="keep only phone numbers in assigned ranges (phonenumbers.is_valid_number), not every "
        "possible one",
    )
    p.set_defaults(func=_extract)

    p = sub.add_parser(
        "serve",
        help="the moderation HTTP API (FastAPI on uvicorn)",
        description="Serve POST /v1/classify, /v1/feedback, /v1/model, /healthz, /readyz, /metrics. "
        "Flags override ADRISK_* environment variables.",
    )
    _add_model_arg(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 = any free port)")
    p.add_argument(
        "--follow-alias",
        type=float,
        metavar="SECONDS",
        help="with models:/NAME@ALIAS, poll the registry and hot-swap new versions",
    )
    p.add_argument("--max-batch-size", type=int, help="most texts per model batch (default 32; 1 = off)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        help="how long a batch that already holds queued requests waits to fill; an idle server never waits (default 5)",
    )
    p.add_argument("--queue-size", type=int, help="most texts waiting for the model (default 1024); then 503")
    p.add_argument("--threads", "--torch-threads", dest="torch_threads", type=int, help=threads_help)
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 1048576)")
    p.add_argument("--max-batch-items", type=int, help="most texts per request (default 256)")
    p.add_argument("--max-text-chars", type=int, help="longest text in characters (default 100000)")
    p.add_argument(
        "--max-explain-items",
        type=int,
        help='most texts per request with "explain": true (default 8); then 413',
    )
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adrisk`` console script and ``python -m adrisk``; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch's OpenMP threads sleep when idle instead of spinning (must be set before torch loads):
    # measured 2.5-3x more torch texts/s on a shared 2-core machine (docs/performance.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "alembic", "mlflow.store", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    verb = args.verb if args.verb != "feedback" else f"feedback {args.feedback_verb}"
    try:
        from model.registry import configure_tracking

        configure_tracking(args.tracking_uri)  # one resolution for every verb
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"adrisk {verb}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"adrisk {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line message; traceback only with -v
        if args.verbose:
            raise
        print(f"adrisk {verb}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
