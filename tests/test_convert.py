"""convert/: export, the standard-ops guard, parity with PyTorch, manifest and verify."""

import hashlib
import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pi_runtime.bundle import BundleError, load_manifest, verify_bundle
from convert.onnx_export import ExportError, check_standard_ops
from convert.parity import DEFAULT_CASES, check_parity, phrase_of_tokens
from convert.verify import main as verify_main
from eris import load_checkpoint


def test_bundle_files_and_manifest(bundle):
    m = load_manifest(bundle / "bundle")
    assert set(m["files"]) == {"text.onnx", "image_fp32.onnx", "tokenizer.json"}
    assert m["preprocessing"]["layout"] == "NHWC" and m["preprocessing"]["dtype"] == "uint8"
    assert m["tokenizer"]["max_tokens"] == 32 and len(m["tokenizer"]["sha256"]) == 64
    assert m["model"]["config"]["name"] == "tiny" and m["metrics"]["torch_fp32"] == {"mIoU": 12.5}
    assert m["graphs"]["text"]["outputs"] == ["text_tokens", "token_mask"]
    assert m["graphs"]["image"]["fp32"]["inputs"] == ["image", "text_tokens", "token_mask"]
    assert m["parity"]["max_abs_diff"] <= 1e-3 and len(m["parity"]["cases"]) == 3


def test_image_graph_takes_only_float_phrase_tensors(bundle):
    """The image graph's phrase inputs are float (no int64 mask), so every quantizer sees float."""
    graph = onnx.load(str(bundle / "bundle" / "image_fp32.onnx")).graph
    types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert types == {"image": TensorProto.UINT8, "text_tokens": TensorProto.FLOAT, "token_mask": TensorProto.FLOAT}


def test_text_graph_is_the_encoder_alone(bundle):
    """The text graph holds the text encoder's weights and none of the trained projections, so a
    retrain with a frozen encoder exports the same file."""
    names = {i.name for i in onnx.load(str(bundle / "bundle" / "text.onnx")).graph.initializer}
    assert names and not any(n.startswith(("fusions.", "iams.", "tvr.")) or ".fusions." in n or ".iams." in n
                             or ".tvr." in n for n in names), sorted(names)[:10]


def test_parity_on_every_size_length_and_batch(bundle, tokenizer):
    model, _, _ = load_checkpoint(bundle / "ckpt")
    b = bundle / "bundle"
    results = check_parity(model, tokenizer, b / "text.onnx", b / "image_fp32.onnx", DEFAULT_CASES, threads=1)
    assert len(results) == 18
    assert {(r.height, r.width) for r in results} == {(640, 640), (480, 640), (320, 320)}
    assert {r.tokens for r in results} == {3, 10, 30} and {r.batch for r in results} == {1, 3}
    assert max(r.max_abs_diff for r in results) <= 1e-3
    assert min(r.max_abs_logit for r in results) > 0.5  # the comparison is not between near-zero maps


def test_phrase_of_exact_token_count(tokenizer):
    for n in (3, 10, 30):
        assert tokenizer(phrase_of_tokens(tokenizer, n))[0].shape[1] == n


