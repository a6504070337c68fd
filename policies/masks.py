"""Masks: pure functions from a raw value to what a masked field may show.

Every mask takes a `str` and returns a `str`, never raises, and never hands back a
non-trivial input (two characters or more) unchanged unless that input already has the
mask's output shape (`z***@example.com`, `张*`, `北京市`, `***`...). Blank input (empty
or whitespace only) becomes `***`. When in doubt a mask reveals less, never more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

Mask = Callable[[str], str]

REDACTED: Final = "***"

# Below this many digits, keeping the first 3 and last 4 would show nearly the whole number.
_PHONE_MIN_DIGITS_TO_KEEP: Final = 10
# The same reasoning for identity numbers: keep 3 + 4 only when at least 3 stay hidden.
_NATIONAL_ID_MIN_LENGTH_TO_KEEP: Final = 10

_HAN_RANGES: Final = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A character of a place name: Han, but none of the suffixes that end a level or a street.
_PLACE_CHAR: Final = rf"(?:(?![省市区县路街号])[{_HAN_RANGES}])"
_CHINESE_CITY: Final = re.compile(
    r"^(?:\d{6}\s*)?"  # a leading postcode
    r"(?:中国|中华人民共和国)?\s*"
    rf"(?:{_PLACE_CHAR}{{2,8}}?(?:省|自治区)\s*)?"  # optional province
    rf"(?:{_PLACE_CHAR}{{2,12}}?(?:自治州|地区|盟)\s*)?"  # optional prefecture
    rf"({_PLACE_CHAR}{{1,10}}市)"
)
_LATIN_CITY_PUNCTUATION: Final = frozenset(" '.-")
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MIN_HASH_KEY_BYTES: Final = 16


def _has_space(text: str) -> bool:
    return any(ch.isspace() for ch in text)


def _first_grapheme(text: str) -> str:
    """The first code point with the combining marks that follow it (`text` not empty)."""
    end = 1
    while end < len(text) and unicodedata.category(text[end]) in ("Mn", "Mc", "Me"):
        end += 1
    return text[:end]


def _is_han(char: str) -> bool:
    return unicodedata.name(char, "").startswith(
        ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")
    )


def mask_redact(value: str) -> str:
    """Everything hidden: always `***`."""
    return REDACTED


def mask_email(value: str) -> str:
    """`zhang.wei@example.com` → `z***@example.com`.

    The first code point of the local part, `***`, then `@` and the domain as written
    (IDN domains included). Split at the last `@`. A value that is not one address (no
    `@`, an empty local part or domain, whitespace inside) is fully redacted, so a
    display name or free text around an address never leaks.
    """
    text = value.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or _has_space(local) or _has_space(domain):
        return REDACTED
    return f"{local[0]}***@{domain}"


def _national_digits(value: str) -> str:
    digits = "".join(str(unicodedata.decimal(ch)) for ch in value if ch.isdecimal())
    if len(digits) == 13 and digits.startswith("86"):
        return digits[2:]
    if len(digits) == 15 and digits.startswith("0086"):
        return digits[4:]
    return digits


def mask_phone(value: str) -> str:
    """`13800138000` and `+86 138 0013 8000` → `138****8000`.

    Digits of any script count (full-width `１３８…` too) and come out as ASCII; every
    other character (spaces, `+`, `-`, brackets, letters) is dropped. A PRC country code
    (`86` before 11 digits, or `0086`) is removed first. Then the first 3 and last 4
    digits are kept and each other digit becomes `*`. With fewer than 10 digits every
    digit becomes `*` (3 + 4 would show almost all of it); with none, `***`. The output
    never holds more than 7 digits.
    """
    digits = _national_digits(value)
    if not digits:
        return REDACTED
    if len(digits) < _PHONE_MIN_DIGITS_TO_KEEP:
        return "*" * len(digits)
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


def mask_national_id(value: str) -> str:
    """`110105199001011234` → `110***********1234`.

    Whitespace and `-` are removed; then the first 3 and last 4 characters are kept and
    the length is kept. Values shorter than 10 become all `*`; blank values `***`.
    """
    text = "".join(ch for ch in value if not ch.isspace() and ch != "-")
    if not text:
        return REDACTED
    if len(text) < _NATIONAL_ID_MIN_LENGTH_TO_KEEP:
        return "*" * len(text)
    return text[:3] + "*" * (len(text) - 7) + text[-4:]


def mask_name(value: str) -> str:
    """`张伟` → `张*`, `欧阳娜娜` → `欧***`, `Wei Zhang` → `W***`.

    The first grapheme is kept. A name that starts with a Han character gets one `*` per
    further non-space character, as the contract's examples show. Any other name gets a
    fixed `***` whatever its length, so neither the number of words nor their lengths
    are revealed. A name of a single grapheme has nothing left to hide behind: `***`.
    """
    text = value.strip()
    if not text:
        return REDACTED
    first = _first_grapheme(text)
    if len(first) == len(text):
        return REDACTED
    if _is_han(first[0]):
        hidden = sum(1 for ch in text[len(first) :] if not ch.isspace())
        return first + "*" * hidden
    return first + "***"


def _latin_city(text: str) -> str | None:
    parts = [part.strip() for part in text.split(",")]
    parts = [part for part in parts if part]
    if len(parts) < 2:
        return None
    words = [word for word in parts[-1].split() if not any(ch.isdigit() for ch in word)]
    city = " ".join(words)
    plausible = all(ch.isalpha() or ch in _LATIN_CITY_PUNCTUATION for ch in city)
    if plausible and sum(ch.isalpha() for ch in city) >= 2:
        return city
    return None


def mask_address(value: str) -> str:
    """The city only; `***` when no city can be found (never the input).

    Chinese addresses: the first part ending in `市`, after an optional postcode, `中国`,
    province (`…省`, `…自治区`) and prefecture (`…自治州`, `…地区`, `…盟`):
    `北京市朝阳区建国路88号` → `北京市`, `广东省深圳市南山区科技园路1号` → `深圳市`.
    Other addresses: the last comma-separated part without its postcode (words holding a
    digit), if at least two parts exist and what remains looks like a place name:
    `88 Jianguo Road, Chaoyang District, Beijing 100022` → `Beijing`.
    """
    text = value.strip()
    if not text:
        return REDACTED
    chinese = _CHINESE_CITY.match(text)
    if chinese:
        return chinese.group(1)
    return _latin_city(text) or REDACTED


def make_hash_mask(key: bytes, key_id: str) -> Mask:
    """A stable keyed pseudonym: `h1:<key_id>:` + 16 base32 characters of HMAC-SHA256.

    The same value under the same key always gives the same pseudonym (so masked values
    can still be counted and joined); another key gives another one. The version `h1`
    and the key id are part of the output so that a key rotation is visible instead of
    silently changing what a pseudonym means. The exact string is hashed: callers that
    want `A@x.com` and `a@x.com` to agree normalise first.

    Raises ValueError for a key shorter than 16 bytes or a key id outside
    `[A-Za-z0-9_-]{1,32}`; the returned mask itself never raises.
    """
    if not isinstance(key, bytes) or len(key) < _MIN_HASH_KEY_BYTES:
        raise ValueError(f"hash mask key must be at least {_MIN_HASH_KEY_BYTES} bytes")
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError("hash mask key id must match [A-Za-z0-9_-]{1,32}")
    prefix = f"h1:{key_id}:"

    def mask_hash(value: str) -> str:
        data = value.encode("utf-8", "surrogatepass")
        digest = hmac.new(key, data, hashlib.sha256).digest()
        return prefix + base64.b32encode(digest)[:16].decode("ascii")

    return mask_hash


# The masks that need no key. `hash` needs one: see `masks_with_hash`.
MASKS: Final[Mapping[str, Mask]] = MappingProxyType(
    {
        "email": mask_email,
        "phone": mask_phone,
        "national_id": mask_national_id,
        "name": mask_name,
        "address": mask_address,
        "redact": mask_redact,
    }
)
KEYED_MASK_NAMES: Final = frozenset({"hash"})
# Every name a policy file may use in `mask(<name>)`.
MASK_NAMES: Final = frozenset(MASKS) | KEYED_MASK_NAMES


def masks_with_hash(key: bytes, key_id: str) -> Mapping[str, Mask]:
    """All masks, `hash` included, keyed with `key` (see `make_hash_mask`)."""
    return MappingProxyType({**MASKS, "hash": make_hash_mask(key, key_id)})
