"""Text -> token ids, identical for training and inference: normalise, then tokenise with truncation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.identity_mask import IdentityMask
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


class TextEncoder:
    """Normalise and tokenise texts for a model with window ``max_length`` (tokens).

    Args:
        tokenizer: a Hugging Face fast tokenizer (``PreTrainedTokenizerFast``-like; needs ``encodings``).
        max_length: model window in tokens, special tokens included; a longer text keeps its head
            (only its first ``max_length * CHARS_PER_TOKEN_CAP`` characters are ever read).
        identity_mask: the artifact's identity-term mask (``model/identity_mask.py``), applied to
            every text before normalising; None: texts unchanged.
    """

    def __init__(self, tokenizer, max_length: int, identity_mask: IdentityMask | None = None):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.identity_mask = identity_mask
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Encode ``texts`` (a sequence of str). Raises TypeError on a non-str item."""
        cap = self.max_length * CHARS_PER_TOKEN_CAP
        cleaned, cut = [], []
        mask = self.identity_mask
        for t in texts:
            n = normalize_text(mask.apply_one(t) if mask is not None else t)
            cut.append(len(n) > cap)
            cleaned.append(n[:cap])
        if not cleaned:
            return Encoded([], [])
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
