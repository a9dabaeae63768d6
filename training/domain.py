"""Training against the source shortcut: source-balanced sampling and group DRO.

- ``balanced_sample``: resample the training rows so that every source carries the same expected
  number of rows per epoch (small sources repeated, large ones thinned), sampling with replacement.
- ``GroupDRO``: online group distributionally robust optimisation (Sagawa et al. 2020, "Distributionally
  robust neural networks for group shifts", ICLR; Algorithm 1): the loss is a weighted sum of
  per-group mean losses whose weights ``q`` follow an exponentiated-gradient ascent on the groups'
  losses, so the worst group (e.g. short stripped views of adult ads, or Craigslist negatives) drives
  the update. Groups are ``group_keys``: source x view/original x any-positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from training.views import augment_rows


def balanced_sample(sources: Sequence[str], seed: int, n: int | None = None) -> np.ndarray:
    """Row indices (with replacement) in which each source is drawn with equal probability.

    Args:
        sources: (N,) source of each training row.
        n: rows to draw (default N, so an epoch keeps its length).

    Returns:
        (n,) int64 indices into the rows, sorted (the loop shuffles).

    Raises:
        ValueError: no rows.
    """
    src = np.asarray(list(sources))
    if src.size == 0:
        raise ValueError("no rows to sample")
    names, inv, counts = np.unique(src, return_inverse=True, return_counts=True)
    p = 1.0 / (len(names) * counts[inv])
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(src.size, size=n or src.size, replace=True, p=p / p.sum()))


def group_keys(
    sources: Sequence[str] | None, is_view: Sequence[bool] | None, targets: np.ndarray
) -> np.ndarray:
    """Group id per row for group DRO: (source, view or original text, any label positive).

    Returns:
        (n,) int64 ids in 0..G-1 (G = number of distinct combinations present).
    """
    n = len(targets)
    src = list(sources) if sources is not None else [""] * n
    view = list(is_view) if is_view is not None else [False] * n
    pos = (np.asarray(targets).sum(axis=1) > 0).tolist()
    keys = [f"{s}|{int(v)}|{int(p)}" for s, v, p in zip(src, view, pos, strict=True)]
    _, ids = np.unique(np.asarray(keys), return_inverse=True)
    return ids.astype(np.int64)


class GroupDRO:
    """Online group DRO weights (Sagawa et al. 2020, Algorithm 1).

    ``loss(per_row_loss (B,), group_ids (B,))`` returns ``sum_g q_g * mean loss of group g in the
    batch`` after the update ``q_g <- q_g * exp(eta * loss_g)`` (groups absent from the batch keep
    their weight), renormalised. ``q`` is saved in checkpoints through ``state`` / ``load_state``.
    """

    def __init__(self, n_groups: int, eta: float = 0.01):
        if n_groups < 1:
            raise ValueError("n_groups must be >= 1")
        self.eta = eta
        self.q = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64)

    def loss(self, per_row_loss: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """The robust loss for one batch (differentiable in ``per_row_loss``)."""
        g = self.q.numel()
        counts = torch.bincount(group_ids, minlength=g).to(per_row_loss.dtype)
        sums = torch.zeros(g, dtype=per_row_loss.dtype).scatter_add(0, group_ids, per_row_loss)
        present = counts > 0
        means = torch.where(present, sums / counts.clamp(min=1), torch.zeros_like(sums))
        with torch.no_grad():
            step = torch.where(
                present, self.eta * means.detach().double(), torch.zeros(g, dtype=torch.float64)
            )
            self.q = self.q * torch.exp(step)
            self.q = self.q / self.q.sum()
        w = self.q.to(per_row_loss.dtype) * present
        return (w * means).sum() / w.sum().clamp(min=1e-12)

    def state(self) -> list[float]:
        return self.q.tolist()

    def load_state(self, q: list[float]) -> None:
        self.q = torch.tensor(q, dtype=torch.float64)


@dataclass
class TrainingRows:
    """The rows the fine-tuning loop sees: the train split, plus view-augmented copies, optionally
    resampled source-balanced. ``group_ids`` are group DRO's groups (``group_keys``)."""

    texts: list[str]
    targets: np.ndarray  # (n, L) 0/1 float32
    sources: list[str] | None
    is_view: np.ndarray  # (n,) bool
    group_ids: np.ndarray  # (n,) int64
    report: dict = field(default_factory=dict)
    origin: np.ndarray | None = None  # (n,) int64: the train-split row each row was made from


def training_rows(
    texts: Sequence[str],
    targets: np.ndarray,
    sources: Sequence[str] | None,
    augment_views: Sequence[str],
    augment_fraction: float,
    source_balanced: bool,
    seed: int,
) -> TrainingRows:
    """Build the loop's training rows (see ``TrainingRows``): views from ``training.views.augment_rows``
    carry their row's targets and source; ``source_balanced`` resamples all rows (views included) with
    ``balanced_sample`` (needs sources).

    Raises:
        ValueError: unknown view names; ``source_balanced`` without sources.
    """
    texts = list(texts)
    y = np.asarray(targets, dtype=np.float32)
    src = list(sources) if sources is not None else None
    view = np.zeros(len(texts), dtype=bool)
    origin = np.arange(len(texts), dtype=np.int64)
    report: dict = {"rows": len(texts), "view_rows": 0}
    if augment_views:
        add, rows = augment_rows(texts, augment_views, augment_fraction, seed)
        texts += add
        y = np.concatenate([y, y[rows]]) if len(rows) else y
        src = src + [src[i] for i in rows.tolist()] if src is not None else None
        view = np.concatenate([view, np.ones(len(add), dtype=bool)])
        origin = np.concatenate([origin, np.asarray(rows, dtype=np.int64)])
        report["view_rows"] = len(add)
    if source_balanced:
        if src is None:
            raise ValueError("source-balanced sampling needs a source column (data.source_column)")
        idx = balanced_sample(src, seed)
        texts = [texts[i] for i in idx.tolist()]
        y, view, origin = y[idx], view[idx], origin[idx]
        src = [src[i] for i in idx.tolist()]
        report["balanced_rows"] = len(idx)
    return TrainingRows(texts, y, src, view, group_keys(src, view, y), report, origin)
