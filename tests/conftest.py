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
