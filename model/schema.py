"""Label schema: the ordered label names and the problem type of a model."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class ProblemType(str, Enum):
    """How labels relate. ``multi_label``: independent sigmoids; ``multi_class``: one softmax over
    mutually exclusive classes; ``binary``: one sigmoid for a single label."""

    MULTI_LABEL = "multi_label"
    MULTI_CLASS = "multi_class"
    BINARY = "binary"


class LabelSchema(BaseModel):
    """Ordered label names and the problem type.

    The order is the column order of logits, probabilities, thresholds and metrics everywhere.

    Raises:
        pydantic.ValidationError: empty or duplicate names, or a ``binary`` schema without exactly
            one label, or a ``multi_class`` schema with fewer than two.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: tuple[str, ...]
    problem_type: ProblemType = ProblemType.MULTI_LABEL
    benign_label: str | None = None  # multi_class only: the class that never flags an ad

    @field_validator("labels")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("a label schema needs at least one label")
        bad = [n for n in v if not n or n != n.strip()]
        if bad:
            raise ValueError(f"label names must be non-empty with no surrounding space: {bad!r}")
        dup = sorted({n for n in v if v.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate label names: {dup}")
        return v

    @model_validator(mode="after")
    def _arity(self) -> LabelSchema:
        if self.problem_type is ProblemType.BINARY and len(self.labels) != 1:
            raise ValueError("a binary schema has exactly one label (the positive class)")
        if self.problem_type is ProblemType.MULTI_CLASS and len(self.labels) < 2:
            raise ValueError("a multi_class schema needs at least two classes")
        if self.benign_label is not None and self.benign_label not in self.labels:
            raise ValueError(f"benign_label {self.benign_label!r} is not one of {list(self.labels)}")
        return self

    @property
    def num_labels(self) -> int:
        """Number of output columns (logits) of the model."""
        return len(self.labels)

    def index(self, name: str) -> int:
        """Column index of ``name``. Raises KeyError for an unknown label."""
        try:
            return self.labels.index(name)
        except ValueError:
            raise KeyError(f"unknown label {name!r}; known: {list(self.labels)}") from None
