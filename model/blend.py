"""The TF-IDF blend: a linear text model beside the transformer, stacked per label (docs/generalisation.md §6).

A fine-tuned encoder and a TF-IDF + logistic-regression model make different errors (the encoder reads
context within its window; the n-gram model sees every word of a long ad and exact phrasings), so a
per-label logistic regression on their two logits ("stacking", Wolpert 1992, "Stacked
generalization") can beat either. Training (``training/blend.py``) fits it on the validation split and
keeps it only for labels where it raises the cross-fitted validation average precision; the artifact
stores it, and ``Predictor`` applies it to every text it scores, before temperature calibration and
thresholds (which are fitted on the blended logits).

Stored in the artifact as two files, no pickle (loading runs no code):

    <dir>/blend.json   vectoriser settings, vocabularies (feature order) and per-label stacking weights
    <dir>/blend.npz    idf weights and the logistic-regression coefficients (``numpy.savez``)

``adrisk.json`` records ``blend: {"files": {...: sha256}, "labels": [...]}`` (``BlendRecord``); a file
that does not match its checksum is an ``ArtifactError``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact import ArtifactError, BlendRecord, sha256_file, write_json_atomic
from model.normalize import normalize_text

BLEND_JSON = "blend.json"
BLEND_NPZ = "blend.npz"
FORMAT = 1


@dataclass(frozen=True)
class StackWeights:
    """One label's stacker: blended logit = ``model * z_model + tfidf * z_tfidf + bias``."""

    model: float
    tfidf: float
    bias: float


