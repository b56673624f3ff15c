"""convert.weights: fp16 storage of fp32 graphs and the block-wise int8 embedding table."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from convert.onnx_export import check_standard_ops
from convert.weights import int8_embedding, store_fp16, unpack_fp16
from pi_runtime.bundle import load_manifest


def _embedding_graph(table: np.ndarray, proj: np.ndarray) -> onnx.ModelProto:
    """ids [B, L] -> Gather(table) -> MatMul(proj) -> out [B, L, N]."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="gather"),
             helper.make_node("MatMul", ["emb", "proj"], ["out"], name="proj")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "L"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "L", proj.shape[1]])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(proj, "proj")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def _outlier_table(rng, rows=500, dim=64):
    table = rng.normal(size=(rows, dim)).astype(np.float32)
    table[:, 3] *= 20  # one outlier dimension, as in BERT embeddings
    return table


def test_int8_embedding_matches_float_and_shrinks(tmp_path):
    rng = np.random.default_rng(0)
    table, proj = _outlier_table(rng), rng.normal(size=(64, 8)).astype(np.float32)
    model = _embedding_graph(table, proj)
    ids = rng.integers(0, 500, size=(2, 7))
    ref = _run(model, ids)
    done = int8_embedding(model, block=16, min_elements=1000)
    assert list(done) == ["table"] and done["table"][1] < 0.3 * done["table"][0]
    names = {i.name for i in model.graph.initializer}
    assert "table" not in names and numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == "table_int8")).dtype == np.int8
    onnx.save(model, str(tmp_path / "q.onnx"))
    check_standard_ops(tmp_path / "q.onnx")
    out = _run(model, ids)
    assert out.shape == ref.shape == (2, 7, 8)
    # each block's error is at most half a step of its own scale
    steps = np.abs(table.reshape(500, 4, 16)).max(-1) / 127
    bound = (0.5 * steps[ids].repeat(16, -1)) @ np.abs(proj) + 1e-4
    assert np.all(np.abs(out - ref) <= bound)
    assert _run(model, ids[:1, :3]).shape == (1, 3, 8)  # any batch and length


def test_blocks_beat_one_scale_per_row_on_outlier_dimensions():
    rng = np.random.default_rng(1)
    table, proj = _outlier_table(rng), np.eye(64, dtype=np.float32)
    ids = np.arange(500).reshape(5, 100)
    errors = {}
    for block in (64, 16):
        model = _embedding_graph(table, proj)
        int8_embedding(model, block=block, min_elements=1000)
        errors[block] = np.abs(_run(model, ids) - table[ids]).mean()
    assert errors[16] < 0.5 * errors[64]


def test_store_fp16_is_lossless_for_fp16_weights_and_unpacks():
    rng = np.random.default_rng(2)
    table = rng.normal(size=(300, 64)).astype(np.float16).astype(np.float32)
    proj = rng.normal(size=(64, 8)).astype(np.float32)  # not fp16-exact, no original: stays fp32
    model = _embedding_graph(table, proj)
    ids = rng.integers(0, 300, size=(1, 4))
    ref = _run(model, ids)
    stats = store_fp16(model, min_elements=100)
    assert stats == {"fp16_exact": table.nbytes, "fp16_times_scale": 0, "fp32": proj.nbytes}
    assert np.array_equal(_run(model, ids), ref)
    assert unpack_fp16(model) == 1
    restored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert np.array_equal(restored["table"], table) and restored["table"].dtype == np.float32


def test_store_fp16_factors_a_folded_scale_out_of_the_original():
    """Scales are factored along axis 0, a conv weight's output channels (where BatchNorm folds)."""
    rng = np.random.default_rng(3)
    original = rng.normal(size=(64, 8)).astype(np.float16)  # the checkpoint's weight
    table = rng.normal(size=(300, 64)).astype(np.float32)
    ids = rng.integers(0, 300, size=(1, 4))
    folded = original.astype(np.float32) * rng.uniform(0.5, 2.0, size=(64, 1)).astype(np.float32)
    model = _embedding_graph(table, folded)
    ref = _run(model, ids)
    stats = store_fp16(model, {"proj": original}, min_elements=100)
    assert stats["fp16_times_scale"] == folded.nbytes
    assert np.allclose(_run(model, ids), ref, rtol=1e-6, atol=1e-6)
    # a scale along the other axis cannot be factored that way: the weight stays exact, in fp32
    across = original.astype(np.float32) * rng.uniform(0.5, 2.0, size=(1, 8)).astype(np.float32)
    model = _embedding_graph(table, across)
    assert store_fp16(model, {"proj": original}, min_elements=100)["fp32"] == across.nbytes + table.nbytes
    assert np.allclose(_run(model, ids), table[ids] @ across, rtol=1e-5, atol=1e-5)


def test_tiny_bundle_stores_weights_in_fp16(bundle):
    m = load_manifest(bundle / "bundle")
    storage = m["weight_storage"]["bytes_by_treatment"]
    assert m["weight_storage"]["mode"] == "fp16"
    assert storage["image_fp32.onnx"]["fp16_times_scale"] > 0  # convs with BatchNorm folded in
    assert storage["image_fp32.onnx"]["fp32"] == 0 and storage["text.onnx"]["fp32"] == 0
    graph = onnx.load(str(bundle / "bundle" / "image_fp32.onnx")).graph
    big_fp32 = [i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT and np.prod(i.dims) >= 1024]
    assert big_fp32 == []
