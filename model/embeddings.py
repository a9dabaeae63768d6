"""Sentence embeddings of a model artifact: the fine-tuned encoder's mean-pooled last hidden state.

What drift monitoring (``monitor/drift.py``) compares between a reference and a current window: the
representation the model's own classifier head reads, so a shift the model "sees" shows here even
when no word changes frequency. Mean pooling over the attention mask is the sentence-transformers
pooling of all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019). Always computed with
the torch weights (``model.safetensors``) whatever runtime scores the texts: ONNX variants export the
logits only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from model.encoding import TextEncoder, length_sorted_batches
from model.predictor import DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, check_texts


class SentenceEmbedder:
    """Mean-pooled, L2-normalised last hidden states of an artifact's encoder.

    Args:
        directory: a model artifact directory (``model.artifact``); its encoder weights are loaded
            without the classification head.
        encoder: the artifact's ``TextEncoder`` (the same normalisation and truncation as scoring).
        num_threads: torch intra-op threads for the forward passes (None: torch's current setting).

    Raises:
        ArtifactError: the weights cannot be loaded.
    """

    def __init__(
        self, directory: str | os.PathLike[str], encoder: TextEncoder, num_threads: int | None = None
    ):
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        from model.artifact import ArtifactError

        self._torch = torch
        self.encoder = encoder
        self.num_threads = num_threads
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the classification head's weights are unused here, by design
        try:
            self.model = AutoModel.from_pretrained(str(directory), local_files_only=True)
        except Exception as e:  # truncated weights, a config that does not fit them
            raise ArtifactError(f"{directory}: cannot load the encoder ({type(e).__name__})") from e
        finally:
            hf_logging.set_verbosity(verbosity)
        self.model.eval()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in input order.

        Returns:
            (n, hidden_size) float32 rows of unit L2 norm (all zeros for an empty sequence).

        Raises:
            TypeError: an item is not a str.
        """
        torch = self._torch
        texts = check_texts(texts)
        enc = self.encoder.encode(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        previous = torch.get_num_threads()
        if self.num_threads and self.num_threads != previous:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                for idx in length_sorted_batches(enc.lengths(), DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS):
                    ids, mask = self.encoder.pad([enc.input_ids[i] for i in idx])
                    m = torch.from_numpy(mask)
                    hidden = self.model(input_ids=torch.from_numpy(ids), attention_mask=m).last_hidden_state
                    w = m.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                    pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)  # (B, H)
                    out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)
        return out
