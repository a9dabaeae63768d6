"""Weight-space ensembling of the fine-tuned encoder with the pretrained one (WiSE-FT).

Wortsman et al. 2022, "Robust fine-tuning of zero-shot models" (CVPR): interpolating the weights of a
fine-tuned model with those of its pretrained start, ``theta(alpha) = (1 - alpha) * theta_0 + alpha *
theta_1``, keeps much of the fine-tuned model's in-distribution accuracy while recovering the
pretrained model's robustness to distribution shift. Here ``theta`` is the encoder (embeddings and
transformer layers, the parameters the base checkpoint provides); the new head (pooler, classifier)
keeps its fine-tuned weights, because the base model has none to mix with.

Fine-tuning on risky-ads-v1 teaches the encoder one site's style (issue 10); pulling it back towards
the sentence-embedding model it started from is a way to keep what that model knows about language
the site never used. The mixing weight is chosen on the validation split only
(:func:`choose_alpha`): the smallest ``alpha`` of a grid whose validation macro AP stays within a
tolerance of the fine-tuned model's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from training.loop import HEAD_PREFIXES


def encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s encoder tensors (every state entry outside the head).

    Call it on the freshly built model, before fine-tuning: that is ``theta_0``.
    """
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(HEAD_PREFIXES) and v.is_floating_point()
    }


@torch.no_grad()
def interpolate(
    model: torch.nn.Module,
    pretrained: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, torch.Tensor],
    alpha: float,
) -> None:
    """Set ``model``'s encoder to ``(1 - alpha) * pretrained + alpha * finetuned`` in place.

    Args:
        pretrained, finetuned: :func:`encoder_state` of the model before and after fine-tuning.
        alpha: in [0, 1]; 1 restores the fine-tuned encoder, 0 the pretrained one.

    An embedding matrix that fine-tuning grew (tokens added to the vocabulary) is mixed on the rows
    both have; the added rows keep their fine-tuned values.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or the two states do not have the same keys.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if set(pretrained) != set(finetuned):
        raise ValueError("the pretrained and fine-tuned encoder states have different tensors")
    params = model.state_dict()
    for k, ft in finetuned.items():
        pre = pretrained[k]
        mixed = ft.clone()
        rows = min(pre.shape[0], ft.shape[0]) if pre.ndim else None
        if rows is None:
            mixed = (1 - alpha) * pre + alpha * ft
        else:
            mixed[:rows] = (1 - alpha) * pre[:rows] + alpha * ft[:rows]
        params[k].copy_(mixed)


@dataclass
class WiseFtChoice:
    """What :func:`choose_alpha` measured: validation macro AP per alpha and the alpha kept."""

    alpha: float
    scores: dict[float, float] = field(default_factory=dict)
    tolerance: float = 0.0

    def metrics(self) -> dict[str, float]:
        """MLflow metrics ``wise_ft.alpha`` and ``wise_ft.validation_macro_ap.a<alpha>``."""
        out = {"wise_ft.alpha": self.alpha}
        out |= {f"wise_ft.validation_macro_ap.a{a:.2f}": s for a, s in self.scores.items()}
        return out


def choose_alpha(
    model: torch.nn.Module,
    pretrained: Mapping[str, torch.Tensor],
    validation_score: Callable[[], float],
    grid: Sequence[float],
    tolerance: float,
) -> WiseFtChoice:
    """Keep the smallest ``alpha`` in ``grid`` whose validation score is within ``tolerance`` of the
    fine-tuned model's (``alpha`` = 1), and leave ``model`` interpolated at it.

    Args:
        model: the fine-tuned model (its encoder is ``theta_1``).
        pretrained: :func:`encoder_state` taken before fine-tuning.
        validation_score: scores ``model`` as it stands on the validation split (higher is better,
            e.g. macro AP); called once per grid point and once for ``alpha`` = 1.
        grid: candidate alphas in (0, 1).
        tolerance: largest allowed drop of the score below the fine-tuned model's.

    Returns:
        the choice and every score measured (a score that is NaN never qualifies).
    """
    finetuned = encoder_state(model)
    scores = {1.0: validation_score()}
    floor = scores[1.0] - tolerance
    best = 1.0
    for a in sorted({float(a) for a in grid if 0.0 <= a < 1.0}, reverse=True):
        interpolate(model, pretrained, finetuned, a)
        scores[a] = validation_score()
        if scores[a] >= floor:  # NaN compares False
            best = a
    interpolate(model, pretrained, finetuned, best)
    return WiseFtChoice(best, dict(sorted(scores.items())), tolerance)
