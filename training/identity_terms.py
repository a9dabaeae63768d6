"""The identity-term list: words that name who a person is, never what an ad offers.

One versioned list (``TERMS_VERSION``, logged with every identity audit) serves the identity audit
(``training/identity_audit.py``) and the training-time mitigations (``training/counterfactual.py``).
Each entry is an ``IdentityTerm``: its slot text (the word put into the audit's templates), its group,
and the surface forms matched in ad text (whole words, any case). Groups:

=================  ==================================================================================
``ethnicity``      Asian, Black, White, Latina, Hispanic, African American, Middle Eastern, ...
``nationality``    Chinese, Korean, Thai, Russian, Mexican, French, ... (also languages' adjectives)
``skin_colour``    skin-colour words used as identity (ebony, dark-skinned, light-skinned, ...)
``body``           body words used as identity (plus-size, tall, curvy)
``language``       "<language>-speaking" and language names that are no nationality (Tagalog, Mandarin)
=================  ==================================================================================

``NEUTRAL_FILLERS`` are descriptors with no identity ("experienced", "local", "reliable", "professional"):
the audit's reference slot, and the pool the counterfactual augmentation draws from beside the terms.

What the list leaves out on purpose (the trafficking label's real signals stay learnable, see
docs/identity.md): youth words (young, teen, fresh, new, girl, petite, barely legal), movement words
(new in town, just arrived, visiting, travelling, passing through), control words (daddy,
management, must be, no independent), and offer euphemisms (exotic). "Petite" is a body word but also
a youth signal in trafficking indicator lists, so it is not an identity term here.

Terms with ``held_out=True`` are audit-only: the mitigations never see them, so the audit measures
whether a mitigation generalises beyond the words it was trained on (Garg et al. 2019, "Counterfactual
Fairness in Text Classification through Robustness", AIES, held-out identity tokens).

Ambiguous surface forms (colours "black", "white"; "polish"; "french fries") are matched as written:
a counterfactual copy of "black leather couch" becomes "Korean leather couch" with the same benign
label, which is harmless for the mitigation (an identity word in one more benign row).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from model.identity_mask import word_pattern

TERMS_VERSION = "identity-terms-1"
GROUPS = ("ethnicity", "nationality", "skin_colour", "body", "language")


@dataclass(frozen=True)
class IdentityTerm:
    """One identity term.

    Attributes:
        text: the word as put into a template slot and into counterfactual copies ("Asian").
        group: one of ``GROUPS``.
        forms: lower-case surface forms matched in ad text as whole words (``text`` included).
        held_out: audit only; never used by a mitigation.
    """

    text: str
    group: str
    forms: tuple[str, ...]
    held_out: bool = False

    @property
    def key(self) -> str:
        """Metric-key slug: lower case, non-alphanumerics as ``_`` ("African American" -> african_american)."""
        return re.sub(r"[^a-z0-9]+", "_", self.text.lower()).strip("_")


def _t(text: str, group: str, *extra: str, held_out: bool = False) -> IdentityTerm:
    return IdentityTerm(text, group, (text.lower(), *extra), held_out)


def _lang(name: str, *extra: str, held_out: bool = False) -> IdentityTerm:
    n = name.lower()
    return IdentityTerm(f"{name}-speaking", "language", (f"{n}-speaking", f"{n} speaking", *extra), held_out)


TERMS: tuple[IdentityTerm, ...] = (
    # ethnicity
    _t("Asian", "ethnicity", "asain"),
    _t("Black", "ethnicity"),
    _t("White", "ethnicity"),
    _t("Latina", "ethnicity"),
    _t("Latino", "ethnicity"),
    _t("Hispanic", "ethnicity"),
    _t("African American", "ethnicity", "african-american"),
    _t("African", "ethnicity"),
    _t("Native American", "ethnicity", "native-american"),
    _t("Middle Eastern", "ethnicity", "middle-eastern"),
    _t("Arab", "ethnicity"),
    _t("Mixed-race", "ethnicity", "mixed race", "biracial"),
    _t("Pacific Islander", "ethnicity", held_out=True),
    # nationality
    _t("Chinese", "nationality"),
    _t("Japanese", "nationality"),
    _t("Korean", "nationality"),
    _t("Thai", "nationality"),
    _t("Vietnamese", "nationality"),
    _t("Filipina", "nationality", "pinay"),
    _t("Filipino", "nationality"),
    _t("Indian", "nationality"),
    _t("Russian", "nationality"),
    _t("Ukrainian", "nationality", held_out=True),
    _t("Polish", "nationality"),
    _t("French", "nationality"),
    _t("Italian", "nationality"),
    _t("German", "nationality"),
    _t("Irish", "nationality"),
    _t("Swedish", "nationality", held_out=True),
    _t("Mexican", "nationality"),
    _t("Cuban", "nationality"),
    _t("Puerto Rican", "nationality", "puerto-rican"),
    _t("Dominican", "nationality"),
    _t("Colombian", "nationality"),
    _t("Peruvian", "nationality", held_out=True),
    _t("Brazilian", "nationality"),
    _t("Jamaican", "nationality"),
    _t("Haitian", "nationality"),
    _t("Nigerian", "nationality"),
    _t("Ethiopian", "nationality", held_out=True),
    _t("Persian", "nationality", "iranian"),
    _t("Turkish", "nationality"),
    _t("American", "nationality"),
    _t("Canadian", "nationality"),
    _t("British", "nationality"),
    # skin colour used as identity
    _t("ebony", "skin_colour"),
    _t("dark-skinned", "skin_colour", "dark skinned"),
    _t("light-skinned", "skin_colour", "light skinned"),
    _t("brown-skinned", "skin_colour", "brown skinned"),
    _t("fair-skinned", "skin_colour", "fair skinned", held_out=True),
    # body words used as identity
    _t("plus-size", "body", "plus size"),
    _t("tall", "body"),
    _t("curvy", "body"),
    # languages
    _lang("Spanish", "spanish"),
    _lang("Mandarin", "mandarin"),
    _lang("Cantonese", "cantonese", held_out=True),
    _lang("Arabic", "arabic"),
    _lang("Portuguese", "portuguese"),
    _lang("Tagalog", "tagalog", held_out=True),
    _lang("Hindi", "hindi"),
    _lang("English", "english"),
)

NEUTRAL_FILLERS: tuple[str, ...] = ("experienced", "local", "reliable", "professional")


def mitigation_terms(terms: Sequence[IdentityTerm] = TERMS) -> list[IdentityTerm]:
    """The terms a mitigation may use: every term that is not ``held_out``."""
    return [t for t in terms if not t.held_out]


def term_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """One compiled regex matching any of ``words`` as a whole word (any case; a space and a hyphen
    match each other; longer words win). Cached per word tuple. The same matcher as the served mask
    (``model.identity_mask.word_pattern``), so training and inference find the same words."""
    return word_pattern(words)


def forms_of(terms: Sequence[IdentityTerm]) -> list[str]:
    """Every surface form of ``terms``."""
    return [f for t in terms for f in t.forms]


def mentions(texts: Sequence[str], term: IdentityTerm) -> list[bool]:
    """Per text: does it name ``term`` (any of its forms, whole word, any case)?"""
    p = term_pattern(term.forms)
    return [p.search(t) is not None for t in texts]
