"""Normalised match keys: the same email or phone written differently by each system
must compare equal."""

from __future__ import annotations

import re
import unicodedata

_NON_DIGITS = re.compile(r"\D")


def normalize_email(raw: str | None) -> str | None:
    """Trimmed, Unicode-normalised, case-folded; None when it cannot be an address."""
    if not raw:
        return None
    email = unicodedata.normalize("NFKC", raw).strip().casefold()
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or any(ch.isspace() for ch in email):
        return None
    return email


def normalize_phone(raw: str | None, country_code: str = "86") -> str | None:
    """E.164 (`+8613800138000`). A number without a country code is taken as national
    for `country_code`; None when too short or too long to be a phone number."""
    if not raw:
        return None
    text = raw.strip()
    digits = _NON_DIGITS.sub("", text)
    if text.startswith("+"):
        pass
    elif digits.startswith("00"):
        digits = digits[2:]
    elif not digits.startswith(country_code) or len(digits) <= 11:
        digits = country_code + digits.lstrip("0")
    if not 8 <= len(digits) <= 15:
        return None
    return "+" + digits
