"""The YOLO11n-seg timing peer: Ultralytics' layer widths (by its parameter count) and output shapes."""

import onnx
import onnxruntime as ort
import numpy as np
import torch

from eris.peers.yolo11_seg import build_yolo11n_seg, export_onnx, fused_parameters


def test_yolo11n_seg_has_ultralytics_parameter_count_and_outputs():
    model = build_yolo11n_seg()
    assert fused_parameters(model) == 2_868_664  # "YOLO11n-seg summary (fused): ... 2,868,664 parameters"
    with torch.no_grad():
        boxes, proto = model(torch.zeros(1, 3, 320, 320))
    assert boxes.shape == (1, 4 + 80 + 32, 40 * 40 + 20 * 20 + 10 * 10) and proto.shape == (1, 32, 80, 80)


def test_yolo11n_seg_exports_and_runs_in_onnxruntime(tmp_path):
    path = export_onnx(tmp_path / "peer.onnx", size=128)
    graph = onnx.load(str(path)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 128, 128]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    boxes, proto = session.run(None, {"images": image})
    with torch.no_grad():
        want = build_yolo11n_seg()(torch.from_numpy(image))
    assert boxes.shape == (1, 116, 16 * 16 + 8 * 8 + 4 * 4) and proto.shape == (1, 32, 32, 32)
    assert np.allclose(boxes, want[0].numpy(), atol=1e-3) and np.allclose(proto, want[1].numpy(), atol=1e-3)
