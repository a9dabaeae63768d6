"""The ``adrisk`` command line.

Verbs are contributed by packages through the ``adrisk.commands`` entry-point group (see
``pyproject.toml``): each entry is a ``register(subparsers)`` function. This module owns only the
verbs that need nothing but the predictor (``predict``), so the seam never imports ``training`` or
``serve``.

Exit codes: 0 success; 1 a handled error (message on stderr); 2 usage error. Verbs may document
more (``adrisk retrain``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib.metadata import entry_points

logger = logging.getLogger("adrisk")

EXIT_ERROR = 1


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or a local model dir")
    p.add_argument("--runtime", default="auto", help="torch, an ONNX variant of the model, or auto (default)")


def load_predictor(args):
    """Resolve ``args.model`` and load a Predictor; returns (predictor, ModelRef)."""
    from model.predictor import Predictor
    from model.uri import resolve_model

    ref = resolve_model(args.model)
    return Predictor.load(ref.directory, runtime=getattr(args, "runtime", "auto")), ref


def _predict(args) -> int:
    texts = args.text
    if not texts:
        if sys.stdin.isatty():
            raise CLIError("give TEXT arguments or pipe one text per line on stdin", 2)
        texts = [line.rstrip("\n") for line in sys.stdin]
    predictor, _ = load_predictor(args)
    for p in predictor.predict(texts):
        print(json.dumps(p.to_dict(), ensure_ascii=False))
    return 0


# --- export-onnx (owned with model/onnx.py) -------------------------------------------------------


def add_export_onnx_verb(sub) -> None:
    """Register ``adrisk export-onnx``: add gated ONNX fp32/int8 variants to a local model directory."""
    p = sub.add_parser("export-onnx", help="export ONNX fp32/int8 variants into a local model dir, gated on labelled data")
    p.add_argument("--model", required=True, help="a local model directory (modified in place)")
    p.add_argument("--data", required=True, help="labelled JSONL for the accuracy gate, e.g. validation.jsonl")
    p.add_argument("--text-column", default="text")
    p.add_argument("--labels-column", default="labels", help="column holding a list of label names")
    p.add_argument("--no-quantize", action="store_true", help="skip the int8 variant")
    p.add_argument("--tolerance", type=float, default=0.005, help="per-label AP gate vs fp32 torch (absolute)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: available cores)")
    p.set_defaults(func=_export_onnx)


def _export_onnx(args) -> int:
    from pathlib import Path

    from model.artifact import load_meta
    from model.onnx import add_onnx_variants, read_labelled_jsonl

    directory = Path(args.model)
    if not directory.is_dir():
        raise CLIError(f"--model must be a local model directory; {args.model} is not one")
    if not Path(args.data).is_file():
        raise CLIError(f"--data {args.data} not found")
    meta = load_meta(directory)
    texts, targets = read_labelled_jsonl(args.data, meta.labels, text_column=args.text_column,
                                         labels_column=args.labels_column)
    runtimes = add_onnx_variants(directory, texts, targets, quantize=not args.no_quantize,
                                 tolerance=args.tolerance, num_threads=args.threads)
    print("| runtime | texts/s | passed | max abs AP delta |")
    print("|---|---:|---|---:|")
    print(f"| torch | {runtimes['torch']['texts_per_s']:.1f} | reference | 0 |")
    for name, v in runtimes["variants"].items():
        worst = max((abs(d) for d in v["ap_delta"].values() if d is not None), default=0.0)
        print(f"| {name} | {v['texts_per_s']:.1f} | {'yes' if v['passed'] else 'NO'} | {worst:.4f} |")
    print(f"default runtime: {runtimes['default']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adrisk", description="Flag risky classified ads: train, evaluate, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = sub.add_parser("predict", help="score texts; prints one JSON line per text")
    add_model_arg(p)
    p.add_argument("text", nargs="*", help="ad texts (default: one per line on stdin)")
    p.set_defaults(func=_predict)
    add_export_onnx_verb(sub)
    for ep in sorted(entry_points(group="adrisk.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as e:  # one broken package must not take the other verbs down
            print(f"adrisk: the '{ep.name}' verbs are unavailable: {e}", file=sys.stderr)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adrisk`` console script; returns the process exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch's OpenMP threads sleep when idle instead of spinning (must be set before torch loads):
    # measured 2.5-3x more torch texts/s on this shared 2-core machine (README, "Inference speed").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    from model.registry import configure_tracking

    # one tracking/registry resolution for every verb (train registers where predict/serve/score resolve)
    configure_tracking(getattr(args, "tracking_uri", None))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "alembic", "mlflow.store", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"adrisk {args.verb}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"adrisk {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line message; traceback only with -v
        if args.verbose:
            raise
        print(f"adrisk {args.verb}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
