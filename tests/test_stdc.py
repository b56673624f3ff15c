"""eris.backbones.stdc: structure and the official ImageNet checkpoint loader."""

import pytest
import torch

from eris.backbones import build_stdc, load_imagenet_weights


@pytest.mark.parametrize("name,n_blocks", [("stdc1", 6), ("stdc2", 12)])
def test_feature_strides_and_channels(name, n_blocks):
    net = build_stdc(name).eval()
    assert len(net.features) == 2 + n_blocks
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 160, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 20, 12), (1, 512, 10, 6), (1, 1024, 5, 3)]
    assert [(i.channels, i.reduction) for i in net.feature_info] == [(256, 8), (512, 16), (1024, 32)]


def test_stdc1_first_block_matches_official_layout():
    net = build_stdc("stdc1")
    keys = set(net.state_dict())
    # key names of STDCNet813M_73.91.tar
    for k in ["features.0.conv.weight", "features.1.bn.running_var", "features.2.avd_layer.0.weight",
              "features.2.conv_list.3.conv.weight", "features.7.conv_list.0.bn.weight"]:
        assert k in keys
    assert tuple(net.state_dict()["features.2.conv_list.1.conv.weight"].shape) == (64, 128, 3, 3)
    assert "features.3.avd_layer.0.weight" not in keys  # stride-1 block


def _official_style_checkpoint(net, path, extra=None):
    state = {f"module.{k}": v.clone() for k, v in net.state_dict().items()}
    state.update({"module.fc.weight": torch.zeros(1024, 1024), "module.bn.weight": torch.zeros(1024),
                  "module.linear.weight": torch.zeros(1000, 1024), "module.conv_last.conv.weight": torch.zeros(1)})
    state.update(extra or {})
    torch.save({"state_dict": state, "epoch": 300}, path)


def test_loader_maps_official_keys(tmp_path):
    torch.manual_seed(1)
    src = build_stdc("stdc1")
    for p in src.parameters():
        p.data.normal_()
    _official_style_checkpoint(src, tmp_path / "STDCNet813M.tar", {"module.extra.weight": torch.zeros(2)})
    dst = build_stdc("stdc1")
    report = load_imagenet_weights(dst, tmp_path / "STDCNet813M.tar")
    assert report.missing == []
    assert report.unexpected == ["extra.weight"]
    assert set(report.ignored) == {"fc.weight", "bn.weight", "linear.weight", "conv_last.conv.weight"}
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_loader_reports_missing_keys_and_rejects_wrong_files(tmp_path):
    src = build_stdc("stdc1")
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("features.7.")}
    torch.save(state, tmp_path / "partial.pth")
    report = load_imagenet_weights(build_stdc("stdc1"), tmp_path / "partial.pth")
    assert report.missing and all(k.startswith("features.7.") for k in report.missing)

    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "nofeatures.pth")
    with pytest.raises(ValueError, match="nofeatures.pth.*features"):
        load_imagenet_weights(build_stdc("stdc1"), tmp_path / "nofeatures.pth")

    _official_style_checkpoint(build_stdc("stdc2"), tmp_path / "stdc2.tar")
    with pytest.raises(ValueError, match="stdc2.tar.*shape"):
        load_imagenet_weights(build_stdc("stdc1"), tmp_path / "stdc2.tar")

    (tmp_path / "junk.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.tar"):
        load_imagenet_weights(build_stdc("stdc1"), tmp_path / "junk.tar")


def test_unknown_backbone():
    with pytest.raises(ValueError, match="stdc1"):
        build_stdc("resnet50")
