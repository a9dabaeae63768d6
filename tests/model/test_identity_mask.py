"""The identity mask as part of the model (model/identity_mask.py): recorded in the artifact, applied by
the encoder and the predictor exactly as training applied it; artifacts without it load unchanged."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from model.artifact import load_meta, save_meta
from model.identity_mask import IdentityMask, word_pattern
from model.predictor import Predictor
from training.config import IdentityConfig
from training.counterfactual import identity_mask, mask_split
from training.data import Split

TEXTS = [
    "Relaxing massage by ASIAN therapist",
    "Latina-owned day spa, Spanish speaking",
    "2 bedroom apartment",
]


@pytest.fixture(scope="module")
def mask() -> IdentityMask:
    m = identity_mask(IdentityConfig(mask=True, mask_placeholder="[MASK]"))
    assert m is not None
    return m


def test_mask_matches_whole_words_any_case_and_is_idempotent(mask):
    out = mask.apply(TEXTS + ["Asianfusion grill", "african american owned"])
    assert out[0] == "Relaxing massage by [MASK] therapist"
    assert out[1] == "[MASK]-owned day spa, [MASK]"
    assert out[2:4] == ["2 bedroom apartment", "Asianfusion grill"] and out[4] == "[MASK] owned"
    assert mask.apply(out) == out
    deleting = identity_mask(IdentityConfig(mask=True))  # the default: deleted
    assert deleting is not None and deleting.apply(TEXTS[:1]) == ["Relaxing massage by  therapist"]
    with pytest.raises(ValidationError):
        IdentityMask(forms=("asian",), placeholder="Asian")  # the placeholder would be masked again
    with pytest.raises(ValueError):
        word_pattern([])


def test_a_masked_artifact_is_served_exactly_as_it_was_trained(tmp_path, tiny_artifact, mask):
    import pandas as pd

    art = shutil.copytree(tiny_artifact, tmp_path / "masked")
    save_meta(art, load_meta(art).model_copy(update={"identity_mask": mask}))
    assert json.loads((art / "adrisk.json").read_text())["identity_mask"]["forms"][0] == "asian"
    served = Predictor.load(art)
    assert served.meta.identity_mask == mask
    # training: the split masked (training/counterfactual.py), then the plain encoder of the base model
    train = mask_split(Split("train", pd.DataFrame({"text": TEXTS}), np.zeros((3, 3))), mask)
    plain = Predictor.load(tiny_artifact)
    assert served.encoder.encode(TEXTS).input_ids == plain.encoder.encode(train.texts).input_ids
    np.testing.assert_allclose(served.predict_proba(TEXTS), plain.predict_proba(train.texts), atol=1e-6)
    # a masked model gives an identity word and the placeholder the same score
    p = served.predict_proba(["Relaxing massage by Korean therapist", "Relaxing massage by Thai therapist"])
    np.testing.assert_allclose(p[0], p[1], atol=1e-6)
    with pytest.raises(ValueError, match="identity mask"):
        Predictor(plain.encoder, plain.runtime, served.meta)  # an encoder that would not mask


def test_an_artifact_without_the_record_loads_and_serves_texts_unchanged(tiny_artifact):
    raw = json.loads((tiny_artifact / "adrisk.json").read_text())
    raw.pop("identity_mask", None)  # as written before the mask existed
    from model.artifact import ArtifactMeta

    assert ArtifactMeta.model_validate(raw).identity_mask is None
    p = Predictor.load(tiny_artifact)
    assert p.meta.identity_mask is None and p.encoder.identity_mask is None
    a, b = p.predict_proba(["Relaxing massage by Korean therapist", "Relaxing massage by [MASK] therapist"])
    assert not np.allclose(a, b)
