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
monitor            ``_monitor``                                ``monitor.run.run_monitor``
export-onnx        ``_export_onnx``                            ``training.onnx_export.add_onnx_variants``
feedback export    ``_feedback_export``                        ``serve.feedback_store.FeedbackStore.export_report``
feedback import    ``_feedback_import``                        ``serve.feedback_import.import_feedback``
review-queue       ``_review_queue``                           ``batch.review_queue.build_review_queue``
predict            ``_predict``                                ``model.predictor.Predictor.predict``
score              ``_score``                                  ``batch.score.run_score`` (+ ``batch.link.link_output``)
link               ``_link_verb``                              ``batch.link.link_output``
extract            ``_extract``                                ``signals.contacts.ContactExtractor.extract``
serve              ``_serve``                                  ``serve.app.create_app``
audit verify       ``_audit_verify``                           ``serve.decisions_audit.verify``
audit replay       ``_audit_replay``                           ``serve.decisions_audit.replay``
audit export       ``_audit_export``                           ``serve.decisions_audit.export_statements``
policy check       ``_policy_check``                           ``signals.policy.load_policy``
policy hash-...    ``_policy_hash_contacts``                   ``signals.contacts.ContactExtractor``
=================  ==========================================  ====================================

MLflow tracking and registry are configured once, here, before any verb runs
(``model.registry.configure_tracking``): ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
``mlflow.db`` in the working directory; the registry is ``MLFLOW_REGISTRY_URI`` when set, else the
tracking store.

Exit codes: 0 success; 1 a handled error (one line on stderr); 2 usage error; ``retrain`` adds
3 rejected, 4 busy, 5 unchanged, 6 not stale (``--when-stale``); ``monitor`` 10 retrain advised,
11 labels needed; 130 interrupted.
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
EXIT_NOT_STALE = 6  # retrain --when-stale: the verdict does not advise a retrain


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


class _DeprecatedFlag(argparse.Action):
    """A flag's old name: sets the same value and says which name to use (on stderr; logging is not
    set up while arguments are parsed)."""

    def __init__(self, option_strings, dest, use: str = "", **kwargs):
        self.use = use
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"adrisk: {option_string} is deprecated: use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_threads_arg(p: argparse.ArgumentParser, help: str, old: str | None = None) -> None:
    """``--threads`` (the one name of the threads knob), and ``old`` as its deprecated, hidden alias."""
    p.add_argument("--threads", dest="threads", type=int, default=None, help=help)
    if old:
        p.add_argument(
            old, dest="threads", type=int, action=_DeprecatedFlag, use="--threads", help=argparse.SUPPRESS
        )


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
        "--max-persona",
        type=int,
        default=50,
        help=f"{prefix}a persona grows beyond this many ads only by ads sharing identical text or "
        "2+ contacts (default 50; docs/linking.md)",
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
    try:
        res = run_training(cfg, resume=args.resume)  # under torchrun, on every rank (training/distributed.py)
    finally:
        _leave_process_group()
    if res.worker:  # a torchrun rank other than 0: rank 0 prints and saves
        return EXIT_OK
    print(res.table)
    print(f"\nmodel artifact: {res.artifact_dir}")
    print(f"MLflow run:     {res.run_id}")
    print(f"model URI:      {res.model_uri}")
    if args.uri_file:
        Path(args.uri_file).write_text(res.model_uri + "\n")
    return EXIT_OK


def _leave_process_group() -> None:
    """End of ``train``/``retrain`` under torchrun: leave the process group (nothing otherwise)."""
    if "torch.distributed" in sys.modules:
        from training.distributed import shutdown

        shutdown()


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
    verdict = None
    if args.when_stale:
        verdict = _stale_verdict(args.when_stale, cfg)
        if verdict is None:
            return EXIT_NOT_STALE
    try:
        result = retrain(cfg, dry_run=args.dry_run, wait_seconds=args.wait, force=args.force, verdict=verdict)
    finally:
        _leave_process_group()
    if result.worker:  # a torchrun rank other than 0: rank 0 prints and decides
        return EXIT_OK
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


