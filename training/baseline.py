"""The classical baseline every run trains beside the transformer: TF-IDF word 1-2-grams + char
2-5-grams (scikit-learn ``TfidfVectorizer``, sublinear tf) and one class-weighted logistic
regression per label (``OneVsRestClassifier``; multinomial for multi_class), on the same
normalised text and splits."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import FeatureUnion, make_pipeline

from model.normalize import normalize_text
from model.schema import LabelSchema, ProblemType
from training.config import BaselineConfig

logger = logging.getLogger(__name__)


class TfidfBaseline:
    """TF-IDF + logistic regression. ``fit(texts, targets (n, L))``; ``predict_proba(texts) -> (n, L)``."""

    def __init__(self, schema: LabelSchema, cfg: BaselineConfig, seed: int = 0):
        self.schema = schema
        self.cfg = cfg
        self.seed = seed

    def _features(self) -> FeatureUnion:
        return FeatureUnion(
            [
                (
                    "word",
                    TfidfVectorizer(
                        ngram_range=(1, 2),
                        min_df=2,
                        sublinear_tf=True,
                        max_features=self.cfg.max_features_word,
                    ),
                ),
                (
                    "char",
                    TfidfVectorizer(
                        analyzer="char_wb",
                        ngram_range=(2, 5),
                        min_df=2,
                        sublinear_tf=True,
                        max_features=self.cfg.max_features_char,
                    ),
                ),
            ]
        )

    def fit(self, texts: list[str], targets: np.ndarray) -> TfidfBaseline:
        lr = LogisticRegression(C=self.cfg.C, class_weight="balanced", max_iter=2000, random_state=self.seed)
        x = [normalize_text(t) for t in texts]
        if self.schema.problem_type is ProblemType.MULTI_CLASS:
            self.pipeline_ = make_pipeline(self._features(), lr).fit(x, targets.argmax(axis=1))
        else:
            self.pipeline_ = make_pipeline(self._features(), OneVsRestClassifier(lr)).fit(x, targets)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.pipeline_.predict_proba([normalize_text(t) for t in texts]), dtype=np.float64)
