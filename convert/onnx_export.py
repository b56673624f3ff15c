"""Export the text and image graphs to ONNX with dynamic batch, height, width and phrase length.

Uses the ``torch.export``-based exporter (``dynamo=True``). Every node must be a standard ONNX
op: :func:`check_standard_ops` refuses a graph holding a custom-domain node or ``DeformConv``,
naming them, so the deformable conv can never silently fall back to a kernel the Pi lacks.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch.export import Dim

from convert.graphs import IMAGE_INPUTS, IMAGE_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUTS, ImageGraph, TextGraph
from eris.model import ERIS
from eris.text.tokenizer import PhraseTokenizer

__all__ = ["ExportError", "export_text_graph", "export_image_graph", "check_standard_ops", "strip_export_metadata",
           "OPSET"]

OPSET = 18  # GridSample (16+) with the pre-opset-20 mode names, well covered by onnxruntime
FORBIDDEN_OPS = {"DeformConv"}
STANDARD_DOMAINS = {"", "ai.onnx"}


class ExportError(RuntimeError):
    """The exported graph is not something the device runtime can run."""


def check_standard_ops(path: str | Path) -> set[str]:
    """Loads the graph, runs ``onnx.checker``, and returns its op types; raises
    :class:`ExportError` naming any custom-domain or forbidden op."""
    model = onnx.load(str(path))
    bad = sorted({f"{n.domain}::{n.op_type}" if n.domain not in STANDARD_DOMAINS else n.op_type
                  for n in model.graph.node if n.domain not in STANDARD_DOMAINS or n.op_type in FORBIDDEN_OPS})
    if bad:
        raise ExportError(f"{path}: non-standard ops {bad}; the deformable conv must export as standard ops")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker failed: {exc}") from exc
    return {n.op_type for n in model.graph.node}


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs, outputs, dynamic_shapes, opset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)
    strip_export_metadata(path)
    check_standard_ops(path)


def strip_export_metadata(path: str | Path) -> None:
    """Drops the exporter's ``metadata_props`` (graph and nodes) from the saved graph.

    Why: torch.export writes the *whole* model's graph signature (every parameter name) into
    the graph's metadata and each node's source location (file and line) into its own, so the
    text graph changed bytes -- and git stored its 36 MB again -- whenever the image side's
    parameters or this repository's code lines changed, though not one weight of it had. The
    runtime reads none of it."""
    model = onnx.load(str(path))
    del model.graph.metadata_props[:]
    for graph in _graphs(model.graph):
        for node in graph.node:
            del node.metadata_props[:]
    onnx.save(model, str(path))


def _graphs(graph):
    """``graph`` and every subgraph (If/Loop bodies) under it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _example_text(tokenizer: PhraseTokenizer):
    return tokenizer(["the red mug on the left", "a cup"])


def _text_dims():
    return Dim("batch", min=1, max=256), Dim("tokens", min=2, max=512)


def export_text_graph(model: ERIS, tokenizer: PhraseTokenizer, path: str | Path, opset: int = OPSET) -> Path:
    """``input_ids, attention_mask`` (int64 ``[B, L]``) -> ``TEXT_OUTPUTS``: the encoder's token
    features and the float token mask."""
    path = Path(path)
    batch, tokens = _text_dims()
    ids, mask = _example_text(tokenizer)
    _export(TextGraph(model).eval(), (ids, mask), path, TEXT_INPUTS, TEXT_OUTPUTS,
            {"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}}, opset)
    return path


def export_image_graph(model: ERIS, tokenizer: PhraseTokenizer, path: str | Path, opset: int = OPSET) -> Path:
    """``image`` (uint8 NHWC RGB, H and W multiples of 32) and the text graph's float outputs
    (``text_tokens``, ``token_mask``) -> ``logits`` ``[B, 1, H/4, W/4]``."""
    path = Path(path)
    batch, tokens = _text_dims()
    d = model.config.size_divisor
    height, width = d * Dim("h_blocks", min=1, max=128), d * Dim("w_blocks", min=1, max=128)
    ids, mask = _example_text(tokenizer)
    with torch.no_grad():
        text = TextGraph(model).eval()(ids, mask)
    image = torch.zeros(ids.shape[0], 3 * d, 4 * d, 3, dtype=torch.uint8)
    _export(ImageGraph(model).eval(), (image, *text), path, IMAGE_INPUTS, IMAGE_OUTPUTS,
            ({0: batch, 1: height, 2: width}, {0: batch, 1: tokens}, {0: batch, 1: tokens}), opset)
    return path