def _stale_verdict(path: str, cfg) -> dict | None:
    """``--when-stale``: the verdict as a dict when it advises a retrain of this model's champion,
    else None (the reason is printed)."""
    from model.registry import get_alias
    from monitor.verdict import VerdictError, load_verdict, retrain_advised

    try:
        verdict = load_verdict(path)
        advised, why = retrain_advised(
            verdict, cfg.model_name, get_alias(cfg.model_name, cfg.gate.champion_alias)
        )
    except VerdictError as e:
        raise CLIError(str(e)) from None
    print(f"retrain --when-stale: {why}", file=sys.stderr)
    return verdict.model_dump(mode="json") if advised else None


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


def _reviewer_weight(value: str) -> tuple[str, float]:
    """``--reviewer-weight REVIEWER=W`` (W >= 0)."""
    name, sep, w = value.rpartition("=")
    try:
        weight = float(w)
    except ValueError:
        weight = -1.0
    if not sep or not name or not weight >= 0:
        raise argparse.ArgumentTypeError(f"expected REVIEWER=WEIGHT with a weight >= 0, got {value!r}")
    return name, weight


def _feedback_export(args) -> int:
    from serve.feedback_store import FeedbackStore

    weights = dict(args.reviewer_weight or [])
    weights.update(dict.fromkeys(args.exclude_reviewer or [], 0.0))
    report = FeedbackStore(args.db, must_exist=True).export_report(args.output, reviewer_weights=weights)
    print(
        f"exported {report.rows} feedback rows to {args.output}; {report.conflicts} texts held back "
        f"(reviewers tied), {report.excluded} with every reviewer excluded"
    )
    print("| reviewer | weight | decisions | vs model | pairs with others | vs others |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, st in sorted(report.reviewers.items()):
        vm = f"{st.vs_model:.3f} ({st.with_model})" if st.vs_model is not None else "n/a"
        vo = f"{st.vs_others:.3f}" if st.vs_others is not None else "n/a"
        print(f"| {name} | {st.weight:g} | {st.decisions} | {vm} | {st.pairs} | {vo} |")
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK


def _feedback_import(args) -> int:
    from serve.feedback_import import import_feedback
    from serve.feedback_store import FeedbackStore

    known = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    report = import_feedback(FeedbackStore(args.db), args.input, known, args.reviewer, args.text_column)
    print(report.summary())
    return EXIT_OK if not report.refused else EXIT_ERROR


def _review_queue(args) -> int:
    from batch.review_queue import build_review_queue

    predictor, _ = _load_predictor(args)
    report = build_review_queue(
        predictor,
        Path(args.input),
        Path(args.output),
        args.budget,
        args.text_column,
        args.seed,
        Path(args.labelled) if args.labelled else None,
        args.strategy,
    )
    print(report.summary())
    return EXIT_OK


def _monitor(args) -> int:
    from monitor.run import run_monitor
    from monitor.verdict import MonitorSettings
    from monitor.window import MonitorError

    try:
        res = run_monitor(
            args.model,
            args.current,
            reference=args.reference,
            window=args.window,
            time_column=args.time_column,
            text_column=args.text_column,
            labels_column=args.labels_column,
            feedback=args.feedback,
            report_dir=args.report,
            verdict_path=args.verdict,
            settings=MonitorSettings(seed=args.seed),
            runtime=args.runtime,
            threads=args.threads,
            log_mlflow={"auto": None, "on": True, "off": False}[args.mlflow],
        )
    except MonitorError as e:
        raise CLIError(str(e)) from None
    print(res.table)
    for path in res.written:
        print(f"wrote {path}", file=sys.stderr)
    if res.mlflow_run_id:
        print(f"MLflow run: {res.mlflow_run_id}", file=sys.stderr)
    return res.verdict.exit_code


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
                on_bad_row=args.on_bad_row,
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
                threads=args.threads,
                progress=not args.no_progress,
                explain=args.explain,
                workers=args.workers,
                on_bad_row=args.on_bad_row,
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
    from batch.tables import ScoreError
    from signals.linking import LinkConfig, LinkError, summary

    key = os.environ.get("ADRISK_CONTACT_HASH_KEY") if args.hash_contacts else None
    if args.hash_contacts and not key:
        raise CLIError("--hash-contacts needs the key in the ADRISK_CONTACT_HASH_KEY environment variable")
    cfg = LinkConfig(
        text_column=args.text_column,
        region=args.region,
        hub_cap=args.hub_cap,
        max_persona=args.max_persona,
        similarity=args.similarity,
        hash_key=key,
        workers=args.link_workers,
    )
    linker = None
    if getattr(args, "engine", "local") == "spark":
        from functools import partial

        from batch.spark_link import link_chunks_spark

        linker = partial(link_chunks_spark, master=args.master)
    try:
        result, clusters, report = link_output(args.output, cfg, linker=linker)
    except LinkError as e:
        raise CLIError(str(e)) from None
    except ScoreError as e:  # pyspark or Java missing
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
    "threads",
    "max_body_bytes",
    "max_batch_items",
    "max_text_chars",
    "max_explain_items",
)


