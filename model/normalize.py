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

``normalize_with_offsets`` returns the same string plus, per normalised character, the span of the
original text it came from (explanations highlight original text with it; see ``model.explain``).
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache

import numpy as np

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


def _apply(s: str, starts: list[int], ends: list[int], pieces) -> tuple[str, list[int], list[int]]:
    """Replace spans of ``s``: ``pieces`` yields ``(a, b, replacement)`` in order, non-overlapping.
    Every replacement character maps to the original span of ``s[a:b]``."""
    out: list[str] = []
    ns: list[int] = []
    ne: list[int] = []
    pos = 0
    for a, b, rep in pieces:
        if a > pos:
            out.append(s[pos:a])
            ns.extend(starts[pos:a])
            ne.extend(ends[pos:a])
        if rep:
            lo = starts[a] if b > a else (starts[a] if a < len(s) else (ends[-1] if ends else 0))
            hi = ends[b - 1] if b > a else lo
            out.append(rep)
            ns.extend([lo] * len(rep))
            ne.extend([hi] * len(rep))
        pos = b
    if pos < len(s):
        out.append(s[pos:])
        ns.extend(starts[pos:])
        ne.extend(ends[pos:])
    return "".join(out), ns, ne


def _nfkc_pieces(s: str):
    """(a, b, NFKC(s[a:b])) for the segments of ``s`` whose NFKC differs, such that the concatenation
    equals NFKC(s): segments start at combining class 0 characters and merge with the previous one
    when normalising them apart would differ from normalising them together (Hangul jamo, composing
    starters)."""
    bounds = [i for i in range(len(s)) if i == 0 or unicodedata.combining(s[i]) == 0] + [len(s)]
    segs: list[list[int]] = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if segs and not (s[segs[-1][0] : b].isascii()):
            pa, pb = segs[-1]
            joined = unicodedata.normalize("NFKC", s[pa:b])
            if joined != unicodedata.normalize("NFKC", s[pa:pb]) + unicodedata.normalize("NFKC", s[a:b]):
                segs[-1][1] = b
                continue
        segs.append([a, b])
    for a, b in segs:
        seg = s[a:b]
        rep = unicodedata.normalize("NFKC", seg)
        if rep != seg:
            yield a, b, rep


def _expand_pieces(s: str):
    for i, ch in enumerate(s):
        if ch.isascii():
            continue
        if ch in _VARIATION_SELECTORS or unicodedata.category(ch) == "Cf":
            yield i, i + 1, ""
        elif unicodedata.category(ch) == "So":
            yield i, i + 1, _symbol_name(ch)


def normalize_with_offsets(text: str) -> tuple[str, np.ndarray]:
    """``normalize_text(text)`` plus an offset map back to ``text``.

    Args:
        text: any Python string.

    Returns:
        ``(normalised, offsets)``: ``normalised == normalize_text(text)`` exactly; ``offsets`` is an
        (len(normalised), 2) int64 array, row i = ``[start, end)`` of the original characters that
        normalised character i came from (a decoded entity's characters map to the whole entity, a
        spelled-out emoji's name to the emoji, a folded white-space run to the run, an NFKC form to
        its source characters). ``text[start:end]`` is never empty.

    Raises:
        TypeError: ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    n = len(text)
    s = _SURROGATE.sub("\ufffd", text)  # 1:1
    starts, ends = list(range(n)), list(range(1, n + 1))
    if "<" in s:
        s, starts, ends = _apply(s, starts, ends, ((m.start(), m.end(), " ") for m in _TAG.finditer(s)))
    if "&" in s:  # the regex and replacement html.unescape itself uses (CPython's html module)
        s, starts, ends = _apply(
            s,
            starts,
            ends,
            ((m.start(), m.end(), html._replace_charref(m)) for m in html._charref.finditer(s)),  # type: ignore[attr-defined]
        )
    if not s.isascii():
        s, starts, ends = _apply(s, starts, ends, _nfkc_pieces(s))
    if not s.isascii():
        s, starts, ends = _apply(s, starts, ends, list(_expand_pieces(s)))
    s, starts, ends = _apply(s, starts, ends, ((m.start(), m.end(), " ") for m in _WS.finditer(s)))
    lead = len(s) - len(s.lstrip(" "))
    trail = len(s.rstrip(" "))
    s, starts, ends = s[lead:trail], starts[lead:trail], ends[lead:trail]
    expected = normalize_text(text)
    if s != expected:  # should not happen; keep the contract (same string) with a coarse map
        return expected, np.tile(np.asarray([[0, n]], dtype=np.int64), (len(expected), 1))
    return s, np.asarray([starts, ends], dtype=np.int64).T.reshape(len(s), 2)
