"""PNG plots logged with each run: precision-recall curves and a reliability diagram (matplotlib,
curves from scikit-learn)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402


def pr_curves(probs: dict[str, np.ndarray], targets: np.ndarray, labels, path: Path, title: str) -> Path:
    """One panel per label; one curve per model in ``probs`` (name -> (n, L) scores)."""
    fig, axes = plt.subplots(1, len(labels), figsize=(4.5 * len(labels), 4), squeeze=False)
    for j, lab in enumerate(labels):
        ax = axes[0, j]
        if 0 < targets[:, j].sum() < len(targets):
            for name, p in probs.items():
                prec, rec, _ = precision_recall_curve(targets[:, j], p[:, j])
                ax.plot(rec, prec, label=name)
        ax.set(title=lab, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def reliability_diagram(probs: np.ndarray, targets: np.ndarray, labels, path: Path, title: str) -> Path:
    """Observed positive rate vs mean calibrated probability in 10 bins, per label."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for j, lab in enumerate(labels):
        if 0 < targets[:, j].sum() < len(targets):
            frac, mean = calibration_curve(targets[:, j], probs[:, j], n_bins=10, strategy="uniform")
            ax.plot(mean, frac, marker="o", label=lab)
    ax.set(
        xlabel="calibrated probability", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