def _serve(args) -> int:
    import uvicorn
    from pydantic import ValidationError

    from serve.app import create_app
    from serve.decisions import DecisionLogError
    from serve.keys import KeysError
    from serve.settings import Settings
    from signals.policy import PolicyError

    overrides = {k: getattr(args, k) for k in _SERVE_FLAGS if getattr(args, k, None) is not None}
    overrides.update(_policy_overrides(args))
    try:
        settings = Settings(model=args.model, runtime=args.runtime, **overrides)
    except ValidationError as e:  # one line naming the flag / variable, not pydantic's report
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        flag = f"--{name.replace('_', '-')} / " if name in _SERVE_FLAGS else ""
        raise CLIError(f"invalid {flag}ADRISK_{name.upper()}: {first['msg']}", EXIT_USAGE) from None
    _check_port_free(settings.host, settings.port)
    try:
        app = create_app(settings)  # reads the keys and the policy: a bad one stops here, in one line
    except (PolicyError, KeysError, DecisionLogError) as e:
        raise CLIError(str(e), EXIT_USAGE) from None
    # log_config=None: uvicorn logs through our logging setup; its access log is off because the app
    # logs its own request lines (route templates only, never bodies).
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return EXIT_OK


def _policy_overrides(args) -> dict:
    """``adrisk serve``'s policy, keys and decision-log flags as Settings overrides (when given)."""
    out: dict = {}
    if args.policy is not None:
        out["policy_file"] = args.policy
    if args.keys is not None:
        out["keys_file"] = args.keys
    if args.decisions_db is not None:
        out["decisions_url"] = args.decisions_db
    if args.no_decision_log:
        out["decision_log"] = False
    return out


# --- audit and policy verbs -----------------------------------------------------------------------


def _open_log(db: str | None):
    from serve.decisions import DecisionLog, DecisionLogError

    try:
        return DecisionLog(db, must_exist=True)
    except DecisionLogError as e:
        raise CLIError(str(e)) from None


def _audit_verify(args) -> int:
    from serve.decisions_audit import verify

    rep = verify(_open_log(args.db))
    for line in rep.problems:
        print(line)
    print(
        f"{rep.rows} decisions checked: "
        + ("the chain holds" if rep.ok else f"{len(rep.problems)} problem(s)")
    )
    return EXIT_OK if rep.ok else EXIT_ERROR


def _audit_replay(args) -> int:
    from serve.decisions_audit import replay

    rep = replay(_open_log(args.db))
    for line in rep.disagreements:
        print(line)
    if rep.missing_policies:
        print(f"policy versions not in the log: {', '.join(sorted(rep.missing_policies))}")
    print(f"{rep.agreed} of {rep.rows} decisions replayed identically ({100 * rep.share:.2f}%)")
    return EXIT_OK if rep.agreed == rep.rows else EXIT_ERROR


def _audit_export(args) -> int:
    from serve.decisions_audit import export_statements

    _check_writable(args.output, "--output")
    n = export_statements(_open_log(args.db), args.output, since=args.since)
    print(f"wrote {n} statements of reasons to {args.output}")
    return EXIT_OK


def _policy_check(args) -> int:
    from serve.keys import KeysError, build_keyring
    from signals.policy import PolicyEngine, PolicyError, load_policy

    try:
        policy = load_policy(args.file)
        tenants = build_keyring(args.keys, []).tenants() if args.keys else None
        labels = list(policy.categories)
        if args.model:
            from model.artifact import load_meta
            from model.uri import resolve_model

            labels = list(load_meta(resolve_model(args.model).directory).labels)
        policy.check_context(labels, tenants)
        PolicyEngine(policy, hash_key=os.environ.get("ADRISK_CONTACT_HASH_KEY"))
    except (PolicyError, KeysError) as e:
        raise CLIError(str(e)) from None
    print(
        f"policy {policy.version}: valid ({len(policy.categories)} categories, {len(policy.tenants)} tenant overrides)"
    )
    return EXIT_OK


