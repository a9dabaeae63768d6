"""The blend's word-cached char n-gram featuriser returns scikit-learn's own matrix, whatever the text."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from model.blend import WordCachedCharNgrams

TRAIN = [
    "Sweet new girl in town, call me 24/7 incall outcall",
    "2 bedroom apartment for rent near downtown",
    "Congratulations! You won a 1000 GBP prize, text CLAIM to 80086 now",
    "Relaxing massage by licensed therapist, clean studio",
    "Café crème brûlée  for sale\tcheap",
]
ODD = [
    "",
    "   ",
    "a",
    "I",
    "CAFÉ café Cafe",
    "tabs\tand\nnewlines\r\n and  double  spaces",
    "😀😀 emoji-only 🔥",
    "repeat repeat repeat repeat",
    "unseen zzqx words xxyy",
    "x" * 300,
    "\u00a0non-breaking\u00a0space",
]


@pytest.mark.parametrize(
    "settings",
    [
        {"ngram_range": (2, 5), "sublinear_tf": True},
        {"ngram_range": (1, 3), "sublinear_tf": False, "norm": "l1"},
        {"ngram_range": (3, 3), "use_idf": False, "norm": None, "strip_accents": "unicode"},
    ],
)
def test_same_matrix_as_scikit_learn(settings):
    v = TfidfVectorizer(analyzer="char_wb", **settings).fit(TRAIN)
    fast = WordCachedCharNgrams(v, cache_words=8)  # a small cache: evictions on the way
    for texts in (TRAIN, ODD, ODD + TRAIN + ODD):
        got, want = fast.transform(texts), v.transform(texts)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got.toarray(), want.toarray(), rtol=0, atol=1e-12)


def test_only_char_wb_counts_qualify():
    assert WordCachedCharNgrams.applies(TfidfVectorizer(analyzer="char_wb"))
    assert not WordCachedCharNgrams.applies(TfidfVectorizer(analyzer="char"))  # n-grams cross words
    assert not WordCachedCharNgrams.applies(TfidfVectorizer(analyzer="word"))
    assert not WordCachedCharNgrams.applies(TfidfVectorizer(analyzer="char_wb", binary=True))


def test_a_stored_blend_scores_as_scikit_learn_would(tmp_path):
    """Saved and loaded (fixed-vocabulary vectorisers), the blend's TF-IDF logits still equal the
    vectorisers' own ``transform`` times the coefficients."""
    from scipy.sparse import hstack

    from model.blend import TfidfBlend
    from model.normalize import normalize_text

    vecs = [
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True).fit(TRAIN),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True).fit(TRAIN),
    ]
    width = sum(len(v.vocabulary_) for v in vecs)
    rng = np.random.default_rng(0)
    blend = TfidfBlend(vecs, rng.normal(size=(2, width)), rng.normal(size=2), ("a", "b"), {})
    loaded = TfidfBlend.load(tmp_path, blend.save(tmp_path))
    texts = ODD + TRAIN
    norm = [normalize_text(t) for t in texts]
    want = np.asarray(hstack([v.transform(norm) for v in vecs]) @ blend.coef.T) + blend.intercept
    for b in (blend, loaded):
        np.testing.assert_allclose(b.tfidf_logits(texts), want, rtol=0, atol=1e-9)
