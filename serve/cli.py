"""``adrisk serve`` and ``adrisk score``: registered into the ``adrisk`` CLI via the
``adrisk.commands`` entry point."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

# flag -> Settings field, for flags that override ADRISK_* environment settings only when given
_SERVE_FLAGS = ("host", "port", "follow_alias", "max_batch_size", "max_wait_ms", "queue_size", "torch_threads",
                "max_body_bytes", "max_batch_items", "max_text_chars")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from model.cli import CLIError
    from serve.app import create_app
    from serve.settings import Settings

    overrides = {k: getattr(args, k) for k in _SERVE_FLAGS if getattr(args, k) is not None}
    try:
        settings = Settings(model=args.model, runtime=args.runtime, **overrides)
    except ValidationError as e:  # one line naming the flag / variable, not pydantic's report
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        flag = f"--{name.replace('_', '-')} / " if name in _SERVE_FLAGS else ""
        raise CLIError(f"invalid {flag}ADRISK_{name.upper()}: {first['msg']}", 2) from None
    app = create_app(settings)
    # log_config=None: uvicorn logs through the CLI's logging setup; its access log is off because
    # the app logs its own request lines (route templates only, never bodies).
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=10)
    return 0


def _score(args: argparse.Namespace) -> int:
    from model.cli import CLIError
    from serve.score import ScoreError, run_score

    try:
        summary = run_score(args.model, args.input, args.output, text_column=args.text_column,
                            chunk_size=args.chunk_size, resume=args.resume, runtime=args.runtime,
                            torch_threads=args.torch_threads, progress=not args.no_progress)
        print(summary.format(), file=sys.stderr)
    except ScoreError as e:
        raise CLIError(str(e)) from None
    return 0


def register(subparsers) -> None:
    """Add the ``serve`` and ``score`` verbs to the ``adrisk`` CLI."""
    from model.cli import add_model_arg

    p = subparsers.add_parser("serve", help="the moderation HTTP API (FastAPI on uvicorn)",
                              description="Serve POST /v1/classify, /v1/model, /healthz, /readyz, /metrics. "
                                          "Flags override ADRISK_* environment variables.")
    add_model_arg(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 = any free port)")
    p.add_argument("--follow-alias", type=float, metavar="SECONDS",
                   help="with models:/NAME@ALIAS, poll the registry and hot-swap new versions")
    p.add_argument("--max-batch-size", type=int, help="most texts per model batch (default 32; 1 = off)")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill (default 5)")
    p.add_argument("--queue-size", type=int, help="most texts waiting for the model (default 1024); then 503")
    p.add_argument("--torch-threads", type=int, help="intra-op threads for the model (default min(4, cores))")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 1048576)")
    p.add_argument("--max-batch-items", type=int, help="most texts per request (default 256)")
    p.add_argument("--max-text-chars", type=int, help="longest text in characters (default 100000)")
    p.set_defaults(func=_serve)

    s = subparsers.add_parser("score", help="batch scoring job over CSV / JSONL / Parquet",
                              description="Score a file in chunks with bounded memory; output rows keep the "
                                          "input columns and order, plus flagged, score_<label>, model_version "
                                          "and error. Formats by extension: .csv, .jsonl/.ndjson, .parquet.")
    add_model_arg(s)
    s.add_argument("--input", required=True, help="input file (.csv, .jsonl, .parquet)")
    s.add_argument("--output", required=True, help="output file (.csv, .jsonl, .parquet); written atomically")
    s.add_argument("--text-column", default="text", help="column holding the ad text (default: text)")
    s.add_argument("--chunk-size", type=int, default=1000, help="rows per chunk (default 1000)")
    s.add_argument("--resume", action="store_true", help="continue a killed run from its last finished chunk")
    s.add_argument("--torch-threads", type=int, default=None, help="intra-op threads for the model")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_score)