def _policy_hash_contacts(args) -> int:
    from signals.contacts import ContactExtractor
    from signals.policy import key_fingerprint

    key = os.environ.get("ADRISK_CONTACT_HASH_KEY")
    if not key:
        raise CLIError("needs the key in the ADRISK_CONTACT_HASH_KEY environment variable")
    texts = args.text or ([line.rstrip("\n") for line in sys.stdin] if not sys.stdin.isatty() else [])
    if not texts:
        raise CLIError("give contacts as TEXT arguments or one per line on stdin", EXIT_USAGE)
    try:
        extractor = ContactExtractor(args.region, hash_key=key)
    except ValueError as e:
        raise CLIError(str(e), EXIT_USAGE) from None
    hashes = sorted({c.value for t in texts for c in extractor.extract(t)})
    found = sum(1 for t in texts if extractor.extract(t))
    print(json.dumps({"region": extractor.region, "key_fingerprint": key_fingerprint(key), "hashes": hashes}))
    if found < len(texts):
        print(f"{len(texts) - found} of {len(texts)} inputs held no contact", file=sys.stderr)
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

    _add_training_parsers(sub, threads_help)
    _add_feedback_parsers(sub)

    _add_scoring_parsers(sub, threads_help)
    _add_serve_parser(sub, threads_help)
    _add_audit_parsers(sub)
    _add_policy_parsers(sub)
    return parser


def _add_training_parsers(sub, threads_help: str) -> None:
    """train, evaluate, retrain, monitor, rollback, export-onnx."""
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
        "models and style-stripped views; docs/generalisation.md) and the identity-term audit "
        "(identity.*: benign templates, subgroup AUCs; docs/identity.md)",
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
        "4 another retrain holds the lock, 5 unchanged data+config, 6 --when-stale verdict advises no "
        "retrain, 1 error.",
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
    p.add_argument(
        "--when-stale",
        metavar="VERDICT.json",
        help="retrain only if this adrisk monitor verdict (about the current @champion) says retrain; "
        "else exit 6. The verdict is recorded on the challenger's run (docs/monitoring.md)",
    )
    p.set_defaults(func=_retrain)

    p = sub.add_parser(
        "monitor",
        help="drift of a window of ads against the model's reference; label-free performance; a verdict",
        description="Exit codes: 0 stable, 10 drifted: retrain advised, 11 drifted beyond what retraining "
        "on the labels at hand can fix: labels needed, 1 error (nothing written), 2 usage. "
        "Details: docs/monitoring.md.",
    )
    _add_model_arg(p)
    p.add_argument(
        "--current", required=True, help="the window: CSV / JSONL / Parquet, or an adrisk score output"
    )
    p.add_argument(
        "--reference",
        help="reference file (default: the validation data recorded on the model's MLflow run, checked "
        "against its fingerprint)",
    )
    p.add_argument(
        "--window",
        help="monitor only the last N rows (10000) or the rows within a duration of the newest (7d, 24h)",
    )
    p.add_argument("--time-column", help="time column of a duration --window (default: detected)")
    p.add_argument("--text-column", default="text", help="column holding the ad text (default: text)")
    p.add_argument("--labels-column", default="labels", help="label-name lists, when a file has them")
    p.add_argument("--feedback", help="an adrisk feedback export: realised precision among reviewed ads")
    p.add_argument("--report", metavar="DIR", help="write report.html and verdict.json into DIR")
    p.add_argument("--verdict", metavar="FILE", help="write the verdict JSON to FILE")
    p.add_argument(
        "--mlflow",
        choices=("auto", "on", "off"),
        default="auto",
        help="log a run to the adrisk-monitor experiment (auto: when the model came from MLflow)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every sample and permutation (default 0)")
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.set_defaults(func=_monitor)

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


