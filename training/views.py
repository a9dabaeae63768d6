"""Style-stripped views of an ad: the one place where they are defined.

A view is a pure function ``str -> str`` that removes cues of *where* an ad was posted (the site's
layout, emoji, phone numbers, letter case, length) while keeping what the ad *says*. Two users:

- the shortcut audit (``training/audit.py``) scores the model on views of the test rows: a model
  that learned the site instead of the ad loses recall on them;
- training augmentation (``augment_rows``, ``training_rows``) adds views of training rows with their
  labels, so the model cannot reach a low loss from style alone (docs/generalisation.md).

The views (``VIEWS``; names are stable, they appear in metric keys ``audit.view.<name>.*``):

=========  ===========================================================================================
``title``  the first non-empty line (escort ads are "title\\nbody"; other sources are one line)
``plain``  whole text, symbols/emoji, phone numbers, e-mails and URLs removed, lower-cased
``short``  ``title`` then ``plain``, cut to a short-listing length (``SHORT_CHARS`` = 50 characters, at
           a word boundary): what a headline on a classified site looks like (Craigslist ~38 chars)
=========  ===========================================================================================

Phone numbers are matched in their written forms, digits or number words, mixed ("9four9 555
1234"): seven or more digit units with at most three non-word characters (spaces, dots, bullets) between them.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

SHORT_CHARS = 50

_NUMBER_WORDS = "zero|one|two|three|four|five|six|seven|eight|nine"
_PHONE = re.compile(rf"[(+]?(?:(?:\d|{_NUMBER_WORDS})[^\w\n]{{0,3}}_?){{7,}}", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_WS = re.compile(r"\s+")
# Unicode categories dropped by ``strip_symbols``: other symbols (emoji, dingbats, box drawing),
# modifier symbols, format characters (ZWJ, variation selectors are Mn and handled below), private use.
_DROP_CATEGORIES = {"So", "Sk", "Cf", "Co", "Cs"}


def title(text: str) -> str:
    """The first non-empty line of ``text`` (stripped); ``""`` when every line is blank."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def strip_symbols(text: str) -> str:
    """Decode HTML entities, fold compatibility forms (NFKC) and replace emoji and other symbols
    (Unicode categories So, Sk, Cf, Co, Cs, and variation selectors U+FE00-FE0F) by a space."""
    text = unicodedata.normalize("NFKC", html.unescape(text))
    if text.isascii():
        return text
    return "".join(
        " " if unicodedata.category(ch) in _DROP_CATEGORIES or 0xFE00 <= ord(ch) <= 0xFE0F else ch
        for ch in text
    )


def strip_contacts(text: str) -> str:
    """Remove phone numbers (digits and/or number words, seven or more units), e-mails and URLs."""
    text = _URL.sub(" ", text)
    text = _EMAIL.sub(" ", text)
    return _PHONE.sub(" ", text)


def truncate(text: str, max_chars: int = SHORT_CHARS) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, at the last word boundary when there is one
    in the second half of the window (else a hard cut).

    Raises:
        ValueError: ``max_chars`` < 1.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    space = cut.rfind(" ")
    return (cut[:space] if space >= max_chars // 2 else text[:max_chars]).rstrip()


def plain(text: str) -> str:
    """The ``plain`` view: symbols and contacts removed, lower-cased, white space folded."""
    return _WS.sub(" ", strip_contacts(strip_symbols(text)).lower()).strip()


def short(text: str, max_chars: int = SHORT_CHARS) -> str:
    """The ``short`` view: ``plain(title(text))`` cut to ``max_chars`` characters."""
    return truncate(plain(title(text)), max_chars)


VIEWS: dict[str, Callable[[str], str]] = {"title": title, "plain": plain, "short": short}


def get_view(name: str) -> Callable[[str], str]:
    """The view called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return VIEWS[name]
    except KeyError:
        raise ValueError(f"unknown view {name!r}; known views: {sorted(VIEWS)}") from None


def apply_view(name: str, texts: Sequence[str]) -> list[str]:
    """``[view(t) for t in texts]`` for the view called ``name`` (see ``get_view``)."""
    fn = get_view(name)
    return [fn(t) for t in texts]


def _same(a: str, b: str) -> bool:
    return _WS.sub(" ", a).strip().lower() == _WS.sub(" ", b).strip().lower()


def augment_rows(
    texts: Sequence[str], views: Sequence[str], fraction: float = 1.0, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Views of training rows to add to the training set, each with its row's labels.

    For every view in ``views`` and every row (or a seeded random ``fraction`` of rows), the view
    text is kept when it is non-empty and differs from the row's text (ignoring case and spacing:
    a Craigslist title is its own ``short`` view and adds nothing).

    Args:
        texts: the training texts (n rows).
        views: view names (``VIEWS``).
        fraction: share of rows (0, 1] that get each view.
        seed: for the row sample.

    Returns:
        (new texts, source row index of each, shape (m,) int64): the caller copies labels,
        source and group from those rows.

    Raises:
        ValueError: unknown view, or ``fraction`` outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    fns = [get_view(v) for v in views]
    rng = np.random.default_rng(seed)
    out_texts: list[str] = []
    out_rows: list[int] = []
    for fn in fns:
        rows = np.arange(len(texts)) if fraction >= 1 else np.flatnonzero(rng.random(len(texts)) < fraction)
        for i in rows.tolist():
            v = fn(texts[i])
            if v.strip() and not _same(v, texts[i]):
                out_texts.append(v)
                out_rows.append(i)
    return out_texts, np.asarray(out_rows, dtype=np.int64)


class TrainingRows(NamedTuple):
    """The rows the fine-tuning loop sees: the train split, then its view-augmented copies."""

    texts: list[str]
    targets: np.ndarray  # (n, L) 0/1 float32
    report: dict[str, int]  # {"rows": train-split rows, "view_rows": added views}


def training_rows(
    texts: Sequence[str], targets: np.ndarray, views: Sequence[str], fraction: float, seed: int
) -> TrainingRows:
    """The train split plus ``augment_rows``'s views of it, each view carrying its row's targets.

    Args:
        texts: the n training texts; targets: (n, L) 0/1.
        views, fraction, seed: as ``augment_rows`` (no views: the split unchanged).

    Raises:
        ValueError: as ``augment_rows``.
    """
    texts = list(texts)
    y = np.asarray(targets, dtype=np.float32)
    report = {"rows": len(texts), "view_rows": 0}
    if views:
        add, rows = augment_rows(texts, views, fraction, seed)
        texts += add
        y = np.concatenate([y, y[rows]]) if len(rows) else y
        report["view_rows"] = len(add)
    return TrainingRows(texts, y, report)
