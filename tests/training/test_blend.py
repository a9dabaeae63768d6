"""The TF-IDF blend: chosen per label only where it helps on cross-fitted validation, stored without
pickle, applied by the predictor, and rejected when its files are corrupted."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from model.artifact import ArtifactError
from model.blend import BLEND_NPZ, TfidfBlend
from model.calibration import select_threshold
from model.schema import LabelSchema, ProblemType
from training.baseline import TfidfBaseline
from training.blend import VIEW_PRECISIONS, blend_from_baseline, fit_blend
from training.config import BaselineConfig

LABELS = ("scam", "spam")
WORDS = [
    "apartment",
    "rent",
    "car",
    "sale",
    "bike",
    "lamp",
    "sofa",
    "desk",
    "chair",
    "table",
    "phone",
    "laptop",
    "garden",
]


def _data(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts where a word marks each label ("wire" -> scam, "winner" -> spam) among neutral words."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.3).astype(np.uint8)
    texts = []
    for row in y:
        words = list(rng.choice(WORDS, size=6))
        if row[0]:
            words.insert(int(rng.integers(0, 6)), "wire")
        if row[1]:
            words.insert(int(rng.integers(0, 6)), "winner")
        texts.append(" ".join(words))
    return texts, y


@pytest.fixture(scope="module")
def fitted():
    texts, y = _data(400, 0)
    schema = LabelSchema(labels=LABELS, problem_type=ProblemType.MULTI_LABEL)
    cfg = BaselineConfig(max_features_word=500, max_features_char=500)
    return blend_from_baseline(TfidfBaseline(schema, cfg, seed=0).fit(texts, y), LABELS)


def test_blends_only_the_labels_it_helps(fitted):
    texts, y = _data(300, 1)
    rng = np.random.default_rng(2)
    # the "transformer" is perfect on scam and uninformative on spam: blend spam, leave scam
    model_logits = np.stack([np.where(y[:, 0] == 1, 5.0, -5.0), rng.normal(size=len(y))], axis=1)
    chosen, report = fit_blend(fitted, model_logits, texts, y)
    assert report.used == {"scam": False, "spam": True}
    assert set(chosen.weights) == {"spam"}
    assert report.blend_ap["spam"] > report.model_ap["spam"] + 0.2
    out = chosen.blend(model_logits, texts)
    np.testing.assert_array_equal(out[:, 0], model_logits[:, 0].astype(np.float32))  # untouched label
    assert not np.allclose(out[:, 1], model_logits[:, 1])
    assert set(report.metrics()) >= {"blend.spam.used", "blend.spam.crossfit_ap", "blend.scam.model_ap"}


def test_too_few_positives_is_not_blended(fitted):
    texts, y = _data(60, 3)
    y[:, 1] = 0
    y[:3, 1] = 1  # 3 positives: too few to decide
    chosen, report = fit_blend(fitted, np.zeros((60, 2)), texts, y)
    assert report.used["spam"] is False and report.blend_ap["spam"] is None


def test_save_load_round_trip_and_corruption(fitted, tmp_path):
    texts, y = _data(200, 4)
    chosen, _ = fit_blend(fitted, np.zeros((200, 2)), texts, y)
    assert chosen.weights  # the zero "transformer" gains from TF-IDF on both labels
    entry = chosen.save(tmp_path)
    assert sorted(entry.labels) == sorted(chosen.weights)
    loaded = TfidfBlend.load(tmp_path, entry)
    z = np.random.default_rng(5).normal(size=(len(texts), 2))
    np.testing.assert_allclose(loaded.blend(z, texts), chosen.blend(z, texts), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loaded.tfidf_logits(texts), chosen.tfidf_logits(texts), atol=1e-9)
    (tmp_path / BLEND_NPZ).write_bytes(b"not numpy")
    with pytest.raises(ArtifactError, match="sha256"):
        TfidfBlend.load(tmp_path, entry)
    (tmp_path / BLEND_NPZ).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        TfidfBlend.load(tmp_path, entry)


def test_a_blend_that_learns_the_site_is_refused_by_the_views():
    """Positives carry a site marker the TF-IDF model latches onto; in the view (marker removed) the
    blend's threshold, set on the unchanged rows, misses them: the label is not blended."""
    schema = LabelSchema(labels=LABELS, problem_type=ProblemType.MULTI_LABEL)
    cfg = BaselineConfig(max_features_word=500, max_features_char=500)

    def with_site(texts, y):
        return [t + " zzsite" if row[0] else t for t, row in zip(texts, y, strict=True)]

    train, ytr = _data(400, 6)
    base = blend_from_baseline(TfidfBaseline(schema, cfg, seed=0).fit(with_site(train, ytr), ytr), LABELS)
    texts, y = _data(300, 7)
    rng = np.random.default_rng(8)
    z = np.stack([2.0 * y[:, 0] + rng.normal(size=len(y)), 2.0 * y[:, 1] + rng.normal(size=len(y))], axis=1)
    # the transformer reads the ad, not the marker: the same logits with and without it
    chosen, report = fit_blend(base, z, with_site(texts, y), y, views={"no_marker": (z, texts)})
    model_recall, blend_recall = report.view_recall["scam"]["no_marker"]
    assert report.blend_ap["scam"] > report.model_ap["scam"]  # the AP rule alone would blend it...
    assert blend_recall < model_recall - 0.02 and not report.used["scam"]  # ...the view rule refuses
    assert "scam" not in chosen.weights
    assert "blend.scam.view.no_marker.recall_blend" in report.metrics()


