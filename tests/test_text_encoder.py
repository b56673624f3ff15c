"""eris.text: our BERT against transformers' on the bundled MiniLM, tokenizer behaviour."""

import json

import pytest
import torch

from eris.text import BertConfig, BertEncoder, PhraseTokenizer, default_text_model_dir, load_bert_weights


@pytest.fixture(scope="module")
def minilm():
    d = default_text_model_dir()
    enc = BertEncoder(BertConfig.from_model_dir(d))
    load_bert_weights(enc, d)
    return enc.eval(), PhraseTokenizer(d / "tokenizer.json", max_tokens=32)


def test_matches_transformers_bert(minilm):
    transformers = pytest.importorskip("transformers")
    enc, tok = minilm
    ref = transformers.BertModel.from_pretrained(str(default_text_model_dir()), local_files_only=True,
                                                 attn_implementation="eager").eval()
    ids, mask = tok(["the red mug on the left", "a tiny star", "café au lait — the one at the top"])
    with torch.no_grad():
        ours = enc(ids, mask)
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (ours - theirs)[real].abs().max() <= 1e-5


def test_minilm_config_is_read_from_the_package():
    cfg = BertConfig.from_model_dir(default_text_model_dir())
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 6, 12)


def test_tokenizer_pads_right_and_truncates(minilm):
    _, tok = minilm
    ids, mask = tok(["cup", "the red mug on the left"])
    assert ids[0, 0] == 101 and ids[0, 2] == 102  # [CLS] cup [SEP]
    assert mask[0].tolist() == [1, 1, 1] + [0] * (ids.shape[1] - 3)
    long_ids, long_mask = tok("word " * 100)
    assert long_ids.shape == (1, 32) and long_ids[0, -1] == 102


@pytest.mark.parametrize("phrase", ["", "   \n"])
def test_empty_phrase_is_refused(minilm, phrase):
    with pytest.raises(ValueError, match="empty"):
        minilm[1]([phrase])


def test_non_bert_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ValueError, match="config.json.*BERT"):
        BertConfig.from_model_dir(tmp_path)


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_bert_weights(BertEncoder(BertConfig(hidden_size=8, num_attention_heads=2, intermediate_size=8,
                                                 num_hidden_layers=1)), tmp_path)


def test_model_builds_from_another_bert_directory(tmp_path):
    """Any BERT-family directory (config.json + model.safetensors + tokenizer.json) can be the text encoder."""
    import shutil

    from safetensors.torch import save_file

    from eris import build_model, build_tokenizer
    from eris.builder import config_from_pretrained_text
    from eris.config import get_config

    small = BertConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96)
    torch.manual_seed(5)
    source = BertEncoder(small)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_act": "gelu",
                                                      **small.__dict__}))
    save_file({f"bert.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(default_text_model_dir() / "tokenizer.json", tmp_path / "tokenizer.json")

    config = config_from_pretrained_text(get_config("stdc1-minilm"), tmp_path)
    model = build_model(config)
    assert model.text_encoder.config == small
    assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight)
    assert build_tokenizer(config).path == tmp_path / "tokenizer.json"
