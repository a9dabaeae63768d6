"""An auxiliary ordinal target for fine-tuning (``train.ordinal_weight`` with ``data.ordinal_column``).

Some labels are a threshold on a count that the data keeps: risky-ads-v1's ``trafficking_indicators``
is "at least 3 of the analysts' red-flag groups", and ``red_flags_text`` (0-7) keeps the count. The
count says more than the label (a 2 is nearer the boundary than a 0), so the loop can learn it as a
second task from the same pooled representation: an ordinal head predicts ``P(count > k)`` for
``k = 0 .. K-2`` and adds its loss, weighted, to the labels' loss. The head is training-only: it is
not saved in the artifact, and serving is unchanged.

Method: the cumulative binary decomposition of ordinal regression (Niu et al., "Ordinal Regression
with Multiple Output CNN", CVPR 2016; the ordinal regression network the issue names, ORNN, Wang et al.
2019) with CORAL's rank-consistent parametrisation (one shared weight vector and K-1 ordered biases:
Cao, Mirjalili & Raschka, "Rank consistent ordinal regression for neural networks", Pattern
Recognition Letters 2020). Rows whose count is missing (NaN: other sources, view-augmented copies
whose text no longer holds the original flags) contribute nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["OrdinalHead", "ordinal_levels"]


def ordinal_levels(values: np.ndarray) -> int:
    """Number of levels K of an ordinal target: max + 1 over the finite values.

    Args:
        values: (n,) float; NaN where a row has no value.

    Returns:
        K >= 2.

    Raises:
        ValueError: no finite value, a negative or non-integer value, or a single level (K < 2:
            nothing to learn).
    """
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise ValueError("the ordinal column has no values in the training rows")
    if (finite < 0).any() or (finite != np.round(finite)).any():
        raise ValueError("the ordinal column must hold non-negative integers (counts or ranks)")
    k = int(finite.max()) + 1
    if k < 2:
        raise ValueError("the ordinal column has a single level; nothing to learn")
    return k


class OrdinalHead(torch.nn.Module):
    """A CORAL head on the classifier's input: ``(B, H) -> (B, K-1)`` logits of ``P(y > k)``.

    ``attach(model)`` registers a forward pre-hook on ``model.classifier`` (every HF
    ``...ForSequenceClassification`` encoder has one) that keeps its input: the pooled, dropped-out
    representation for BERT-style models, the sequence output (first token taken) for RoBERTa-style
    heads. ``loss(y)`` is then the mean BCE over rows with a finite ``y`` and the K-1 cut points.
    """

    def __init__(self, hidden_size: int, levels: int):
        super().__init__()
        if levels < 2:
            raise ValueError("an ordinal head needs at least 2 levels")
        self.levels = int(levels)
        self.weight = torch.nn.Linear(int(hidden_size), 1, bias=False)
        # ordered initial cut points: P(y > k) starts decreasing in k
        self.bias = torch.nn.Parameter(torch.linspace(1.0, -1.0, self.levels - 1))
        self._features: torch.Tensor | None = None
        self._handle: Any = None

    def attach(self, model: Any) -> OrdinalHead:
        """Start capturing ``model.classifier``'s input on every forward pass.

        Raises:
            ValueError: the model has no ``classifier`` module.
        """
        head = getattr(model, "classifier", None)
        if not isinstance(head, torch.nn.Module):
            raise ValueError("the ordinal target needs a model with a `classifier` module (HF encoders)")

        def keep(_module, args):
            x = args[0]
            self._features = x[:, 0] if x.ndim == 3 else x

        self._handle = head.register_forward_pre_hook(keep)
        return self

    def detach(self) -> None:
        """Stop capturing (the hook is removed; the model is as before)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._features = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B, K-1) cumulative logits."""
        return self.weight(features.float()) + self.bias

    def loss(self, y: np.ndarray) -> torch.Tensor:
        """Mean BCE of the last captured batch against ordinal values ``y`` ((B,) float, NaN = none).

        Returns a zero (with a graph) when no row has a value, so the caller can always add it.

        Raises:
            RuntimeError: no forward pass of the attached model since the last loss.
        """
        if self._features is None:
            raise RuntimeError("OrdinalHead.loss before a forward pass of the attached model")
        z = self(self._features)
        self._features = None
        y_t = torch.as_tensor(np.asarray(y, dtype=np.float32))
        valid = torch.isfinite(y_t)
        if not bool(valid.any()):
            return z.sum() * 0.0
        cuts = torch.arange(self.levels - 1, dtype=torch.float32)
        target = (y_t[valid, None] > cuts[None, :]).float()  # (b, K-1): 1 where y > k
        return torch.nn.functional.binary_cross_entropy_with_logits(z[valid], target)
