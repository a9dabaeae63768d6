"""bench/onnx_profile.py counts the int8 products' operations from the graph it profiles."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.onnx_profile import fp32_alone, kernel_alone, product_ops
from training.onnx_export import quantize_int8_per_token


def test_product_ops_counts_every_int8_product_over_padded_tokens(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="a/MatMul"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="b/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 4])],
        [
            numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w2"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fp32.onnx")
    quantize_int8_per_token(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    batches = [{"input_ids": np.zeros((3, 5), np.int64)}, {"input_ids": np.zeros((2, 7), np.int64)}]
    tokens = 3 * 5 + 2 * 7
    assert sorted(product_ops(tmp_path / "int8.onnx", batches)) == [
        2.0 * tokens * 8 * 4,
        2.0 * tokens * 16 * 8,
    ]
    assert product_ops(tmp_path / "fp32.onnx", batches) == []  # no int8 product in an fp32 graph


def test_kernel_alone_measures_a_positive_rate():
    gops = kernel_alone(32, 16, 8)
    assert np.isfinite(gops) and gops > 0


def test_fp32_alone_measures_a_positive_rate_and_keeps_torch_threads():
    import torch

    before = torch.get_num_threads()
    gflops = fp32_alone(32, 16, 8)
    assert np.isfinite(gflops) and gflops > 0
    assert torch.get_num_threads() == before
