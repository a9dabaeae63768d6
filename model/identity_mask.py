"""Identity-term masking as part of the model: the same text transform in training and at inference.

A model trained with ``identity.mask`` (``training/counterfactual.py``, docs/identity.md)
never saw an identity word (an ethnicity, nationality, skin-colour or body word used as identity, a
language) in fine-tuning: each was deleted (``placeholder`` "", the default) or replaced by a fixed
placeholder such as ``[MASK]``. It must be served the same way, or it
meets words at inference it never learnt to weigh. So the transform lives here, below training and
serve: the artifact records it (``adrisk.json`` ``identity_mask``: the term list's version, the
placeholder and every surface form), ``TextEncoder`` applies it before tokenising and ``Predictor``
before the TF-IDF blend, so ``adrisk predict``, ``adrisk score``, the batch job and the server all
mask alike. The record carries the forms themselves, so a later edit of the term list never changes
what an existing model is served. Artifacts without the record (every model trained before this, or
without masking) are served unchanged.

Matching (``word_pattern``): whole words, any case, a space and a hyphen interchangeable, longest
form first ("african american" before "african"). Masking is idempotent: the placeholder names no term.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Deletion: where most rows naming a term are escort ads, any fixed token put in the terms' place
# would itself be learnt as their evidence (docs/identity.md).
DEFAULT_PLACEHOLDER = ""


@lru_cache(maxsize=32)
def _pattern(forms: tuple[str, ...]) -> re.Pattern[str]:
    alts = {re.escape(f).replace(r"\ ", r"[\s-]").replace(r"\-", r"[\s-]") for f in forms}
    ordered = sorted(alts, key=lambda a: (-len(a), a))  # longest first: "african american" wins
    return re.compile(r"(?<!\w)(?:" + "|".join(ordered) + r")(?!\w)", re.IGNORECASE)


def word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """One compiled regex matching any of ``words`` as a whole word (any case; a space and a hyphen
    match each other; longer words win). Cached per word tuple.

    Raises:
        ValueError: no words, or an empty word.
    """
    forms = tuple(w.lower() for w in words)
    if not forms or not all(f.strip() for f in forms):
        raise ValueError("word_pattern needs at least one non-empty word")
    return _pattern(forms)


class IdentityMask(BaseModel):
    """``adrisk.json`` ``identity_mask``: what the model's texts had masked in training, and so at inference.

    Attributes:
        terms_version: the identity term list's version (``training/identity_terms.py``), for people.
        placeholder: what each form is replaced by: "" (default) deletes it; a token such as the BERT
            mask token ``[MASK]`` keeps a mark where it was.
        forms: lower-case surface forms, matched as whole words (see module docstring).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    terms_version: str = ""
    placeholder: str = DEFAULT_PLACEHOLDER
    forms: tuple[str, ...] = Field(min_length=1)

    @field_validator("forms")
    @classmethod
    def _lower_case(cls, forms: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f.lower() for f in forms)

    @model_validator(mode="after")
    def _placeholder_is_no_term(self) -> IdentityMask:
        if self.placeholder != self.placeholder.strip():
            raise ValueError(
                "identity_mask.placeholder must be empty (delete) or a token without edge spaces"
            )
        if word_pattern(self.forms).search(self.placeholder):
            raise ValueError(
                "identity_mask.placeholder names an identity term (masking would not be idempotent)"
            )
        return self

    @property
    def pattern(self) -> re.Pattern[str]:
        """The compiled ``word_pattern`` of ``forms`` (compiled once per form list)."""
        return word_pattern(self.forms)

    def apply_one(self, text: str) -> str:
        """``text`` with every form replaced by the placeholder."""
        return self.pattern.sub(self.placeholder, text)

    def apply(self, texts: Sequence[str]) -> list[str]:
        """``[apply_one(t) for t in texts]``, in order (same length)."""
        p, r = self.pattern, self.placeholder
        return [p.sub(r, t) for t in texts]