def _add_scoring_parsers(sub, threads_help: str) -> None:
    """review-queue, predict, score, link, extract."""
    p = sub.add_parser(
        "review-queue",
        help="the ads moderators should label first (uncertain and diverse, one per template cluster)",
        description="BADGE (Ash et al. 2020) over the model's gradient embeddings, at most one ad per "
        "template cluster, a reason per pick. The output keeps the input columns and adds empty "
        "labels/reviewer columns for the answers (adrisk feedback import reads them back).",
    )
    _add_model_arg(p)
    p.add_argument("--input", required=True, help="unlabelled ads (.csv, .jsonl, .parquet)")
    p.add_argument("--output", required=True, help="the queue (.csv, .jsonl, .parquet)")
    p.add_argument("--budget", required=True, type=int, help="how many ads to queue")
    p.add_argument("--text-column", default="text")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument(
        "--strategy",
        choices=("badge", "random"),
        default="badge",
        help="badge: uncertain and diverse by the model (default); random: a uniform sample, one per "
        "template cluster (a new site's rounds: docs/adaptation.md)",
    )
    p.add_argument(
        "--labelled",
        help="ads already labelled (earlier queues filled in, or an adrisk feedback export; same formats): "
        "their template clusters are not queued again and the picks are drawn away from them",
    )
    p.set_defaults(func=_review_queue)

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
        "--on-bad-row",
        choices=("error", "mark"),
        default="error",
        help="a JSON Lines line that is not one JSON object, or a CSV row with more fields than the header: "
        "error (default) stops the job naming its line (finished chunks are kept for --resume); mark keeps "
        "it as a row with error=invalid_json, not_an_object or wrong_field_count and goes on",
    )
    p.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: this process (default); spark: the texts are scored by Spark tasks (with --link, "
        'linked on Spark too), same output (needs pip install "adrisk[spark]" and Java 17; docs/spark.md)',
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
    _add_threads_arg(p, threads_help, old="--torch-threads")
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
    p.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: this machine's processes (default); spark: contacts, signatures, components and "
        "cluster risk on Spark, same output (docs/scale-out.md)",
    )
    p.add_argument(
        "--master",
        default=None,
        help="with --engine spark: the Spark master for a new session (default: the active session, "
        "else local[*])",
    )
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


def _add_serve_parser(sub, threads_help: str) -> None:
    """serve."""
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
    _add_threads_arg(p, threads_help, old="--torch-threads")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 1048576)")
    p.add_argument("--max-batch-items", type=int, help="most texts per request (default 256)")
    p.add_argument("--max-text-chars", type=int, help="longest text in characters (default 100000)")
    p.add_argument(
        "--max-explain-items",
        type=int,
        help='most texts per request with "explain": true (default 8); then 413',
    )
    _add_serve_policy_args(p)
    p.set_defaults(func=_serve)


def _add_serve_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="moderation policy YAML, reloaded on change (default: the model's thresholds; docs/policy.md)",
    )
    p.add_argument(
        "--keys", metavar="FILE", help="API keys with scopes and tenants (sha256 digests; docs/policy.md)"
    )
    p.add_argument("--decisions-db", metavar="URL", help="decision log (default sqlite:///decisions.db)")
    p.add_argument(
        "--no-decision-log", action="store_true", help="log no decisions (no statements, no appeals)"
    )


