"""Text normalisation shared by training and inference.

Training and serving must see identical text, so this is the only place where ad text is cleaned.
The steps, in order (version ``NORMALIZATION_VERSION``, stored in each artifact):

1. lone UTF-16 surrogates (from JSON ``\\ud83d`` escapes) are replaced by U+FFFD;
2. HTML: tags are replaced by a space and entities decoded (``&amp;`` -> ``&``, ``&nbsp;`` -> space);
3. Unicode NFKC (full-width and other compatibility forms fold to their plain forms, NFC/NFD agree);
4. zero-width and other format characters (category ``Cf``: ZWSP, ZWJ, BOM, ...) and variation
   selectors are removed;
5. emoji and other symbols (category ``So``) are spelled out by their Unicode name
   (``💋`` -> `` kiss mark ``), because uncased BERT vocabularies map almost all emoji to one
   ``[UNK]`` token and would erase a signal that escort ads lean on;
6. runs of white space fold to one space; leading and trailing space is stripped.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache

NORMALIZATION_VERSION = "adrisk-norm-1"

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_WS = re.compile(r"\s+")
_VARIATION_SELECTORS = {chr(c) for c in range(0xFE00, 0xFE10)}


@lru_cache(maxsize=4096)
def _symbol_name(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f" {name.lower()} " if name else " "


def _expand_char(ch: str) -> str:
    if ch.isascii():
        return ch
    if ch in _VARIATION_SELECTORS:
        return ""
    cat = unicodedata.category(ch)
    if cat == "Cf":
        return ""
    if cat == "So":
        return _symbol_name(ch)
    return ch


def normalize_text(text: str) -> str:
    """Normalise one ad text the way the model was trained.

    Args:
        text: any Python string, including lone surrogates, HTML and control characters.

    Returns:
        The cleaned text (possibly empty). Never raises for a ``str`` input.

    Raises:
        TypeError: if ``text`` is not a ``str`` (callers validate types before this point).
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    text = _SURROGATE.sub("\ufffd", text)
    if "<" in text:
        text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii():
        text = "".join(_expand_char(ch) for ch in text)
    return _WS.sub(" ", text).strip()