def _graph_with(op_type, domain, tmp_path):
    node = helper.make_node(op_type, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    opsets = [helper.make_opsetid("", 19)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    path = tmp_path / f"{op_type}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_guard_refuses_custom_and_deformconv_ops(tmp_path):
    with pytest.raises(ExportError, match="com.example::MyDeform"):
        check_standard_ops(_graph_with("MyDeform", "com.example", tmp_path))
    deform = helper.make_node("DeformConv", ["x", "w", "o"], ["y"])
    graph = helper.make_graph([deform], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                              for n in ("x", "w", "o")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "deform.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    with pytest.raises(ExportError, match="DeformConv"):
        check_standard_ops(path)
    assert check_standard_ops(_graph_with("Relu", "", tmp_path)) == {"Relu"}


def test_exported_graphs_hold_only_standard_ops(bundle):
    ops = check_standard_ops(bundle / "bundle" / "image_fp32.onnx")
    assert "GridSample" in ops and "Conv" in ops and "DeformConv" not in ops


def _copy(bundle, tmp_path):
    import shutil

    return shutil.copytree(bundle / "bundle", tmp_path / "b")


def test_verify_passes_and_catches_a_flipped_byte(bundle, tmp_path, capsys):
    b = _copy(bundle, tmp_path)
    assert verify_bundle(b) == {"fp32": [1, 1, 16, 24]}
    data = bytearray((b / "image_fp32.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "image_fp32.onnx").write_bytes(bytes(data))
    assert verify_main([str(b)]) == 1
    assert "image_fp32.onnx: checksum mismatch" in capsys.readouterr().err


def test_verify_catches_missing_file_and_other_format(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    (b / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json.*missing"):
        verify_bundle(b)
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="checksum mismatch with manifest.sha256"):  # edited by hand
        verify_bundle(b)
    data = (b / "manifest.json").read_bytes()
    (b / "manifest.sha256").write_text(hashlib.sha256(data).hexdigest() + "  manifest.json\n")
    with pytest.raises(BundleError, match="format version 99"):
        verify_bundle(b)


def test_found_threshold_is_calibrated_and_used(bundle, tmp_path, capsys):
    import shutil

    import numpy as np

    from convert.found import choose_threshold
    from convert.found import main as found_main
    from pi_runtime.segmenter import Segmenter

    t, tpr, tnr = choose_threshold([0.9, 0.8, 0.7, 0.3, 0.2, 0.6], [True, True, True, False, False, False])
    assert 0.6 < t <= 0.7 and tpr == 100.0 and tnr == 100.0
    with pytest.raises(ValueError, match="both"):
        choose_threshold([0.9], [True])
    b = shutil.copytree(bundle / "bundle", tmp_path / "b")
    assert found_main(["--bundle", str(b), "--data", "shapes", "shapes-absent", "--n", "3", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = load_manifest(b)
    assert m["output"]["found_threshold"] == report["found_threshold"] and m["metrics"]["found"]["n_absent"] == 3
    seg = Segmenter(b, "fp32", threads=1)
    assert seg.found_threshold == report["found_threshold"]
    r = seg.segment(np.zeros((64, 64, 3), np.uint8), "the red circle")
    assert r.found == (r.score >= seg.found_threshold) and (r.found or not r.mask.any())


def test_text_graph_file_is_identical_across_retrains_with_a_frozen_encoder(tmp_path, tokenizer):
    """Models that share the text encoder but differ everywhere else -- other weights, another
    parameter set (fusion position weights), the pixel std folded away -- export byte-identical
    text graphs, so git stores that file once. (Until session 10 the exporter's metadata listed
    every parameter of the whole model, and adding the position weights changed the file.)"""
    import torch

    from convert.fold import fold_pixel_std
    from convert.onnx_export import export_text_graph
    from eris import build_model
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    a = build_model(tiny_config()).eval()
    torch.manual_seed(1)
    b = build_model(tiny_config(fusion_position=True)).eval()
    b.text_encoder.load_state_dict(a.text_encoder.state_dict())
    fold_pixel_std(b)
    assert not torch.equal(a.fusions[0].key.weight, b.fusions[0].key.weight)
    assert set(a.state_dict()) != set(b.state_dict())
    export_text_graph(a, tokenizer, tmp_path / "a.onnx")
    export_text_graph(b, tokenizer, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    graph = onnx.load(str(tmp_path / "a.onnx")).graph
    assert len(graph.metadata_props) == 0 and not any(n.metadata_props for n in graph.node)


def test_fold_pixel_std_keeps_the_logits_and_is_idempotent(tiny_model, tokenizer):
    from convert.fold import first_conv, fold_pixel_std

    model = tiny_model.eval()
    assert first_conv(model) is model.backbone.features[0].conv  # STDC's stem conv
    ids, mask = tokenizer(["the red mug on the left"])
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        before = model.segment(image, text).logits
        assert fold_pixel_std(model) <= 1e-5
        after = model.segment(image, text).logits
    assert model.pixel_std is None and fold_pixel_std(model) == 0.0
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()


def test_normalize_nhwc_equals_the_channel_first_formula():
    from convert.graphs import normalize_nhwc

    pixels = torch.randint(0, 256, (2, 8, 12, 3), generator=torch.Generator().manual_seed(2)).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    nchw = pixels.permute(0, 3, 1, 2)
    assert torch.equal(normalize_nhwc(pixels, mean, std).permute(0, 3, 1, 2), (nchw - mean) / std)
    assert torch.equal(normalize_nhwc(pixels, mean, None).permute(0, 3, 1, 2), nchw - mean)


def test_image_graph_normalises_without_a_division(bundle):
    """The bundle's image graph goes uint8 -> float -> [B, H, W*3] view -> minus mean -> first
    Conv: the std lives in the conv's weights (parity against the unfolded checkpoint is checked
    above), and the subtraction runs over whole rows (onnxruntime's broadcast over a last axis of
    3 was 5 % of the INT8 graph's time)."""
    graph = onnx.load(str(bundle / "bundle" / "image_fp32.onnx")).graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chain, name = [], "image"
    while not chain or chain[-1] != "Conv":
        nxt = [n for n in consumers[name] if n.op_type != "Shape"]
        assert len(nxt) == 1, [n.op_type for n in nxt]
        chain.append(nxt[0].op_type)
        name = nxt[0].output[0]
    assert "Div" not in chain and "Sub" in chain, chain
    assert chain.index("Reshape") < chain.index("Sub"), chain
