"""Contact extraction: every `extract` probe row is its own test, plus offsets, hashing and bad input."""

from __future__ import annotations

import json
import re
import time

import phonenumbers
import pytest

from signals.contacts import CONTACT_TYPES, ContactExtractor, extract_contacts
from tests.conftest import DATA_DIR, PROBES


def _probe_rows() -> list[dict]:
    if not PROBES.exists():
        return []
    rows = json.loads(PROBES.read_text(encoding="utf-8"))
    return [r for r in rows if "extract" in r.get("where", "").split(",")]


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


# Probe rows of the extraction surface (``inputs.json`` shape) for the kinds of phone that were missed
# or cut: each must come out whole, as E.164, or not at all.
PHONE_ROWS = [
    {"kind": "glued-both-sides", "input": "CallMe415-555-2671Now", "phones": ["+14155552671"]},
    {"kind": "glued-after-name", "input": "or text maya6929752524", "phones": ["+16929752524"]},
    {"kind": "glued-before-word", "input": "9181862712bare back", "phones": ["+19181862712"]},
    {"kind": "glued-word-ends-in-number-word", "input": "Phone780-770-6445", "phones": ["+17807706445"]},
    {"kind": "glued-name-grouped", "input": "Parker657-666-3137", "phones": ["+16576663137"]},
    {
        "kind": "glued-emoji-and-name",
        "input": "fulfill it💭💭7957446246Malia & Lexi",
        "phones": ["+17957446246"],
    },
    {"kind": "glued-underscores", "input": "Y LYNN ___132.656.4396___ IN", "phones": ["+11326564396"]},
    {
        "kind": "glued-two-numbers",
        "input": "Call Only : 999-034-2105Text Only : 267-028-8722Age",
        "phones": ["+19990342105", "+12670288722"],
    },  # fmt: skip
    {
        "kind": "local-number-takes-area-code",
        "input": "call 949-667-2201 or 555-0199",
        "phones": ["+19496672201", "+19495550199"],
    },  # fmt: skip
    {"kind": "local-number-alone", "input": "call 555-0199 tonight", "phones": []},
    {
        "kind": "digits-in-example-url",
        "input": "pics at example.com/ads/4155550123 and http://example.org/7025550123",
        "phones": [],
    },  # fmt: skip
    {"kind": "digits-in-url-path", "input": "see mysite.com/kim/4155550123/pics", "phones": []},
    {
        "kind": "spelled-oh",
        "input": "four one five five five five oh one two three",
        "phones": ["+14155550123"],
    },
    {
        "kind": "spelled-oh-mixed",
        "input": "Nine.Four.Nine.Six.Six.Seven.Two.Two.Oh.One",
        "phones": ["+19496672201"],
    },
    {
        "kind": "oh-not-a-digit-in-prose",
        "input": "oh baby call 415 555 0123 oh yes",
        "phones": ["+14155550123"],
    },
]


def _phones(text: str, **kw) -> list[str]:
    return [c.value for c in extract_contacts(text, **kw) if c.type == "phone"]


@pytest.mark.parametrize("row", PHONE_ROWS, ids=[r["kind"] for r in PHONE_ROWS])
def test_phone_glued_to_words_or_spelled_is_extracted_whole(row):
    text = row["input"]
    got = extract_contacts(text)
    assert [c.value for c in got if c.type == "phone"] == row["phones"]
    for c in got:
        if (
            c.type == "phone"
        ):  # the digits written in the span end the number (a local one lacks its area code)
            written = "".join(ch for ch in text[c.start : c.end] if ch.isdigit())
            assert c.value.endswith(written)


def _min_possible_length(region: str) -> int:
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return min(meta.general_desc.possible_length)


@pytest.mark.parametrize("region", ["US", "GB", "DE", "FR"])
def test_no_phone_shorter_than_a_valid_number_of_its_region(region):
    """Local-only numbers (a US ``555-0199``: the area code is missing) are not E.164 and share their
    last digits with many unrelated numbers: never a phone value, in any region."""
    texts = [
        "Phone780-770-6445",
        "Parker657-666-3137",
        "call 555-0199",
        "5 5 5 - 0 1 9 9",
        "ring 7946 0958 or 020 7946 0958",
        "ruf 030 1234567 an, oder 1234567",
        "appelle 01 23 45 67 89 ou 23 45 67",
    ]
    for text in texts:
        for value in _phones(text, region=region):
            num = phonenumbers.parse(value)
            assert value == phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
            assert (
                phonenumbers.is_possible_number_with_reason(num) == phonenumbers.ValidationResult.IS_POSSIBLE
            ), f"{region}: a local-only value from {text!r}"
            own = phonenumbers.region_code_for_country_code(num.country_code)
            national = len(value) - 1 - len(str(num.country_code))  # leading zeros included
            assert national >= _min_possible_length(own)


_TEN_DIGITS = re.compile(r"(?<![0-9])([0-9]{3})([-. ]?)([0-9]{3})\2([0-9]{4})(?![0-9])")


def test_glued_numbers_in_risky_ads_are_extracted_whole(capsys):
    """Every ten-digit number glued to a letter in risky-ads-v1 (all splits; the dataset's revision of
    2026-12-06 pseudonymised them like the others) comes out whole. ``bench/glued_phones.py`` prints
    the same count beside libphonenumber's own finder."""
    files = [DATA_DIR / f"{split}.jsonl" for split in ("train", "validation", "test")]
    if not all(f.is_file() for f in files):
        pytest.skip(f"risky-ads-v1 not found under {DATA_DIR}")
    glued = missed = 0
    for f in files:
        for line in f.open(encoding="utf-8"):  # not splitlines(): texts hold U+2028
            text = json.loads(line)["text"]
            phones = None
            for m in _TEN_DIGITS.finditer(text):
                near = text[m.start() - 1 : m.start()] + text[m.end() : m.end() + 1]
                if not any(ch.isalpha() for ch in near):
                    continue
                glued += 1
                phones = phones if phones is not None else extract_contacts(text)
                value = "+1" + m.group(1) + m.group(3) + m.group(4)
                missed += not any(
                    c.value == value and c.start <= m.start() and m.end() <= c.end for c in phones
                )
    with capsys.disabled():
        print(f"\nrisky-ads-v1: {glued} ten-digit numbers glued to a letter, {missed} not extracted whole")
    assert glued > 0 and missed == 0
