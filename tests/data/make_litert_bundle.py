"""Rebuild ``tests/data/litert_tiny/``: a bundle of a tiny random ERIS with both ONNX and ``.tflite``
graphs, and PyTorch's logits for the four example scenes, for ``tests/test_litert.py`` (which
also derives a LiteRT-only bundle from it).

The real exporter needs litert-torch (JAX, torchao), which neither CI nor the runtime installs,
so the test bundle is made once here and committed (well under 1 MB: a 60-word WordPiece
vocabulary, a 1-layer 16-wide BERT, STDC at 1/8 width). Run from the repository root with the
converter's venv (see ``convert/tflite.py``)::

    .venv-tflite/bin/python tests/data/make_litert_bundle.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # litert-torch's venv ships an unrelated top-level "tests" package

from convert.graphs import IMAGE_INPUTS, IMAGE_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUTS, ImageGraph, TextGraph  # noqa: E402
from convert.onnx_export import export_image_graph, export_text_graph  # noqa: E402
from convert.tflite import export_litert, litert_section  # noqa: E402
from eris.backbones.stdc import STDCNet  # noqa: E402
from eris.model import ERIS  # noqa: E402
from eris.text.bert import BertConfig, BertEncoder  # noqa: E402
from eris.text.tokenizer import PhraseTokenizer  # noqa: E402
from pi_runtime.bundle import FORMAT_VERSION, write_manifest  # noqa: E402
from pi_runtime.preprocess import letterbox_into, load_image  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

OUT = ROOT / "tests" / "data" / "litert_tiny"
HW = (96, 128)
WORDS = ("the a red orange yellow green blue purple pink white black circle square triangle star hexagon diamond "
         "cross ring big small left right top bottom of next to above below second first third from corner "
         "leftmost rightmost lowest highest tiny large mug cup in on thing").split()


def tiny_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(path))


def tiny_model(vocab_size: int) -> ERIS:
    torch.manual_seed(0)
    text = BertEncoder(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32))
    model = ERIS(tiny_config(text=text.config), STDCNet(base=8), text).eval()
    with torch.no_grad():  # larger logits, so agreement tests compare something
        for q in model.tvr.values:
            q.weight.mul_(8)
    return model


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    tiny_tokenizer(OUT / "tokenizer.json")
    tokenizer = PhraseTokenizer(OUT / "tokenizer.json", 32)
    model = tiny_model(len(WORDS) + 4)
    examples = [e for e in map(json.loads, (ROOT / "examples" / "manifest.jsonl").read_text().splitlines())
                if e["id"].startswith("shaperef_test_")]
    pairs = [(ROOT / "examples" / e["image"], e["phrase"]) for e in examples]
    cfg = model.config
    report = export_litert(model, tokenizer, OUT, pairs * 2, HW, ["int8", "fp16", "fp32"], calib_n=4, eval_n=4)
    (OUT / "tflite_report.json").write_text(json.dumps(report, indent=2) + "\n")
    export_text_graph(model, tokenizer, OUT / "text.onnx")
    export_image_graph(model, tokenizer, OUT / "image_fp32.onnx")
    write_manifest(OUT, {
        "format_version": FORMAT_VERSION,
        "model": {"name": "tiny-litert", "note": "tests/data/make_litert_bundle.py: random weights"},
        "preprocessing": {"long_side": max(HW), "size_divisor": cfg.size_divisor, "channel_order": "RGB",
                          "layout": "NHWC", "dtype": "uint8", "mean": list(cfg.pixel_mean), "std": list(cfg.pixel_std)},
        "tokenizer": {"file": "tokenizer.json", "max_tokens": 32, "padding": "right"},
        "output": {"stride": cfg.output_stride, "threshold": 0.5},
        "graphs": {"text": {"file": "text.onnx", "precision": "fp32", "inputs": TEXT_INPUTS, "outputs": TEXT_OUTPUTS},
                   "image": {"fp32": {"file": "image_fp32.onnx", "inputs": IMAGE_INPUTS, "outputs": IMAGE_OUTPUTS}},
                   "litert": litert_section(report)},
        "files": ["tokenizer.json", "tflite_report.json", "text.onnx", "image_fp32.onnx",
                  *(v["file"] for v in report["graphs"].values())],
    })
    refs = {}
    with torch.no_grad():
        for i, (path, phrase) in enumerate(pairs):
            canvas, _ = letterbox_into(load_image(path), HW)
            ids, mask = tokenizer([phrase])
            pad = 32 - ids.shape[1]
            tokens, tmask = TextGraph(model)(torch.nn.functional.pad(ids, (0, pad)), torch.nn.functional.pad(mask, (0, pad)))
            refs[f"logits_{i}"] = ImageGraph(model)(torch.from_numpy(canvas)[None], tokens, tmask).numpy()
    np.savez_compressed(OUT / "reference.npz", **refs)
    print(json.dumps({k: v for k, v in report["graphs"].items()}, default=str)[:2000])


if __name__ == "__main__":
    main()
