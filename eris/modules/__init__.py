"""ERIS building blocks; each takes sizes, never a config object."""

from eris.modules.fpn import DeformableFPN
from eris.modules.fusion import EarlyFusion, JointAttentionFusion
from eris.modules.iam import IAM, GlobalContext
from eris.modules.tvr import TextVisualRefinement, dot_product_head

__all__ = ["DeformableFPN", "EarlyFusion", "JointAttentionFusion", "GlobalContext", "IAM", "TextVisualRefinement", "dot_product_head"]
