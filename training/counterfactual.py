"""Training that does not learn identity words as evidence: two data transforms of the training rows
(docs/identity.md), both off by default, switched by ``identity.cda`` / ``identity.mask``.

Both act on the splits before anything is fitted (``prepare_bundle``), so the fine-tuning rows (and
their style-stripped views), the TF-IDF baseline and its blend all see the same text. Only the terms
a mitigation may use take part (``identity_terms.mitigation_terms``): held-out terms stay for the
audit, which so measures whether a mitigation generalises beyond its word list.

- ``cda``: counterfactual data augmentation (Garg et al. 2019, "Counterfactual Fairness in Text
  Classification through Robustness", AIES; Dixon et al. 2018) with substitution (Maudslay et al.
  2019, "It's All in the Name", EMNLP). In the **train split only**, a row of any label that names an
  identity term or a neutral filler ("experienced", "local", ...) has each named word replaced by a
  different word drawn uniformly from the pool (terms and fillers), labels kept: with probability
  ``cda_substitution`` in place, and ``cda_copies`` more times as appended rows. Fillers are in the
  pool because escort ads name ethnicities and benign ads almost never do: swapping terms only among
  themselves would keep "any identity word" as evidence. Benign rows that name no term are rarely
  touched that way, so a share ``cda_insert_fraction`` of them also gains one appended copy with an
  identity term inserted (``INSERT_FRAMES``), so that every term is seen on benign rows too.
  Seeded: the same rows, seed and config give the same texts.
- ``mask``: every identity term of the train, validation and test splits is deleted (or becomes
  ``identity.mask_placeholder``: a fixed token would itself become the terms' evidence, since most
  rows naming a term are escort ads);
  the model artifact records the mask (``model/identity_mask.py``) and applies it at inference, so
  ``adrisk predict``, ``adrisk score`` and the server transform texts exactly as training did.

The audit's subgroup metrics (Borkan et al. 2019) still read the unmasked test texts to find the
rows that name a term (``pipeline.py`` keeps them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from model.identity_mask import IdentityMask
from model.schema import LabelSchema
from training.config import Config, IdentityConfig
from training.data import DataBundle, Split
from training.identity_terms import (
    NEUTRAL_FILLERS,
    TERMS,
    TERMS_VERSION,
    IdentityTerm,
    forms_of,
    mitigation_terms,
    term_pattern,
)

# How an identity term is put into a benign row that names none ({x}: the term, {t}: the row's text).
INSERT_FRAMES = ("{x} {t}", "{t} ({x})", "{t}, {x} owned")


def _norm(word: str) -> str:
    return re.sub(r"[\s-]+", " ", word.lower()).strip()


def _cased(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word.lower()


class CounterfactualSwapper:
    """Replaces identity terms and neutral fillers in a text by other pool words (module docstring, ``cda``).

    Args:
        terms: identity terms to swap (default: the non-held-out ``TERMS``).
        fillers: neutral fillers, swapped like terms and drawn like them.
    """

    def __init__(self, terms: Sequence[IdentityTerm] | None = None, fillers: Sequence[str] = NEUTRAL_FILLERS):
        terms = mitigation_terms(TERMS) if terms is None else list(terms)
        self.terms = [t.text for t in terms]
        self.pool = self.terms + list(fillers)
        self._word_of = {_norm(f): t.text for t in terms for f in t.forms} | {_norm(f): f for f in fillers}
        self.pattern = term_pattern(forms_of(terms) + list(fillers))

    def names(self, text: str) -> bool:
        """Does ``text`` name a term or filler of the pool?"""
        return self.pattern.search(text) is not None

    def swap(self, text: str, rng: np.random.Generator) -> str | None:
        """A counterfactual of ``text``: each named pool word replaced by a different pool word drawn
        uniformly (the same one for every occurrence in the text), case kept; None when it names none."""
        found = {self._word_of[_norm(m.group(0))] for m in self.pattern.finditer(text)}
        if not found:
            return None
        choice = {}
        for w in sorted(found):
            options = [p for p in self.pool if p != w]
            choice[w] = options[int(rng.integers(len(options)))]
        return self.pattern.sub(lambda m: _cased(choice[self._word_of[_norm(m.group(0))]], m.group(0)), text)

    def insert(self, text: str, rng: np.random.Generator) -> str:
        """``text`` with one identity term (uniform over ``terms``) put in by a frame of ``INSERT_FRAMES``."""
        term = self.terms[int(rng.integers(len(self.terms)))]
        frame = INSERT_FRAMES[int(rng.integers(len(INSERT_FRAMES)))]
        return frame.format(x=term, t=text)


@dataclass
class Counterfactuals:
    """What ``counterfactual_rows`` made: ``texts`` (n,) with substitutions, ``added`` texts to append,
    ``origin`` (m,) int64 the row each added text was made from (the caller copies its labels), counts."""

    texts: list[str]
    added: list[str]
    origin: np.ndarray
    report: dict[str, int] = field(default_factory=dict)


def counterfactual_rows(
    texts: Sequence[str],
    benign: Sequence[bool],
    substitution: float,
    copies: int,
    insert_fraction: float,
    seed: int,
    swapper: CounterfactualSwapper | None = None,
) -> Counterfactuals:
    """Counterfactual data augmentation of training texts (module docstring, ``cda``).

    Args:
        texts: (n,) training texts; benign: (n,) whether each row flags no label.
        substitution: probability in [0, 1] that a row naming a pool word is replaced in place.
        copies: counterfactuals appended per row naming a pool word (>= 0).
        insert_fraction: share in [0, 1] of benign rows naming none that gain a copy with a term inserted.
        seed: for every draw (same inputs and seed: same output).

    Raises:
        ValueError: ``substitution`` or ``insert_fraction`` outside [0, 1], ``copies`` < 0, or lengths
            that disagree.
    """
    if not (0.0 <= substitution <= 1.0 and 0.0 <= insert_fraction <= 1.0) or copies < 0:
        raise ValueError(
            "need 0 <= substitution <= 1, 0 <= insert_fraction <= 1 and copies >= 0, "
            f"got {substitution}, {insert_fraction}, {copies}"
        )
    if len(texts) != len(benign):
        raise ValueError(f"{len(texts)} texts but {len(benign)} benign flags")
    sw = swapper or CounterfactualSwapper()
    rng = np.random.default_rng(seed)
    naming = [i for i, t in enumerate(texts) if sw.names(t)]
    named = set(naming)
    out = list(texts)
    substituted = 0
    for i in naming:
        if rng.random() < substitution:
            out[i] = sw.swap(texts[i], rng) or texts[i]
            substituted += 1
    added: list[str] = []
    origin: list[int] = []
    for _ in range(copies):
        for i in naming:
            added.append(sw.swap(texts[i], rng) or texts[i])
            origin.append(i)
    inserted = 0
    for i, (t, b) in enumerate(zip(texts, benign, strict=True)):
        if b and i not in named and rng.random() < insert_fraction:
            added.append(sw.insert(t, rng))
            origin.append(i)
            inserted += 1
    report = {
        "rows_naming": len(naming),
        "rows_substituted": substituted,
        "rows_appended": len(added),
        "rows_inserted": inserted,
    }
    return Counterfactuals(out, added, np.asarray(origin, dtype=np.int64), report)


def benign_rows(targets: np.ndarray, schema: LabelSchema) -> np.ndarray:
    """(n,) bool: rows that flag no label ((n, L) 0/1 ``targets``; a multi-class benign class does not flag)."""
    flaggable = np.asarray([n != schema.benign_label for n in schema.labels], dtype=bool)
    return np.asarray(~(np.asarray(targets)[:, flaggable] > 0).any(axis=1), dtype=bool)


def cda_split(
    split: Split, ident: IdentityConfig, schema: LabelSchema, seed: int
) -> tuple[Split, dict[str, int]]:
    """``split`` after ``counterfactual_rows``: texts substituted in place, appended rows carrying their
    origin row's targets and other columns (source, group, id). Name, path and fingerprint stay the
    split's (the data is the same; the config digest records the augmentation)."""
    cf = counterfactual_rows(
        split.texts,
        benign_rows(split.targets, schema).tolist(),
        ident.cda_substitution,
        ident.cda_copies,
        ident.cda_insert_fraction,
        seed,
    )
    frame = split.frame.assign(text=cf.texts)
    targets = split.targets
    if len(cf.origin):
        extra = split.frame.iloc[cf.origin].assign(text=cf.added)
        frame = pd.concat([frame, extra], ignore_index=True)
        targets = np.concatenate([targets, targets[cf.origin]])
    return Split(split.name, frame, targets, split.fingerprint, split.path), cf.report


