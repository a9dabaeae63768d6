"""Where an ONNX variant's time goes, and how close its int8 products run to the kernel's best.

Usage::

    .venv/bin/python bench/onnx_profile.py --model DIR [--variant NAME] \
        [--data ../shared/datasets/risky-ads-v1/test.jsonl] [--limit 256]

One process, one intra-op thread (as every ``session.run`` of ``model.runtimes.OnnxRuntime``).
Prints, in one run:

1. the variant's forward passes over ``--limit`` texts of ``--data`` (the predictor's own
   encoder and length-sorted, token-budgeted batches, each batch's rows halved into the chunks the
   2-core runtime runs at once), profiled by onnxruntime (``SessionOptions.enable_profiling``):
   the share of kernel time per operator type;
2. the rate of the integer matrix products inside that pass (``MatMulIntegerToFloat`` and
   ``MatMulInteger``: 2 x tokens x K x N operations per product, over their profiled time), in
   GOPS and operations per cycle at the ``cpu MHz`` of /proc/cpuinfo;
3. the same kernel alone (a one-node graph, random uint8 x int8) at the encoder's three weight
   shapes and 32 to 4,096 rows, best of 3: the rate the product could reach on this host;
4. the same products in fp32 through torch (what the HF pipeline's linear layers run), and the
   int8 kernel's rate over fp32's: the most int8 products can speed up the encoder's matrix work on
   this host, whatever else the runtime saves.

If (2) is close to the best of (3), the int8 products cannot get much faster, and what is left to
gain is in the other operators of (1) or in doing fewer operations.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.inference import cpu_info, encoder_config  # noqa: E402

INT8_PRODUCTS = ("MatMulIntegerToFloat", "MatMulInteger")


def session(model, *, profile_dir: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profile_dir) / "profile")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def kernel_alone(k: int, n: int, m: int) -> float:
    """GOPS of ``MatMulIntegerToFloat`` on (m, k) uint8 x (k, n) int8, one thread, best of 3."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMulIntegerToFloat", ["x", "w", "a", "b", "z"], ["y"], domain="com.microsoft")],
        "product",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        [
            numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w"),
            helper.make_tensor("a", TensorProto.FLOAT, [], [1.0]),
            numpy_helper.from_array(np.ones(n, np.float32), "b"),
            helper.make_tensor("z", TensorProto.UINT8, [], [128]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    s = session(model.SerializeToString())
    x = rng.integers(0, 256, (m, k)).astype(np.uint8)
    return best_rate(lambda: s.run(None, {"x": x}), 2 * m * k * n, round_ops=2e9)


def best_rate(call, ops: float, round_ops: float) -> float:
    """G operations per second of ``call`` (``ops`` operations each): once to warm up, then the best
    of 3 rounds of about ``round_ops`` operations."""
    call()
    reps = min(2000, max(3, int(round_ops / ops)))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            call()
        best = min(best, (time.perf_counter() - t) / reps)
    return ops / best / 1e9


def fp32_alone(k: int, n: int, m: int) -> float:
    """GFLOPS of ``torch.nn.functional.linear`` on (m, k) x (k, n) float32 (what the HF pipeline's
    layers run), one thread, best of 3."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        with torch.inference_mode():
            return best_rate(lambda: torch.nn.functional.linear(x, w, b), 2 * m * k * n, round_ops=5e8)
    finally:
        torch.set_num_threads(threads)


def product_ops(model_path: Path, batches: list[dict]) -> list[float]:
    """Integer operations of each int8 product node over ``batches`` (2 x tokens x K x N)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model_path))
    inits = {t.name: t for t in m.graph.initializer}
    tokens = sum(b["input_ids"].size for b in batches)  # padded tokens, as the graph computes them
    ops = []
    for node in m.graph.node:
        if node.op_type in INT8_PRODUCTS and node.input[1] in inits:
            k, n = numpy_helper.to_array(inits[node.input[1]]).shape
            ops.append(2.0 * tokens * k * n)
    return ops


