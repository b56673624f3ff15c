"""WordPiece tokenization of phrases with the fast ``tokenizers`` library.

The same ``tokenizer.json`` travels into checkpoints and bundles, so the Pi produces the same
ids as training. Phrases are right-padded to the longest in the batch and truncated to
``max_tokens`` (including [CLS] and [SEP]).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

__all__ = ["PhraseTokenizer"]


class PhraseTokenizer:
    def __init__(self, tokenizer_json: str | Path, max_tokens: int = 32):
        path = Path(tokenizer_json)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found")
        self.path = path
        self.max_tokens = max_tokens
        self._tok = Tokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=max_tokens)
        pad_id = self._tok.token_to_id("[PAD]")
        self._tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

    def __call__(self, phrases: str | list[str]) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)``, both ``int64 [B, L]``."""
        if isinstance(phrases, str):
            phrases = [phrases]
        for p in phrases:
            if not p or not p.strip():
                raise ValueError("phrase is empty or whitespace only")
        enc = self._tok.encode_batch(list(phrases))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask
