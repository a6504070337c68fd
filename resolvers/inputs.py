"""Written values checked and normalised before any system is asked (`@check(as:)`).

Each check is a pure function from what the caller sent to what is written, raising
ValueError with a message fit for the caller (it never quotes the value back: the value
may be personal data and errors are logged). Emails and phones are normalised as the
identity sync normalises them, so a written key matches the crosswalk's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from connectors.identity.normalize import normalize_email, normalize_phone

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def email(value: Any) -> str:
    normalized = normalize_email(value) if isinstance(value, str) else None
    if normalized is None or len(normalized) > 254:
        raise ValueError("not an email address")
    return normalized


def phone(value: Any) -> str:
    """E.164 (`+8613800138000`); a number without a country code is taken as Chinese."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not a phone number")
    allowed = set("0123456789+-() .")
    if not set(value.strip()) <= allowed or value.strip().count("+") > 1:
        raise ValueError("not a phone number (digits, spaces, +, -, parentheses)")
    normalized = normalize_phone(value)
    if normalized is None:
        raise ValueError("not a phone number (8 to 15 digits with the country code)")
    return normalized


def national_id(value: Any) -> str:
    """An 18-character PRC resident identity number: its birth date and check digit."""
    if not isinstance(value, str):
        raise ValueError("not a resident identity number")
    text = value.strip().upper()
    if len(text) != 18 or not text[:17].isdigit() or not (text[17].isdigit() or text[17] == "X"):
        raise ValueError("not an 18-character resident identity number")
    try:
        dt.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        raise ValueError("the resident identity number holds no valid birth date") from None
    total = sum(int(digit) * weight for digit, weight in zip(text[:17], _ID_WEIGHTS, strict=True))
    if _ID_CHECK[total % 11] != text[17]:
        raise ValueError("the resident identity number's check digit is wrong")
    return text


def date(value: Any) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise ValueError("not a date (YYYY-MM-DD)") from None


CHECKS: dict[str, Callable[[Any], Any]] = {
    "email": email,
    "phone": phone,
    "nationalId": national_id,
    "date": date,
}
