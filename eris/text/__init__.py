"""Text side of ERIS: a BERT-family encoder and its tokenizer."""

from eris.text.bert import BertConfig, BertEncoder, default_text_model_dir, load_bert_weights
from eris.text.tokenizer import PhraseTokenizer

__all__ = ["BertConfig", "BertEncoder", "PhraseTokenizer", "default_text_model_dir", "load_bert_weights"]