def identity_mask(ident: IdentityConfig, terms: Sequence[IdentityTerm] = TERMS) -> IdentityMask | None:
    """The mask the artifact records (``identity.mask``), built from the mitigation terms' forms; None when off."""
    if not ident.mask:
        return None
    return IdentityMask(
        terms_version=TERMS_VERSION,
        placeholder=ident.mask_placeholder,
        forms=tuple(forms_of(mitigation_terms(terms))),
    )


def mask_split(split: Split, mask: IdentityMask) -> Split:
    """``split`` with every text masked (``IdentityMask.apply``); targets and other columns unchanged."""
    return Split(
        split.name,
        split.frame.assign(text=mask.apply(split.texts)),
        split.targets,
        split.fingerprint,
        split.path,
    )


def prepare_bundle(cfg: Config, bundle: DataBundle) -> tuple[DataBundle, IdentityMask | None]:
    """The splits the model is fitted and calibrated on under ``cfg.identity`` (module docstring):
    ``cda`` augments train; ``mask`` masks every split and returns the mask for the artifact. Without
    either, ``bundle`` itself. The returned bundle shares ``bundle.report``, which gains ``identity``
    (what was changed, counts only). ``bundle`` is not modified otherwise."""
    ident = cfg.identity
    if not (ident.cda or ident.mask):
        return bundle, None
    train, validation, test = bundle.train, bundle.validation, bundle.test
    report: dict[str, int | str] = {"terms_version": TERMS_VERSION}
    if ident.cda:
        train, counts = cda_split(train, ident, cfg.label_schema, cfg.seed)
        report |= {"mitigation": "cda", **counts}
    mask = identity_mask(ident)
    if mask is not None:
        before = train.texts
        train, validation, test = (mask_split(s, mask) for s in (train, validation, test))
        report |= {
            "mitigation": "mask",
            "train_rows_masked": sum(a != b for a, b in zip(before, train.texts, strict=True)),
        }
    bundle.report["identity"] = report
    return DataBundle(train, validation, test, bundle.report), mask
