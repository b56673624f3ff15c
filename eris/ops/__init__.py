"""Export-friendly operators built from standard ops."""

from eris.ops.deform_conv import DeformConv2d, deform_conv2d, deform_conv2d_grid_sample

__all__ = ["DeformConv2d", "deform_conv2d", "deform_conv2d_grid_sample"]
