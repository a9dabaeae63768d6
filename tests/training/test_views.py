"""Style-stripped views (training/views.py): pure functions with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.views import (
    VIEWS,
    apply_view,
    augment_rows,
    get_view,
    plain,
    short,
    strip_contacts,
    title,
    training_rows,
    truncate,
)


def test_title_is_first_non_empty_line():
    assert title("\n  Sweet girl new in town \nbody text here") == "Sweet girl new in town"
    assert title("one line only") == "one line only"
    assert title(" \n\t\n") == ""


@pytest.mark.parametrize(
    "phone",
    [
        "415 555 1234",
        "(415) 555-1234",
        "188 • 418 • 3722",
        "9four9 555 1234",
        "nine one nine five five five one two three four",
    ],
)
def test_phone_numbers_in_written_forms_are_removed(phone):
    out = strip_contacts(f"call {phone} now")
    assert out.split() == ["call", "now"]


def test_short_numbers_and_words_are_kept():
    assert (
        strip_contacts("2 bedroom flat, 3 beds, someone for 1200")
        == "2 bedroom flat, 3 beds, someone for 1200"
    )


def test_emails_and_urls_are_removed():
    assert plain("Mail me a.b@example.com or www.example.com/x") == "mail me or"


def test_plain_drops_emoji_and_entities_and_lowercases():
    assert plain("NEW\U0001f48bPics &#10031; 100% REAL") == "new pics 100% real"


def test_truncate_cuts_at_word_boundary_and_keeps_short_text():
    assert truncate("abc def ghi", 7) == "abc def"
    assert truncate("abc", 7) == "abc"
    assert truncate("abcdefghijkl", 5) == "abcde"  # no space in the second half: hard cut
    with pytest.raises(ValueError):
        truncate("x", 0)


def test_short_is_title_plain_and_bounded():
    text = (
        "HOT \U0001f525 Latina NEW in town call 415 555 1234 tonight and every night this week\nlong body "
        * 2
    )
    out = short(text)
    assert len(out) <= 50 and out == out.lower() and "415" not in out and "long body" not in out
    assert out.startswith("hot latina new in town call tonight")


def test_view_registry_and_errors():
    assert set(VIEWS) >= {"title", "plain", "short"}
    assert apply_view("title", ["a\nb", "c"]) == ["a", "c"]
    with pytest.raises(ValueError, match="known views"):
        get_view("nope")


def test_augment_rows_skips_unchanged_views_and_keeps_row_index():
    texts = ["ipad mini 64gb", "Sweet GIRL\nbody", "x\U0001f48b"]
    out, rows = augment_rows(texts, ["short"])
    assert rows.tolist() == [1, 2] and out == ["sweet girl", "x"]
    with pytest.raises(ValueError):
        augment_rows(texts, ["short"], fraction=0)


def test_augment_rows_fraction_is_seeded():
    texts = [f"Title {i}\nbody" for i in range(200)]
    a = augment_rows(texts, ["title"], fraction=0.3, seed=1)[1]
    b = augment_rows(texts, ["title"], fraction=0.3, seed=1)[1]
    assert a.tolist() == b.tolist() and 20 < len(a) < 100


def test_training_rows_add_views_with_their_rows_labels():
    texts = ["Sweet GIRL\nbody", "ipad mini", "old sofa", "WIN \U0001f4b0 CASH"]
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.float32)
    rows = training_rows(texts, y, ["short"], 1.0, seed=0)
    assert rows.texts == [*texts, "sweet girl", "win cash"]
    assert rows.targets.tolist() == [*y.tolist(), [1, 0], [0, 1]]
    assert rows.report == {"rows": 4, "view_rows": 2}
    plain_rows = training_rows(texts, y, [], 1.0, seed=0)
    assert plain_rows.texts == texts and plain_rows.targets.dtype == np.float32
