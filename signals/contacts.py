"""Contact extraction: phone numbers (including obfuscated written forms), e-mails, URLs and social handles.

Posters hide contacts on purpose ("9four9 six6seven 22O1", "Nine.Three.Seven...", keycap emoji
``4️⃣1️⃣5️⃣``, full-width ``４１５`` and circled ``➍➊➎`` digits, ``O``/``l`` for 0/1), and an obscured
phone number is itself a published trafficking predictor; investigators link ads by the de-obfuscated
numbers (TellFinder, DIG, Traffic Jam). This module finds them, pure Python, no network.

How phones are found (all offsets are into the text *as given*):

1. The text is folded character by character with a length-preserving table (full-width ASCII to
   ASCII; circled, dingbat and other Unicode digits to ``0-9``), so offsets never move.
2. A regular expression finds *tokens*: maximal alphanumeric runs made only of digits, number
   words (``zero`` .. ``nine``, any case) and, next to at least one of those, ``O``/``o``/``l``/``I``
   standing for 0/1; keycap marks (U+FE0F, U+20E3) after a digit belong to it. ``someone`` or
   ``34B`` are not tokens (such a token never touches other letters or digits). Two more kinds:
   a block of 3 or more plain digits glued to letters (``CallMe415-555-2671Now``,
   ``maya6929752524``: posters run names and words into their numbers), and the word ``oh``, read
   as 0 only in a run that also holds a spelled number word (``nine oh nine ...``).
3. Tokens joined by short separators (space, ``. - / * ( ) _ ~ |``, emoji and other symbols) form a
   *run*; a run is cut into phone numbers by digit-group shape: 10 digits (11 with a leading ``1``
   country code) grouped as a North-American number is written (``3-3-4``, ``3-7``, one block, or
   digits spaced one by one), or a 7-digit local number (``3-4``, one block, or spaced digits),
   which takes the area code of the last full North-American number before it in the same text
   (``call 949-667-2201 or 555-0199``) and is dropped without one.
4. ``phonenumbers`` (the Python port of Google's libphonenumber) parses the digits in the default
   region and keeps a number when it is possible as a full number
   (``is_possible_number_with_reason`` is ``IS_POSSIBLE``: never a local-only length, which is not
   E.164 and shares its digits with many unrelated numbers; ``strict=True``: also
   ``is_valid_number``, for real data; risky-ads-v1's pseudonymised numbers are possible but mostly
   not assigned). Values are E.164 (``+14155550123``). Prices, ages, hours, years, ZIP codes and
   dates do not have a phone's shape or length and are not phones, nor are digits inside a URL or
   an e-mail address (reserved example domains included).

E-mails (``kim@x.com`` and the spelled ``kim at gmail dot com`` / ``kim [at] yahoo [dot] com``
against a list of common top-level domains) are lower-cased; URLs are lower-cased hosts plus path
without scheme or ``www.``; handles follow a platform word (``snap``, ``IG``, ``kik``, ``telegram``
...) and carry ``platform``.

Values are personal data: nothing here logs them. ``ContactExtractor(hash_key=...)`` replaces every
value by a keyed HMAC-SHA256 (RFC 2104) so users who must not store raw contacts can still link ads.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

__all__ = ["Contact", "ContactExtractor", "extract_contacts", "CONTACT_TYPES"]

CONTACT_TYPES = ("phone", "email", "url", "handle")
MAX_TEXT_CHARS = (
    2_000_000  # longer texts are cut (the rest is not searched); the caller is told via .truncated
)


def _fold_table() -> dict[int, int]:
    """Length-preserving character folds: full-width ASCII -> ASCII, any Unicode digit -> 0-9."""
    table = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}  # full-width forms
    table[0x3000] = 0x20  # ideographic space
    ranges = [(0x80, 0x3000), (0xFF10, 0xFF1A), (0x1D7CE, 0x1D800), (0x1F100, 0x1F10B)]
    for lo, hi in ranges:
        for cp in range(lo, hi):
            d = unicodedata.digit(chr(cp), None)
            if d is not None and d <= 9:
                table[cp] = 0x30 + d
    return table


_FOLD = _fold_table()
# str.translate with a large table costs ~0.5 us a character; most texts hold no foldable character at all


def _char_class(codes) -> str:
    """A regex character class of these code points, as ranges (a long list of singles is slow)."""
    out, codes = [], sorted(codes)
    lo = prev = codes[0]
    for c in [*codes[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(re.escape(chr(lo)) + ("-" + re.escape(chr(prev)) if prev > lo else ""))
        if c is not None:
            lo = prev = c
    return "[" + "".join(out) + "]"


_FOLD_RE = re.compile(_char_class(_FOLD))
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_WORD_DIGIT = {w: str(i) for i, w in enumerate(_WORDS)}
_KEYCAP = "[\ufe0f\u20e3]*"
_CORE = rf"(?:[0-9]|{'|'.join(_WORDS)}){_KEYCAP}"
_SUB = rf"(?-i:[oOlI]){_KEYCAP}"
# a token: starts/ends at a word boundary (no letter or digit touching it), holds at least one true
# digit or number word; O/o/l/I only count inside such a token. Or: plain digits glued to letters
# (3 or more, so "34B" stays a bra size), or the word "oh" (a digit only among number words).
_TOKEN = (
    rf"(?:(?<![^\W_])(?:{_SUB})*{_CORE}(?:{_CORE}|{_SUB})*(?![^\W_])"
    r"|(?<![0-9])[0-9]{3,}(?![0-9])"
    r"|(?<![^\W_])oh(?![^\W_]))"
)
_SEP = r"(?:\s++|[.\-/*()\[\]{}<>_~|=•·,'\"]|[^\x00-\x7f\w\s])"
# the leading look-ahead lets the regex engine skip positions that cannot start a run (2x faster)
_RUN = re.compile(rf"(?=[0-9oOlIzZeEfFsStTnN+])(\+\s?)?{_TOKEN}(?:{_SEP}{{1,5}}{_TOKEN})*", re.IGNORECASE)
_TOKEN_RE = re.compile(_TOKEN, re.IGNORECASE)
_UNIT_RE = re.compile(rf"({'|'.join(_WORDS)}|[0-9]|(?-i:[oOlI]))", re.IGNORECASE)
_NUMBER_WORD = re.compile("|".join(_WORDS), re.IGNORECASE)
_LOCAL = "L"  # prefix of a 7-digit North-American local number waiting for an area code

_TLDS = (
    "com",
    "net",
    "org",
    "edu",
    "gov",
    "io",
    "co",
    "me",
    "us",
    "ca",
    "uk",
    "info",
    "biz",
    "xxx",
    "ly",
    "tv",
    "de",
    "fr",
    "ru",
    "in",
    "mx",
    "au",
    "nl",
    "es",
    "it",
    "app",
    "site",
    "online",
    "club",
)
_TLD = "|".join(sorted(_TLDS, key=len, reverse=True))
_URL_HINT = re.compile(rf"https?:|www\.|\.(?:{_TLD})\b", re.IGNORECASE)
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"
)
_AT = r"\s*(?:\[\s*at\s*\]|\(\s*at\s*\)|\{\s*at\s*\}|\sat\s)\s*"
_DOT = r"\s*(?:\[\s*dot\s*\]|\(\s*dot\s*\)|\{\s*dot\s*\}|\sdot\s|\.)\s*"
_SPELLED_EMAIL = re.compile(
    rf"(?<![\w.+-])([A-Za-z0-9][A-Za-z0-9._%+-]*){_AT}([A-Za-z0-9-]+(?:{_DOT}[A-Za-z0-9-]+)*?){_DOT}({_TLD})\b",
    re.IGNORECASE,
)
_DOT_SPLIT = re.compile(_DOT, re.IGNORECASE)
_URL = re.compile(
    rf"(?:\bhttps?://[^\s<>\"']+|\bwww\.[^\s<>\"']+|(?<![\w@.-])[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:{_TLD})\b"
    r"(?:/[^\s<>\"']*)?)",
    re.IGNORECASE,
)
_PLATFORMS = {
    "snapchat": "snapchat",
    "snap": "snapchat",
    "sc": "snapchat",
    "instagram": "instagram",
    "insta": "instagram",
    "ig": "instagram",
    "kik": "kik",
    "twitter": "twitter",
    "telegram": "telegram",
    "tg": "telegram",
    "onlyfans": "onlyfans",
    "of": "onlyfans",
    "tiktok": "tiktok",
    "wechat": "wechat",
    "skype": "skype",
    "facebook": "facebook",
    "fb": "facebook",
    "whatsapp": "whatsapp",
    "line": "line",
}
# reserved example domains (RFC 2606 / 6761) and placeholder hosts are not contacts
_RESERVED_DOMAIN = re.compile(
    r"(?:^|\.)(?:example\.(?:com|net|org)|[^.]+\.(?:example|test|invalid|localhost))$"
)
# short platform words ("IG", "OF", "SC", "TG", "FB", "line") are ordinary words too: they count only with a
# marker (":", "=", "@", "id"); the long names also before a handle-like word ("kik kimmy22")
_AMBIGUOUS = {"ig", "of", "sc", "tg", "fb", "line"}
_LONG_PLATFORMS = tuple(w for w in _PLATFORMS if w not in _AMBIGUOUS)
_HANDLE = re.compile(
    r"(?=[sSiIkKtToOwWfFlL])\b("
    + "|".join(sorted(_PLATFORMS, key=len, reverse=True))
    + r")\b\s*([:=]|id\s*:?|name\s*:?)?\s*(@?)"
    r"([A-Za-z0-9_][A-Za-z0-9_.]{1,29})",
    re.IGNORECASE,
)
_BARE_HANDLE = re.compile(r"(?<![\w@.])@([A-Za-z_][A-Za-z0-9_.]{1,29})")
_HANDLE_STOP = {
    "me",
    "at",
    "or",
    "and",
    "is",
    "my",
    "for",
    "only",
    "now",
    "the",
    "to",
    "id",
    "name",
    "handle",
    "username",
    "with",
    "on",
    "me.",
    "you",
    "it",
    "a",
    "an",
    "pics",
    "pic",
    "chat",
    "story",
}


@dataclass(frozen=True, slots=True)
class Contact:
    """One contact found in a text.

    Attributes:
        type: ``phone``, ``email``, ``url`` or ``handle``.
        value: the normalised value (E.164 phone, lower-cased e-mail / host+path / handle), or its keyed
            HMAC-SHA256 hex digest when the extractor hashes.
        start, end: character offsets into the original text (``text[start:end]`` is what was written).
        platform: the handle's platform (``snapchat``, ``instagram``, ...; ``unknown`` for a bare @name);
            None for other types.
    """

    type: str
    value: str
    start: int
    end: int
    platform: str | None = None

    @property
    def key(self) -> str:
        """A linking key: type, platform and value (``phone:+14155550123``, ``handle:kik:kim22``)."""
        return f"{self.type}:{self.platform}:{self.value}" if self.platform else f"{self.type}:{self.value}"

    def to_dict(self) -> dict:
        """The JSON form of CONTRACT.md: ``{type, value, start, end}`` (+ ``platform`` for handles)."""
        d = {"type": self.type, "value": self.value, "start": self.start, "end": self.end}
        if self.platform:
            d["platform"] = self.platform
        return d


def _token_digits(token: str) -> str | None:
    """Digits of one token (``9four9`` -> ``949``); None when O/o/l/I stand alone without a real digit."""
    if token.isascii() and token.isdigit():
        return token
    out = []
    real = False
    for m in _UNIT_RE.finditer(token):
        u = m.group(1).lower()
        if u in _WORD_DIGIT:
            out.append(_WORD_DIGIT[u])
            real = True
        elif u.isdigit():
            out.append(u)
            real = True
        else:
            out.append("0" if u == "o" else "1")
    return "".join(out) if real else None


def _phone_shape(sizes: tuple[int, ...]) -> bool:
    """Whether digit groups of these sizes look like a written phone number (after any country code):
    a 7-digit local number only as one block, ``3-4`` or digits spaced one by one; a 10-digit number
    in any grouping of blocks of at most 4 digits (posters split them freely: ``19.3-151-3194``),
    or ``3-7`` / ``6-4`` / one block."""
    if len(sizes) == 1 or all(s == 1 for s in sizes):
        return True
    if sum(sizes) == 7:
        return sizes == (3, 4)
    return max(sizes) <= 4 or sizes in ((3, 7), (6, 4))


@lru_cache(maxsize=1 << 16)
def _parse_phone(digits: str, region: str, strict: bool) -> str | None:
    """E.164 of a digit string (``+`` prefix = international) when possible as a full number (never a
    local-only length) and, when ``strict``, valid in ``region``."""
    try:
        num = phonenumbers.parse(digits, region)
    except phonenumbers.NumberParseException:
        return None
    ok = phonenumbers.is_possible_number_with_reason(num) == phonenumbers.ValidationResult.IS_POSSIBLE
    if ok and strict:
        ok = phonenumbers.is_valid_number(num)
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164) if ok else None


class ContactExtractor:
    """Finds contacts in ad texts. Thread-safe and stateless after construction.

    Args:
        region: default region (ISO 3166 alpha-2) for numbers written without a country code.
        strict: keep a phone only when ``phonenumbers.is_valid_number`` (an assigned range) rather than
            ``is_possible_number`` (right length for the region).
        hash_key: when given (bytes or str), every value is replaced by
            ``hmac_sha256(hash_key, "<type>:<value>")`` hex, so equal contacts still match.
        types: the contact types to look for (default all of ``CONTACT_TYPES``).

    Raises:
        ValueError: unknown region or type, or an empty hash key.
    """

    def __init__(
        self,
        region: str = "US",
        *,
        strict: bool = False,
        hash_key: bytes | str | None = None,
        types: tuple[str, ...] = CONTACT_TYPES,
    ) -> None:
        region = str(region).upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {region!r}; use an ISO 3166 alpha-2 code such as 'US'")
        bad = [t for t in types if t not in CONTACT_TYPES]
        if bad:
            raise ValueError(f"unknown contact type(s) {bad}; use {list(CONTACT_TYPES)}")
        if hash_key is not None and len(hash_key) == 0:
            raise ValueError("hash_key must not be empty")
        self.region = region
        self.strict = bool(strict)
        self.types = tuple(types)
        self._key = hash_key.encode() if isinstance(hash_key, str) else hash_key

    def extract(self, text: str) -> list[Contact]:
        """Contacts in ``text``, ordered by start offset; overlapping finds keep the earlier, longer one.

        Args:
            text: one ad text (any length; only the first ``MAX_TEXT_CHARS`` characters are searched).

        Returns:
            A list of ``Contact``; empty for an empty text.

        Raises:
            TypeError: ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        if not text:
            return []
        folded = text[:MAX_TEXT_CHARS]
        if _FOLD_RE.search(folded):
            folded = folded.translate(_FOLD)
        found: list[Contact] = []
        lower = folded.lower()  # for cheap pre-checks only (offsets come from ``folded``)
        if "email" in self.types and ("@" in folded or ("at" in lower and "dot" in lower or "." in lower)):
            found += self._emails(folded, lower)
        if "url" in self.types and "." in folded and _URL_HINT.search(folded):
            found += self._urls(folded)
        if "handle" in self.types and (
            "@" in folded or ":" in folded or "=" in folded or any(w in lower for w in _LONG_PLATFORMS)
        ):
            found += self._handles(folded)
        if "phone" in self.types:
            masked = _address_spans(folded) if "." in folded else []
            found += [
                p for p in self._phones(folded) if not any(s < p.end and p.start < e for s, e in masked)
            ]
        found = _drop_overlaps(found)
        if self._key is not None:
            found = [Contact(c.type, self._hash(c), c.start, c.end, c.platform) for c in found]
        return found

    def _hash(self, c: Contact) -> str:
        assert self._key is not None  # only called when hashing
        return hmac.new(self._key, c.key.encode("utf-8"), hashlib.sha256).hexdigest()

    # -- phones ---------------------------------------------------------------------------------
    def _phones(self, folded: str) -> list[Contact]:
        out = []
        for run in _RUN.finditer(folded):
            plus = run.group(1) is not None
            tokens = [
                (t.group(0), t.start(), t.end()) for t in _TOKEN_RE.finditer(folded, run.start(), run.end())
            ]
            spelled = any(not t.isdigit() and _NUMBER_WORD.search(t) for t, _, _ in tokens)
            groups: list[tuple[str, int, int]] = []  # (digits, start, end) per token
            for tok, start, end in tokens:
                d = ("0" if spelled else None) if tok.lower() == "oh" else _token_digits(tok)
                if d is None:  # a lone O/l (or "oh" among plain digits): ends the current stretch
                    out += self._cut(groups, plus, run.start())
                    groups, plus = [], False
                    continue
                groups.append((d, start, end))
            out += self._cut(groups, plus, run.start())
        return self._with_area_codes(out)

    def _with_area_codes(self, phones: list[Contact]) -> list[Contact]:
        """Give each 7-digit local number the area code of the last full ``+1`` number before it (a
        second number written without its area code shares the first one's); drop it without one."""
        out: list[Contact] = []
        area = None
        for c in phones:
            if c.value.startswith(_LOCAL):
                value = _parse_phone(area + c.value[1:], self.region, self.strict) if area else None
                if value is not None:
                    out.append(Contact("phone", value, c.start, c.end))
                continue
            out.append(c)
            if c.value.startswith("+1") and len(c.value) == 12:
                area = c.value[2:5]
        return out

    def _cut(self, groups: list[tuple[str, int, int]], plus: bool, run_start: int) -> list[Contact]:
        """Phone numbers in consecutive digit groups, left to right, longest match first."""
        out, i, n = [], 0, len(groups)
        while i < n:
            best = None
            total = 0
            for j in range(i, n):
                total += len(groups[j][0])
                if total > 15:
                    break
                value = self._phone_value(groups, i, j, plus and i == 0)
                if value is not None:
                    best = (j, value)
            if best is None:
                i += 1
                continue
            j, value = best
            start = run_start if plus and i == 0 else groups[i][1]
            out.append(Contact("phone", value, start, groups[j][2]))
            i = j + 1
        return out

    def _phone_value(self, groups, i: int, j: int, plus: bool) -> str | None:
        digits = "".join(g[0] for g in groups[i : j + 1])
        if plus:
            return _parse_phone("+" + digits, self.region, self.strict) if len(digits) >= 8 else None
        sizes = tuple(len(g[0]) for g in groups[i : j + 1])
        nanp = self.region in ("US", "CA") or phonenumbers.country_code_for_region(self.region) == 1
        if nanp:
            if len(digits) == 11 and digits[0] == "1":
                sizes = (sizes[0] - 1,) + sizes[1:] if sizes[0] > 1 else sizes[1:]
                digits = digits[1:]
            elif len(digits) not in (7, 10):
                return None
            if len(digits) == 7 and digits[0] in "01":
                return None  # local numbers start with 2-9 ("1000000%" is not a phone)
        elif not 7 <= len(digits) <= 12:
            return None
        if not sizes or not _phone_shape(sizes):
            return None
        if len(sizes) > 1 and all(g[0].endswith("0") for g in groups[i : j + 1]):
            return None  # "200 250 3000": a price list, not a phone
        if len(digits) == 7 and nanp:
            return _LOCAL + digits  # an area code is needed first (``_with_area_codes``)
        return _parse_phone(digits, self.region, self.strict)

    # -- e-mails, URLs, handles -------------------------------------------------------------------
    def _emails(self, folded: str, lower: str) -> list[Contact]:
        out = []
        if "@" in folded:
            out += [Contact("email", m.group(0).lower(), m.start(), m.end()) for m in _EMAIL.finditer(folded)]
        spelled = any(a in lower for a in (" at ", "[at]", "(at)", "{at}", "[ at ]", "( at )"))
        for m in _SPELLED_EMAIL.finditer(folded) if spelled else ():
            domain = ".".join(p for p in _DOT_SPLIT.split(m.group(2)) if p)
            out.append(Contact("email", f"{m.group(1)}@{domain}.{m.group(3)}".lower(), m.start(), m.end()))
        return [c for c in out if not _RESERVED_DOMAIN.search(c.value.rpartition("@")[2])]

    def _urls(self, folded: str) -> list[Contact]:
        out = []
        for m in _URL.finditer(folded):
            raw = m.group(0).rstrip(".,;:!?)]}'\"")
            value = re.sub(r"^(?:https?://)?(?:www\.)?", "", raw, flags=re.IGNORECASE)
            host, sep, path = value.partition("/")
            value = (host.lower() + sep + path).rstrip("/")
            if host and "." in host and not _RESERVED_DOMAIN.search(host.lower()):
                out.append(Contact("url", value, m.start(), m.start() + len(raw)))
        return out

    def _handles(self, folded: str) -> list[Contact]:
        out = []
        for m in _HANDLE.finditer(folded):
            word = m.group(1)
            raw = m.group(4).rstrip(".")
            handle = raw.lower()
            if handle in _HANDLE_STOP or handle in _PLATFORMS or len(handle) < 2:
                continue
            # "OF FUN", "LINE UP": a platform word counts only with a marker (":", "@", "id") or a handle
            # that does not look like a plain word (digits, "_" or ".")
            marker = bool(m.group(2) or m.group(3))
            if not marker and (
                word.lower() in _AMBIGUOUS or not any(ch.isdigit() or ch in "_." for ch in raw)
            ):
                continue
            end = m.start(4) + len(raw)
            out.append(Contact("handle", handle, m.start(), end, _PLATFORMS[word.lower()]))
        for m in _BARE_HANDLE.finditer(folded):
            handle = m.group(1).rstrip(".").lower()
            if handle not in _HANDLE_STOP:
                out.append(
                    Contact(
                        "handle", handle, m.start(), m.start() + 1 + len(m.group(1).rstrip(".")), "unknown"
                    )
                )
        return out


