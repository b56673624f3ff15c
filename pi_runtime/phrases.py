"""What a phrase must be before it reaches the tokenizer, in every mode (API, batch, live, preview).

One limit and one set of rules: a string of valid Unicode (no lone surrogates), at most
``MAX_PHRASE_CHARS`` characters, with at least one letter or digit (``"\\x00"``, ``"\\u200b"`` or
emoji alone name nothing the model can look for). Control characters are dropped and runs of
white space become one space. :func:`printable` makes any text safe to echo on a terminal.
:func:`mirror_phrase` rewrites a phrase for the mirrored image (training's flip augmentation and
the runtime's ``--flip-average`` share it).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["PhraseError", "MAX_PHRASE_CHARS", "check_phrase", "printable", "mirror_phrase"]

MAX_PHRASE_CHARS = 200
_SPACES = re.compile(r"\s+")
_MIRROR = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_MIRROR_RE = re.compile(r"\b(" + "|".join(_MIRROR) + r")\b", re.IGNORECASE)


class PhraseError(ValueError):
    """A phrase that cannot be segmented (the message says why)."""


def check_phrase(phrase) -> str:
    """The phrase, cleaned; :class:`PhraseError` if it cannot be used."""
    if not isinstance(phrase, str):
        raise PhraseError(f"phrase must be a string, got {type(phrase).__name__}")
    try:
        phrase.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PhraseError(f"phrase is not valid Unicode text (lone surrogate at character {exc.start})") from None
    if len(phrase) > MAX_PHRASE_CHARS:
        raise PhraseError(f"phrase is {len(phrase)} characters; the limit is {MAX_PHRASE_CHARS}")
    cleaned = "".join(" " if unicodedata.category(c) == "Cc" else c for c in phrase)
    cleaned = _SPACES.sub(" ", cleaned).strip()
    if not cleaned:
        raise PhraseError("phrase is empty or whitespace only")
    if not any(unicodedata.category(c)[0] in "LN" for c in cleaned):
        raise PhraseError(f"phrase {printable(cleaned)!s} has no letters or digits")
    return cleaned


def printable(text: str, limit: int = 80) -> str:
    """``text`` with control and other non-printable characters escaped (terminal escape
    sequences cannot reach the terminal), cut to ``limit`` characters."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                  for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def mirror_phrase(phrase: str) -> str:
    """The phrase for the mirrored image: left and right swap (case kept for the first letter);
    near/far, above/below and everything else stay."""
    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = _MIRROR[word.lower()]
        return new.capitalize() if word[0].isupper() else new
    return _MIRROR_RE.sub(swap, phrase)
