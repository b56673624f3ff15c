"""Static INT8 for the image graph with onnxruntime's own tooling, and a per-node sensitivity report.

``quant_pre_process`` (shape inference + graph optimisation, BatchNorm folded into convs), then
``quantize_static`` in QDQ format with per-channel weights. The sensitivity report comes from
``onnxruntime.quantization.qdq_loss_debug``: for every quantized tensor, the signal-to-
quantization-noise ratio (dB) of its own quantization (``qdq``) and of the whole INT8 model up
to that point against fp32 (``cumulative``). Nodes whose own SQNR is lowest are the ones to keep
in float.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

__all__ = ["QuantConfig", "preprocess", "quantize_image_graph", "sensitivity_report", "METHODS", "ACTIVATION_TYPES"]

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}
ACTIVATION_TYPES = {"S8S8": QuantType.QInt8, "U8S8": QuantType.QUInt8}  # activations / weights (always S8)


@dataclass(frozen=True)
class QuantConfig:
    scheme: str = "S8S8"          # S8S8 or U8S8
    method: str = "minmax"        # minmax, percentile, entropy

    @property
    def name(self) -> str:
        return f"{self.scheme}-{self.method}"


def preprocess(fp32_path: Path, out_path: Path) -> Path:
    """onnxruntime's recommended pre-processing (ONNX shape inference + graph optimisation).

    Symbolic shape inference is skipped: it cannot resolve our graphs' dynamic H/W/L, and when it
    gives up it dumps ``sym_shape_infer_temp.onnx`` and its weights into the working directory.
    """
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def quantize_image_graph(pre_path: Path, out_path: Path, reader, config: QuantConfig,
                         exclude: list[str] | None = None, op_types: list[str] | None = None) -> Path:
    """QDQ INT8 with per-channel S8 weights; ``exclude`` names nodes kept in float; ``op_types``
    limits quantization to those op types (None: every op type onnxruntime can quantize)."""
    extra = {"ActivationSymmetric": config.scheme == "S8S8", "CalibMovingAverage": False}
    if config.method == "percentile":
        extra["CalibPercentile"] = 99.99
    reader.rewind()
    quantize_static(str(pre_path), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=ACTIVATION_TYPES[config.scheme], weight_type=QuantType.QInt8,
                    calibrate_method=METHODS[config.method], nodes_to_exclude=list(exclude or []),
                    extra_options=extra, **({"op_types_to_quantize": list(op_types)} if op_types else {}))
    return out_path


def _producers(model_path: Path) -> dict[str, tuple[str, str]]:
    model = onnx.load(str(model_path), load_external_data=False)
    return {out: (n.name, n.op_type) for n in model.graph.node for out in n.output}


def sensitivity_report(pre_path: Path, qdq_path: Path, reader) -> list[dict]:
    """Per quantized activation: the producing node, its op type, and SQNR in dB
    (``qdq``: of that tensor's own quantization; ``cumulative``: INT8 model vs fp32 there).
    Sorted from the most sensitive (lowest ``qdq``) node."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as tmp:
        aug_float, aug_qdq = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(pre_path), str(aug_float))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_qdq))
        reader.rewind()
        float_acts = collect_activations(str(aug_float), reader)
        reader.rewind()
        qdq_acts = collect_activations(str(aug_qdq), reader)
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    producers = _producers(pre_path)
    rows = []
    for tensor, err in errors.items():
        node, op = producers.get(tensor, ("?", "?"))
        rows.append({"tensor": tensor, "node": node, "op": op, "qdq_sqnr_db": float(err.get("qdq_err", float("nan"))),
                     "cumulative_sqnr_db": float(err.get("xmodel_err", float("nan")))})
    rows.sort(key=lambda r: (r["qdq_sqnr_db"] if r["qdq_sqnr_db"] == r["qdq_sqnr_db"] else 1e9))
    return rows
