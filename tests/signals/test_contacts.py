"""Contact extraction: every `extract` probe row is its own test, plus offsets, hashing and bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from signals.contacts import CONTACT_TYPES, ContactExtractor, extract_contacts

PROBES = Path(__file__).resolve().parents[2].parent / "shared" / "probes" / "inputs.json"


def _probe_rows() -> list[dict]:
    if not PROBES.exists():
        return []
    return [r for r in json.loads(PROBES.read_text(encoding="utf-8")) if r.get("where") == "extract"]


ROWS = _probe_rows()


def _text(row: dict) -> str:
    inp = row["input"]
    return inp["repeat"] * inp["times"] if isinstance(inp, dict) else inp


@pytest.mark.skipif(not ROWS, reason=f"probe file {PROBES} not found")
@pytest.mark.parametrize("row", ROWS, ids=[r["kind"] for r in ROWS])
def test_probe_extract_row(row):
    text = _text(row)
    contacts = extract_contacts(text)
    phones = [c.value for c in contacts if c.type == "phone"]
    for c in contacts:  # offsets index the original text and cover a non-blank stretch of it
        assert 0 <= c.start < c.end <= len(text)
        assert text[c.start : c.end].strip() == text[c.start : c.end]
        assert c.type in CONTACT_TYPES
    if "phones" in row:  # "exactly these phone numbers" (a number written twice is the same number)
        assert set(phones) == set(row["phones"])
        assert len(phones) >= len(row["phones"])
    elif "phone" in row["expect"]:  # "finds two phone numbers"
        assert len(set(phones)) == 2
        assert all(p.startswith("+1") and len(p) >= 9 for p in phones)
    else:  # e-mails / handles, nothing else
        assert contacts and not phones
        assert {c.type for c in contacts} <= {"email", "handle"}
        for c in contacts:
            if c.type == "email":
                assert c.value == c.value.lower() and "@" in c.value and " " not in c.value
            else:
                assert c.platform and c.platform != "unknown" and not c.value.startswith("@")


def test_offsets_into_original_text_with_wide_and_keycap_characters():
    text = "💋💋 ｃａｌｌ ４１５-５５５-０１２３ or 4️⃣1️⃣5️⃣ 5️⃣5️⃣5️⃣ 0️⃣1️⃣2️⃣4️⃣ 💋"
    contacts = extract_contacts(text)
    assert [c.value for c in contacts] == ["+14155550123", "+14155550124"]
    assert text[contacts[0].start : contacts[0].end] == "４１５-５５５-０１２３"
    assert text[contacts[1].start : contacts[1].end] == "4️⃣1️⃣5️⃣ 5️⃣5️⃣5️⃣ 0️⃣1️⃣2️⃣4️⃣"


def test_email_url_handle_normalisation():
    text = "mail KIM@Mail.COM, see www.KimsPage.com/Kim. telegram: @Kim_X"
    got = {(c.type, c.value, c.platform) for c in extract_contacts(text)}
    assert got == {
        ("email", "kim@mail.com", None),
        ("url", "kimspage.com/Kim", None),
        ("handle", "kim_x", "telegram"),
    }


def test_not_phones_prices_measurements_and_words():
    text = "34B-24-36 5'4 135lbs $200 hh 300 h 150 200 250 3000 someone alone 24/7 call 1 hr"
    assert [c for c in extract_contacts(text) if c.type == "phone"] == []


def test_hash_contacts_is_keyed_and_stable():
    text = "call 415-555-0123"
    a = ContactExtractor(hash_key=b"k1").extract(text)
    b = ContactExtractor(hash_key=b"k1").extract("text (415) 555 0123 now")
    c = ContactExtractor(hash_key=b"k2").extract(text)
    assert a[0].value == b[0].value != c[0].value
    assert "4155550123" not in a[0].value and len(a[0].value) == 64
    with pytest.raises(ValueError):
        ContactExtractor(hash_key=b"")


def test_strict_option_rejects_unassigned_numbers():
    text = "call 055-555-0123"  # area codes never start with 0: possible length, not a valid number
    assert [c.value for c in extract_contacts(text)] == ["+10555550123"]
    assert extract_contacts(text, strict=True) == []


def test_region_changes_the_default_country():
    got = ContactExtractor("GB").extract("ring 020 7946 0958")
    assert [c.value for c in got] == ["+442079460958"]
    with pytest.raises(ValueError, match="region"):
        ContactExtractor("XX")


def test_bad_input_is_a_clear_outcome():
    with pytest.raises(TypeError):
        extract_contacts(None)  # type: ignore[arg-type]
    assert extract_contacts("") == []
    big = "lorem ipsum 415-555-0123 " + "x" * 1_000_000
    t0 = time.perf_counter()
    assert [c.value for c in extract_contacts(big)] == ["+14155550123"]
    assert time.perf_counter() - t0 < 5
    many = " , ".join(f"(415) 555-{i:04d}" for i in range(10_000))
    got = extract_contacts(many)
    assert len(got) == 10_000 and len({c.value for c in got}) == 10_000
