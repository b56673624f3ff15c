"""Shared fixtures: a tiny random-weight config for fast structural tests, the real student."""

import pytest
import torch

from eris import build_model, build_tokenizer
from eris.config import get_config
from eris.text.bert import BertConfig

TINY_TEXT = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_config(**changes):
    """STDC1 with a 2-layer random BERT and narrow cross-modal modules."""
    fields = dict(name="tiny", text=TINY_TEXT, text_pretrained=None, dim=32, fusion_dim=32, fusion_heads=2)
    return get_config("stdc1-minilm").replace(**{**fields, **changes})


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_config())


@pytest.fixture(scope="session")
def student():
    """The real stdc1-minilm (pretrained MiniLM text encoder, random vision weights), eval mode."""
    torch.manual_seed(0)
    return build_model("stdc1-minilm").eval()


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(get_config("stdc1-minilm"))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tokenizer):
    """A tiny random-weight model with non-trivial BatchNorm statistics, fusion and refinement
    position weights and narrowed deformable convs, exported once."""
    from convert.__main__ import main as convert_main
    from eris import save_checkpoint
    from tests.test_checkpoint import _perturb_batchnorm

    root = tmp_path_factory.mktemp("convert")
    torch.manual_seed(0)
    model = build_model(tiny_config(fusion_position=True, tvr_position=True, deform_sample_channels=(8, 16)))
    _perturb_batchnorm(model)
    with torch.no_grad():  # larger logits, so a 1e-3 tolerance means something
        for q in model.tvr.values:
            q.weight.mul_(8)
        for f in model.fusions:  # they start at zero; nonzero, so the export must carry them
            f.position.weight.normal_(0, 0.5)
        model.tvr.position.weight.normal_(0, 0.5)
    # fp16 like the shipped checkpoint, so convert stores the graphs' weights as fp16 as it does for real
    save_checkpoint(model.eval(), root / "ckpt", tokenizer, meta={"step": 3, "metrics": {"mIoU": 12.5}},
                    dtype=torch.float16)
    assert convert_main(["--checkpoint", str(root / "ckpt"), "--out", str(root / "bundle"), "--parity", "quick",
                         "--threads", "1"]) == 0
    return root