def test_a_view_identical_to_the_rows_never_refuses_the_blend():
    """Where the transformer cannot reach the target precision (its threshold falls back to max F1:
    high recall at low precision) the two scorers are compared at the precision the transformer does
    reach, not each at its own rule's threshold: a view that changes nothing cannot refuse a blend
    that ranks better."""
    schema = LabelSchema(labels=LABELS, problem_type=ProblemType.MULTI_LABEL)
    cfg = BaselineConfig(max_features_word=500, max_features_char=500)
    train, ytr = _data(400, 11)
    base = blend_from_baseline(TfidfBaseline(schema, cfg, seed=0).fit(train, ytr), LABELS)
    texts, y = _data(300, 12)
    rng = np.random.default_rng(13)
    # the marker misses half the validation positives: the blend reaches 0.97 precision only
    # below the recall of the transformer's max-F1 threshold
    texts = [
        t.replace("wire", "cash") if row[0] and rng.random() < 0.5 else t
        for t, row in zip(texts, y, strict=True)
    ]
    z = np.stack([0.3 * y[:, 0] + rng.normal(size=len(y)), 0.3 * y[:, 1] + rng.normal(size=len(y))], axis=1)
    # a weak transformer: 0.97 precision is out of its reach, so its threshold is the max-F1 one
    chosen, report = fit_blend(base, z, texts, y, views={"same": (z, texts)}, target_precision=0.97)
    assert report.blend_ap["scam"] > report.model_ap["scam"] + 0.2
    model_recall, blend_recall = report.view_recall["scam"]["same"]
    assert blend_recall >= model_recall - 0.02
    assert report.used["scam"] and "scam" in chosen.weights


def test_the_crossfit_estimate_does_not_ride_on_one_fold_assignment(fitted):
    """The AP rule's estimate is averaged over repeated fold assignments: it moves less with the seed
    than one assignment's, so a near tie is not decided by which rows share a fold."""
    texts, y = _data(200, 14)
    rng = np.random.default_rng(15)
    y = y ^ (rng.random(y.shape) < 0.15).astype(np.uint8)  # label noise: neither scorer is perfect
    z = np.stack([0.8 * y[:, 0] + rng.normal(size=len(y)), 0.8 * y[:, 1] + rng.normal(size=len(y))], axis=1)

    def estimates(repeats: int) -> np.ndarray:
        return np.array(
            [fit_blend(fitted, z, texts, y, seed=s, repeats=repeats)[1].blend_ap["spam"] for s in range(8)]
        )

    one, five = estimates(1), estimates(5)
    assert np.ptp(one) > 0  # one assignment does move it
    assert np.std(five) < 0.7 * np.std(one)


def test_the_view_rule_reads_recall_over_a_range_of_precisions(fitted):
    """A view's recall is the mean over the thresholds reaching each of ``VIEW_PRECISIONS`` below the
    target and the target itself (set on the unchanged rows), not one threshold's."""
    texts, y = _data(300, 16)
    rng = np.random.default_rng(17)
    z = np.stack([1.5 * y[:, 0] + rng.normal(size=len(y)), 1.5 * y[:, 1] + rng.normal(size=len(y))], axis=1)
    view = z + rng.normal(scale=0.5, size=z.shape)  # the view: the same rows, scored less surely
    for target in (0.9, 0.75):
        _, report = fit_blend(fitted, z, texts, y, views={"v": (view, texts)}, target_precision=target)
        levels = [lv for lv in VIEW_PRECISIONS if lv < target] + [target]
        pos = y[:, 1] == 1
        thresholds = [select_threshold(expit(z[:, 1]), y[:, 1], lv).threshold for lv in levels]
        expected = np.mean([np.mean(expit(view[pos, 1]) >= t) for t in thresholds])
        assert report.view_recall["spam"]["v"][0] == pytest.approx(expected)
        single = np.mean(expit(view[pos, 1]) >= thresholds[-1])
        assert expected != pytest.approx(single)  # the range differs from the target's threshold alone
