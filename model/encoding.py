"""Text -> token ids, identical for training and inference: normalise, then tokenise with truncation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.normalize import normalize_text

# Text longer than this many characters per model position is cut before tokenising (the part cut
# could never reach the model window); the result is still reported as truncated.
CHARS_PER_TOKEN_CAP = 24


@dataclass(frozen=True)
class Encoded:
    """Token ids of a list of texts, unpadded.

    ``input_ids[i]`` is a list of ints (length <= max_length, special tokens included);
    ``truncated[i]`` says the text did not fit the model window.
    """

    input_ids: list[list[int]]
    truncated: list[bool]

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def window_positions(n: int, max_length: int, tail_tokens: int) -> np.ndarray:
    """Token positions kept of an ``n``-token sequence ``[first special] body [last special]`` in a
    window of ``max_length``: all of them when it fits, else the first special, the head of the body,
    its last ``tail_tokens`` tokens and the last special ("head+tail" truncation, Sun et al., "How to
    Fine-Tune BERT for Text Classification?", CCL 2019). ``tail_tokens=0`` is plain head truncation.

    Returns:
        (min(n, max_length),) int64 ascending positions.
    """
    if n <= max_length:
        return np.arange(n, dtype=np.int64)
    body = max_length - 2
    tail = min(int(tail_tokens), body)
    return np.r_[0 : 1 + body - tail, n - 1 - tail : n].astype(np.int64)


class TextEncoder:
    """Normalise and tokenise texts for a model with window ``max_length`` (tokens).

    Args:
        tokenizer: a Hugging Face fast tokenizer (``PreTrainedTokenizerFast``-like; needs ``encodings``).
        max_length: model window in tokens, special tokens included.
        tail_tokens: for a text longer than the window, keep its last ``tail_tokens`` tokens after its
            head (``window_positions``); 0 keeps the head only. Only the first
            ``max_length * CHARS_PER_TOKEN_CAP`` characters are ever read, so "tail" is the tail of those.
    """

    def __init__(self, tokenizer, max_length: int, tail_tokens: int = 0):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.tail_tokens = int(tail_tokens)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Encode ``texts`` (a sequence of str). Raises TypeError on a non-str item."""
        cap = self.max_length * CHARS_PER_TOKEN_CAP
        cleaned, cut = [], []
        for t in texts:
            n = normalize_text(t)
            cut.append(len(n) > cap)
            cleaned.append(n[:cap])
        if not cleaned:
            return Encoded([], [])
        if self.tail_tokens:
            enc = self.tokenizer(cleaned, truncation=False, add_special_tokens=True, verbose=False)
            ids, truncated = [], []
            for c, x in zip(cut, enc["input_ids"], strict=True):
                keep = window_positions(len(x), self.max_length, self.tail_tokens)
                ids.append([x[i] for i in keep] if len(keep) < len(x) else x)
                truncated.append(c or len(keep) < len(x))
            return Encoded(ids, truncated)
        enc = self.tokenizer(cleaned, truncation=True, max_length=self.max_length, add_special_tokens=True)
        ids = enc["input_ids"]
        truncated = [c or bool(e.overflowing) for c, e in zip(cut, enc.encodings, strict=True)]
        return Encoded(ids, truncated)

    def pad(self, batch: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad a batch of id lists to its longest: (B, T) int64 input_ids and attention_mask."""
        width = max(len(x) for x in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return ids, mask


def length_sorted_batches(
    lengths: np.ndarray, batch_size: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Split row indices into batches of similar length (longest first) for dynamic padding.

    Args:
        lengths: (n,) token counts.
        batch_size: most rows per batch.
        max_tokens: if set, most padded tokens (rows x longest) per batch.

    Returns:
        A list of index arrays covering every row exactly once.
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        new_max = max(cur_max, int(lengths[i]))
        if cur and (len(cur) >= batch_size or (max_tokens and new_max * (len(cur) + 1) > max_tokens)):
            batches.append(np.asarray(cur))
            cur, new_max = [], int(lengths[i])
        cur.append(int(i))
        cur_max = new_max
    if cur:
        batches.append(np.asarray(cur))
    return batches
