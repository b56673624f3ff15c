"""Visual backbones."""

from eris.backbones.stdc import FeatureInfo, STDCNet, build_stdc, load_imagenet_weights

__all__ = ["FeatureInfo", "STDCNet", "build_stdc", "load_imagenet_weights"]
