"""Export-friendly operators built from standard ops."""

from eris.ops.deform_conv import SAMPLERS, DeformConv2d, deform_conv2d, deform_conv2d_conv, deform_conv2d_gather

__all__ = ["SAMPLERS", "DeformConv2d", "deform_conv2d", "deform_conv2d_conv", "deform_conv2d_gather"]
