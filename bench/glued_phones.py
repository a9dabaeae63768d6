"""Ten-digit phone numbers glued to a letter in risky-ads-v1: are they extracted whole?

Finds every North-American number written as ten digits (one block, or ``3-3-4`` with one separator
``-``, ``.`` or a space) that touches a letter on either side (``CallMe415-555-2671Now``,
``maya6929752524``) in all splits, and counts how many come out whole (an extracted phone whose
value is those ten digits) from ``signals.contacts.extract_contacts`` at its defaults, beside
``phonenumbers.PhoneNumberMatcher`` (libphonenumber's finder, what a user would run instead) at its
default leniency (``VALID``) and at ``POSSIBLE``. Also counts extracted phones, over every text,
whose digits are fewer than a full number of their region (must be 0).

    .venv/bin/python bench/glued_phones.py [--data ../shared/datasets/risky-ads-v1]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import pandas as pd
import phonenumbers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from signals.contacts import extract_contacts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEN_DIGITS = re.compile(r"(?<![0-9])([0-9]{3})([-. ]?)([0-9]{3})\2([0-9]{4})(?![0-9])")


def glued_numbers(text: str, glue=str.isalpha) -> list[tuple[str, int, int]]:
    """``(ten digits, start, end)`` of each ten-digit number in ``text`` that touches a character
    for which ``glue`` holds (default: a letter)."""
    out = []
    for m in TEN_DIGITS.finditer(text):
        before = text[m.start() - 1] if m.start() else ""
        after = text[m.end()] if m.end() < len(text) else ""
        if (before and glue(before)) or (after and glue(after)):
            out.append((m.group(1) + m.group(3) + m.group(4), m.start(), m.end()))
    return out


def _whole(found: list[tuple[str, int, int]], digits: str, start: int, end: int) -> bool:
    """Some found ``(E.164, start, end)`` is ``+1`` and these digits, over this span."""
    return any(v == "+1" + digits and s <= start and end <= e for v, s, e in found)


def _short(value: str) -> bool:
    num = phonenumbers.parse(value)
    return phonenumbers.is_possible_number_with_reason(num) != phonenumbers.ValidationResult.IS_POSSIBLE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("ADRISK_DATA_DIR") or ROOT.parent / "shared" / "datasets" / "risky-ads-v1"
    ap.add_argument("--data", default=str(default))
    args = ap.parse_args(argv)
    texts = pd.concat(
        [
            pd.read_json(Path(args.data) / f"{s}.jsonl", lines=True, dtype=False)["text"]
            for s in ("train", "validation", "test")
        ]
    ).tolist()
    glued = [(i, g) for i, t in enumerate(texts) for g in glued_numbers(t)]
    with_glued = {i for i, _ in glued}
    rows = {}
    t0 = time.perf_counter()
    adrisk = [[(c.value, c.start, c.end) for c in extract_contacts(t) if c.type == "phone"] for t in texts]
    secs = time.perf_counter() - t0
    rows["signals.contacts (defaults)"] = adrisk
    for name, leniency in (("PhoneNumberMatcher VALID (default)", phonenumbers.Leniency.VALID),
                           ("PhoneNumberMatcher POSSIBLE", phonenumbers.Leniency.POSSIBLE)):  # fmt: skip
        rows[name] = [
            [
                (phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.E164), m.start, m.end)
                for m in phonenumbers.PhoneNumberMatcher(texts[i], "US", leniency=leniency)
            ]
            if i in with_glued
            else []  # only texts with a glued number are counted
            for i in range(len(texts))
        ]
    print(f"risky-ads-v1, all splits: {len(texts)} texts; ten-digit numbers glued to a letter: {len(glued)}")
    print(f"{'finder':<38} {'whole':>6} {'missed or cut':>14}")
    for name, found in rows.items():
        whole = sum(_whole(found[i], *g) for i, g in glued)
        print(f"{name:<38} {whole:>6} {len(glued) - whole:>14}")
    underscored = [(i, g) for i, t in enumerate(texts) for g in glued_numbers(t, "_".__eq__)]
    whole = sum(_whole(adrisk[i], *g) for i, g in underscored)
    print(f"glued to an underscore: {len(underscored)}, extracted whole by signals.contacts: {whole}")
    values = [v for per_text in adrisk for v, _, _ in per_text]
    short = sum(_short(v) for v in values)
    print(
        f"signals.contacts: {len(values)} phones in all texts, {short} shorter than a full number "
        f"of their region; extraction {secs:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
