"""Parity of the exported graphs with PyTorch, run in onnxruntime."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from convert.graphs import IMAGE_OUTPUTS, TEXT_OUTPUTS, ImageGraph, TextGraph
from eris.model import ERIS
from eris.text.tokenizer import PhraseTokenizer

__all__ = ["ParityCase", "DEFAULT_CASES", "check_parity", "phrase_of_tokens"]

SIZES = ((640, 640), (480, 640), (320, 320))
TOKENS = (3, 10, 30)
BATCHES = (1, 3)
WORDS = "the small red ring left of a big blue star in top corner next to green square below".split()


@dataclass
class ParityCase:
    height: int
    width: int
    tokens: int
    batch: int
    max_abs_diff: float = float("nan")
    max_abs_logit: float = float("nan")


DEFAULT_CASES = [ParityCase(h, w, t, b) for (h, w) in SIZES for t in TOKENS for b in BATCHES]


def phrase_of_tokens(tokenizer: PhraseTokenizer, n: int) -> str:
    """A phrase that tokenizes to exactly ``n`` tokens ([CLS] and [SEP] included)."""
    words = []
    while True:
        ids, _ = tokenizer(" ".join(words + [WORDS[len(words) % len(WORDS)]]))
        if ids.shape[1] > n:
            break
        words.append(WORDS[len(words) % len(WORDS)])
    got = tokenizer(" ".join(words))[0].shape[1]
    if got != n:
        raise ValueError(f"cannot make a phrase of exactly {n} tokens (got {got})")
    return " ".join(words)


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(model: ERIS, tokenizer: PhraseTokenizer, text_path: Path, image_path: Path,
                 cases: list[ParityCase] | None = None, seed: int = 0, threads: int | None = None) -> list[ParityCase]:
    """Runs each case through PyTorch and onnxruntime and fills in the max |logit difference|.

    A batch holds phrases of different lengths (right-padded to the case's length), so padding
    is exercised too.
    """
    model = model.eval()
    text_session, image_session = _session(text_path, threads), _session(image_path, threads)
    text_graph, image_graph = TextGraph(model), ImageGraph(model)
    rng = np.random.default_rng(seed)
    out = []
    for case in cases or DEFAULT_CASES:
        lengths = [case.tokens] + [max(3, case.tokens - 2 * i) for i in range(1, case.batch)]
        ids, mask = tokenizer([phrase_of_tokens(tokenizer, n) for n in lengths])
        image = rng.integers(0, 256, (case.batch, case.height, case.width, 3), dtype=np.uint8)
        with torch.no_grad():
            want = image_graph(torch.from_numpy(image), *text_graph(ids, mask)).numpy()
        text = text_session.run(TEXT_OUTPUTS, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        got = image_session.run(IMAGE_OUTPUTS, {"image": image, **dict(zip(TEXT_OUTPUTS, text))})[0]
        if got.shape != want.shape:
            raise AssertionError(f"{image_path}: logits shape {got.shape} != PyTorch {want.shape} for {asdict(case)}")
        out.append(ParityCase(case.height, case.width, case.tokens, case.batch,
                              float(np.abs(got - want).max()), float(np.abs(want).max())))
    return out