def _address_spans(folded: str) -> list[tuple[int, int]]:
    """Spans of every URL and e-mail address in ``folded``, reserved example domains included: digits
    inside them (``example.com/ads/4155550123``) are part of an address, not a phone number."""
    spans = []
    if _URL_HINT.search(folded):
        spans += [m.span() for m in _URL.finditer(folded)]
    if "@" in folded:
        spans += [m.span() for m in _EMAIL.finditer(folded)]
    return spans


def _drop_overlaps(found: list[Contact]) -> list[Contact]:
    """Sort by start; of overlapping contacts keep the one found first in priority order (e-mail > URL >
    handle > phone), then the longer."""
    prio = {"email": 0, "url": 1, "handle": 2, "phone": 3}
    ranked = sorted(found, key=lambda c: (prio[c.type], c.start, -(c.end - c.start)))
    starts: list[int] = []  # kept intervals, sorted by start (they never overlap each other)
    ends: list[int] = []
    kept: list[Contact] = []
    for c in ranked:
        i = bisect.bisect_right(starts, c.start)
        if (i > 0 and ends[i - 1] > c.start) or (i < len(starts) and starts[i] < c.end):
            continue
        starts.insert(i, c.start)
        ends.insert(i, c.end)
        kept.append(c)
    return sorted(kept, key=lambda c: c.start)


@lru_cache(maxsize=8)
def _default_extractor(region: str, strict: bool) -> ContactExtractor:
    return ContactExtractor(region, strict=strict)


def extract_contacts(text: str, *, region: str = "US", strict: bool = False) -> list[Contact]:
    """``ContactExtractor(region, strict=strict).extract(text)`` with a cached extractor (see the class)."""
    return _default_extractor(str(region).upper(), bool(strict)).extract(text)