def main(argv: list[str] | None = None) -> int:
    from model.encoding import length_sorted_batches
    from model.predictor import DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, Predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a local adrisk model directory")
    ap.add_argument("--variant", default="auto", help="an ONNX variant of the model (default: its default)")
    ap.add_argument("--data", default=str(REPO.parent / "shared/datasets/risky-ads-v1/test.jsonl"))
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=2, help="row chunks per batch (the runtime's threads)")
    args = ap.parse_args(argv)

    p = Predictor.load(args.model, runtime=args.variant, num_threads=1)
    path = getattr(p.runtime, "path", None)
    if path is None:
        print(f"{args.model}: runtime {p.runtime.name!r} is not an ONNX variant", file=sys.stderr)
        return 1
    with open(args.data) as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(args.limit), f, strict=False)]
    enc = p.encoder.encode(texts)
    batches = []
    for idx in length_sorted_batches(enc.lengths(), DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS):
        for part in np.array_split(idx, min(args.chunks, len(idx))):
            ids, mask = p.encoder.pad([enc.input_ids[i] for i in part])
            batches.append({"input_ids": ids, "attention_mask": mask})

    mhz = cpu_info()["mhz"] or float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        s = session(str(path), profile_dir=tmp)
        for b in batches[:2]:
            s.run(None, b)  # warm-up, profiled too but dropped below
        t0 = time.perf_counter()
        for b in batches:
            s.run(None, b)
        wall = time.perf_counter() - t0
        events = json.loads(Path(s.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    start = runs[2]["ts"] if len(runs) > 2 else 0  # skip the two warm-up runs
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    print(
        f"{path.name}: {len(texts)} texts, {len(batches)} runs, {sum(b['input_ids'].size for b in batches)} "
        f"padded tokens, one thread, {wall:.2f} s wall ({len(texts) / wall:.1f} texts/s)"
    )
    print("| operator | kernel ms | share |\n|---|---:|---:|")
    for op, us in per_op.most_common(16):
        print(f"| {op} | {us / 1e3:.1f} | {100 * us / total:.1f}% |")

    ops = product_ops(path, batches)
    product_us = sum(per_op[o] for o in INT8_PRODUCTS)
    if ops and product_us:
        gops = sum(ops) / (product_us / 1e6) / 1e9
        print(
            f"\nint8 products in the pass: {len(ops)} nodes, {sum(ops) / 1e9:.1f} G operations in "
            f"{product_us / 1e3:.1f} ms: {gops:.0f} GOPS = {gops * 1e3 / mhz:.0f} ops/cycle at {mhz:.0f} MHz"
        )
    print("\nthe kernel alone (MatMulIntegerToFloat, one thread, best of 3): GOPS (ops/cycle)")
    print("| K x N | " + " | ".join(f"{m} rows" for m in (32, 256, 1024, 4096)) + " |\n|---|" + "---:|" * 4)
    cfg = encoder_config(args.model, p.runtime.name)
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    shapes, rows = ((h, h), (h, i), (i, h)), (32, 256, 1024, 4096)
    int8 = {}
    for k, n in shapes:
        cells = []
        for m in rows:
            int8[k, n, m] = g = kernel_alone(k, n, m)
            cells.append(f"{g:.0f} ({g * 1e3 / mhz:.0f})")
        print(f"| {k} x {n} | " + " | ".join(cells) + " |")
    print(
        "\nthe same products in fp32 (torch.nn.functional.linear, as the HF pipeline's layers run them, "
        "one thread, best of 3): GFLOPS (int8 / fp32)"
    )
    print("| K x N | " + " | ".join(f"{m} rows" for m in rows) + " |\n|---|" + "---:|" * 4)
    for k, n in shapes:
        cells = []
        for m in rows:
            f = fp32_alone(k, n, m)
            cells.append(f"{f:.0f} ({int8[k, n, m] / f:.2f}x)")
        print(f"| {k} x {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