def _add_feedback_parsers(sub) -> None:
    p = sub.add_parser("feedback", help="moderator feedback: export as training data")
    fsub = p.add_subparsers(dest="feedback_verb", required=True, metavar="ACTION")
    e = fsub.add_parser(
        "export",
        help="write feedback as JSONL in the dataset schema; report per-reviewer disagreement",
        description="One row per text: each reviewer's latest decision (in arrival order) counts, "
        "reviewers are settled by a weighted vote per label, ties are held back. Prints each "
        "reviewer's disagreement with the model and with other reviewers on the same texts.",
    )
    e.add_argument(
        "--db", default=None, help="SQLAlchemy URL (default: ADRISK_FEEDBACK_URL or sqlite:///feedback.db)"
    )
    e.add_argument("--output", required=True)
    e.add_argument(
        "--exclude-reviewer",
        action="append",
        metavar="REVIEWER",
        help="leave this reviewer's decisions out of the vote (repeatable; still reported)",
    )
    e.add_argument(
        "--reviewer-weight",
        action="append",
        type=_reviewer_weight,
        metavar="REVIEWER=W",
        help="weigh this reviewer's vote by W (default 1; repeatable); a label is kept when its "
        "reviewers weigh over half the total, a tie holds the text back",
    )
    e.add_argument("--report", metavar="FILE", help="also write the per-reviewer report as JSON")
    e.set_defaults(func=_feedback_export)
    i = fsub.add_parser(
        "import",
        help="record moderators' answers from a file (e.g. a filled-in review queue); idempotent",
        description="Rows: text, labels (list, JSON list or 'a,b'; [] = benign; empty = unanswered, "
        "skipped), reviewer, optional reviewed_at. Importing the same file twice changes nothing.",
    )
    i.add_argument("input", help=".jsonl, .csv or .parquet")
    i.add_argument(
        "--db", default=None, help="SQLAlchemy URL (default: ADRISK_FEEDBACK_URL or sqlite:///feedback.db)"
    )
    i.add_argument("--labels", help="comma-separated label names the answers may use (default: any)")
    i.add_argument("--reviewer", help="reviewer for rows without a reviewer value")
    i.add_argument("--text-column", default="text")
    i.set_defaults(func=_feedback_import)


def _add_audit_parsers(sub) -> None:
    p = sub.add_parser(
        "audit", help="the decision log: verify its chain, replay decisions, export statements"
    )
    asub = p.add_subparsers(dest="audit_verb", required=True, metavar="ACTION")
    db_help = "the decision log (default: ADRISK_DECISIONS_URL or sqlite:///decisions.db); key: ADRISK_AUDIT_KEY or <db>.key"
    e = asub.add_parser(
        "verify", help="recompute the hash chain: edited, deleted, reordered rows (exit 1 if any)"
    )
    e.add_argument("--db", default=None, help=db_help)
    e.set_defaults(func=_audit_verify)
    e = asub.add_parser(
        "replay", help="re-derive every action from the logged scores under the logged policy"
    )
    e.add_argument("--db", default=None, help=db_help)
    e.set_defaults(func=_audit_replay)
    e = asub.add_parser("export", help="DSA statements of reasons of restricting decisions, as JSON lines")
    e.add_argument("--db", default=None, help=db_help)
    e.add_argument("--output", required=True)
    e.add_argument("--since", default=None, metavar="ISO", help="only decisions from this date/time (UTC) on")
    e.set_defaults(func=_audit_export)


def _add_policy_parsers(sub) -> None:
    p = sub.add_parser("policy", help="moderation policies: check a file, hash contacts for its blocklist")
    psub = p.add_subparsers(dest="policy_verb", required=True, metavar="ACTION")
    e = psub.add_parser("check", help="validate a policy file (with --model: against its labels)")
    e.add_argument("file")
    e.add_argument(
        "--model", type=_model_uri, default=None, help="check the categories against this model's labels"
    )
    e.add_argument("--keys", default=None, metavar="FILE", help="check the tenants against this keys file")
    e.set_defaults(func=_policy_check)
    e = psub.add_parser(
        "hash-contacts",
        help="keyed digests of contacts for contact_blocklist.hashes (key: ADRISK_CONTACT_HASH_KEY)",
        description="Prints {region, key_fingerprint, hashes} to paste into a policy's contact_blocklist; "
        "contacts are read like adrisk extract reads them (obfuscated forms too) and never printed.",
    )
    e.add_argument("text", nargs="*", help="contacts or texts holding them (default: one per line on stdin)")
    e.add_argument(
        "--region", default="US", help="phone region for numbers without a country code (default US)"
    )
    e.set_defaults(func=_policy_hash_contacts)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adrisk`` console script and ``python -m adrisk``; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch's OpenMP threads sleep when idle instead of spinning (must be set before torch loads):
    # measured 2.5-3x more torch texts/s on a shared 2-core machine (docs/performance.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = build_parser().parse_args(argv)
    rank = f"[rank {os.environ.get('RANK', '0')}] " if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {rank}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "alembic", "mlflow.store", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sub_verb = {"feedback": "feedback_verb", "audit": "audit_verb", "policy": "policy_verb"}.get(args.verb)
    verb = f"{args.verb} {getattr(args, sub_verb)}" if sub_verb else args.verb
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