class WordCachedCharNgrams:
    """``TfidfVectorizer.transform`` of a fitted ``char_wb`` vectoriser (scikit-learn), with each word's
    feature indices memoised: the same matrix, faster once the common words are cached (docs/performance.md).

    ``char_wb`` n-grams never cross a word boundary (scikit-learn pads each whitespace-separated word
    with one space and n-grams it alone), so a text's counts are the sum of its words' and ads repeat
    their words. Each word is n-grammed by the vectoriser's own analyser; the counts then go through
    the same sublinear tf, idf and norm as ``TfidfTransformer``. The cache holds at most
    ``cache_words`` words, in memory only.

    Args:
        vectorizer: a fitted (or fixed-vocabulary) ``TfidfVectorizer`` with ``analyzer="char_wb"`` and
            ``binary=False`` (``applies`` says whether it qualifies).
    """

    def __init__(self, vectorizer: Any, cache_words: int = 1 << 16):
        v = vectorizer
        vocab = getattr(v, "vocabulary_", None) or v.vocabulary
        self._preprocess = v.build_preprocessor()
        self._idf = np.asarray(v.idf_, dtype=np.float64) if v.use_idf else None
        self._sublinear, self._norm, self._dtype = v.sublinear_tf, v.norm, v.dtype
        self._width = len(vocab)
        analyze = v.build_analyzer()

        @functools.lru_cache(maxsize=cache_words)
        def word_features(word: str) -> tuple[int, ...]:
            return tuple(vocab[g] for g in analyze(word) if g in vocab)

        self._word_features: Callable[[str], tuple[int, ...]] = word_features

    @staticmethod
    def applies(vectorizer: Any) -> bool:
        """True where this class reproduces the vectoriser's ``transform`` exactly."""
        return vectorizer.analyzer == "char_wb" and not vectorizer.binary and vectorizer.input == "content"

    def transform(self, texts: Sequence[str]) -> Any:
        """(n,) texts -> (n, F) scipy CSR tf-idf matrix, as ``TfidfVectorizer.transform`` returns it."""
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        indptr: list[int] = [0]
        indices: list[int] = []
        for text in texts:
            for word in self._preprocess(text).split():
                indices.extend(self._word_features(word))
            indptr.append(len(indices))
        x = sp.csr_matrix(
            (np.ones(len(indices)), np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
            shape=(len(texts), self._width),
        )
        x.sum_duplicates()
        if self._sublinear:
            np.log(x.data, x.data)
            x.data += 1.0
        if self._idf is not None:
            x = (x @ sp.diags(self._idf)).tocsr()
        if self._norm:
            x = normalize(x, norm=self._norm, copy=False)
        return x.astype(self._dtype, copy=False)


class TfidfBlend:
    """TF-IDF logits for every label and the per-label stacking of them with the transformer's.

    Args:
        vectorizers: fitted scikit-learn ``TfidfVectorizer`` objects whose outputs are concatenated
            (the baseline's word 1-2-grams and char_wb 2-5-grams), in order.
        coef: (L, F) logistic-regression coefficients over the concatenated features; ``intercept``
            (L,). Row j is label j of ``labels``.
        labels: L label names, the artifact's order.
        weights: label -> ``StackWeights`` for the blended labels; the others keep the transformer's
            logit unchanged.
    """

    def __init__(
        self,
        vectorizers: Sequence[Any],
        coef: np.ndarray,
        intercept: np.ndarray,
        labels: Sequence[str],
        weights: dict[str, StackWeights],
    ):
        self.vectorizers = list(vectorizers)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.labels = tuple(labels)
        self.weights = dict(weights)
        # (F, L) in the layout the sparse product reads: ``feats @ coef.T`` copies the 2 MB-per-label
        # matrix on every call, which is most of a single ad's TF-IDF time
        self._coef_t = np.ascontiguousarray(self.coef.T)
        self._transforms = [
            WordCachedCharNgrams(v).transform if WordCachedCharNgrams.applies(v) else v.transform
            for v in self.vectorizers
        ]
        if self.coef.shape[0] != len(self.labels) or self.intercept.shape != (len(self.labels),):
            raise ValueError(
                f"coef {self.coef.shape} / intercept {self.intercept.shape} vs {len(self.labels)} labels"
            )

    def with_weights(self, weights: dict[str, StackWeights]) -> TfidfBlend:
        """This blend with other stacking weights; the features (and their word cache) are shared."""
        out = copy.copy(self)
        out.weights = dict(weights)
        return out

    def tfidf_logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) raw texts -> (n, L) float64 logistic-regression logits (texts normalised as in training)."""
        from scipy.sparse import hstack

        if not len(texts):
            return np.zeros((0, len(self.labels)))
        x = [normalize_text(t) for t in texts]
        feats = hstack([transform(x) for transform in self._transforms]).tocsr()
        return np.asarray(feats @ self._coef_t) + self.intercept[None, :]

    def apply(self, model_logits: np.ndarray, tfidf_logits: np.ndarray) -> np.ndarray:
        """(n, L) transformer logits and (n, L) TF-IDF logits -> (n, L) float32 blended logits."""
        out = np.array(model_logits, dtype=np.float32, copy=True)
        for j, name in enumerate(self.labels):
            w = self.weights.get(name)
            if w is not None:
                out[:, j] = w.model * model_logits[:, j] + w.tfidf * tfidf_logits[:, j] + w.bias
        return out

    def blend(self, model_logits: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """``apply`` with the TF-IDF logits of ``texts`` computed here."""
        if not self.weights:
            return np.asarray(model_logits, dtype=np.float32)
        return self.apply(model_logits, self.tfidf_logits(texts))

    # ---------------------------------------------------------------------------------------------
    # storage

    def save(self, directory: str | os.PathLike[str]) -> BlendRecord:
        """Write ``blend.json`` and ``blend.npz`` into an artifact directory; returns the
        ``adrisk.json`` ``blend`` entry (files with sha256, blended labels)."""
        directory = Path(directory)
        arrays: dict[str, np.ndarray] = {"coef": self.coef, "intercept": self.intercept}
        vecs = []
        for i, v in enumerate(self.vectorizers):
            vocab = sorted(v.vocabulary_, key=v.vocabulary_.__getitem__)
            arrays[f"idf_{i}"] = np.asarray(v.idf_, dtype=np.float64)
            vecs.append(
                {
                    "analyzer": v.analyzer,
                    "ngram_range": list(v.ngram_range),
                    "sublinear_tf": bool(v.sublinear_tf),
                    "lowercase": bool(v.lowercase),
                    "norm": v.norm,
                    "vocabulary": vocab,
                }
            )
        doc = {
            "format": FORMAT,
            "labels": list(self.labels),
            "vectorizers": vecs,
            "weights": {n: [w.model, w.tfidf, w.bias] for n, w in self.weights.items()},
        }
        write_json_atomic(directory / BLEND_JSON, doc)
        tmp = directory / (BLEND_NPZ + ".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle comes first
        os.replace(tmp, directory / BLEND_NPZ)
        return BlendRecord(
            files={f: sha256_file(directory / f) for f in (BLEND_JSON, BLEND_NPZ)},
            labels=sorted(self.weights),
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str], entry: BlendRecord) -> TfidfBlend:
        """Read the blend recorded in ``entry`` (``adrisk.json`` ``blend``) from an artifact directory.

        Raises:
            ArtifactError: a file is missing, fails its checksum or is not a blend.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer

        directory = Path(directory)
        files = entry.files
        for f in (BLEND_JSON, BLEND_NPZ):
            path = directory / f
            if not path.is_file():
                raise ArtifactError(f"{directory}: the TF-IDF blend file {f} is missing")
            if files.get(f) and sha256_file(path) != files[f]:
                raise ArtifactError(f"{directory}: {f} does not match its sha256 in adrisk.json (corrupted?)")
        try:
            doc = json.loads((directory / BLEND_JSON).read_text(encoding="utf-8"))
            with np.load(directory / BLEND_NPZ, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            vecs = []
            for i, spec in enumerate(doc["vectorizers"]):
                v = TfidfVectorizer(
                    analyzer=spec["analyzer"],
                    ngram_range=tuple(spec["ngram_range"]),
                    sublinear_tf=spec["sublinear_tf"],
                    lowercase=spec["lowercase"],
                    norm=spec["norm"],
                    vocabulary={t: k for k, t in enumerate(spec["vocabulary"])},
                )
                v.idf_ = arrays[f"idf_{i}"]
                vecs.append(v)
            weights = {n: StackWeights(*map(float, w)) for n, w in doc["weights"].items()}
            return cls(vecs, arrays["coef"], arrays["intercept"], doc["labels"], weights)
        except (KeyError, ValueError, TypeError) as e:
            raise ArtifactError(f"{directory}: not a valid TF-IDF blend ({type(e).__name__}: {e})") from e
