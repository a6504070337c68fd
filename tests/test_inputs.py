"""Written values: checked and normalised before any system is asked."""

from __future__ import annotations

import pytest

from resolvers.inputs import date, email, national_id, phone


@pytest.mark.parametrize(
    ("raw", "written"),
    [
        ("  Zhang.Wei@Example.COM ", "zhang.wei@example.com"),
        ("li@example.cn", "li@example.cn"),
    ],
)
def test_emails_are_normalised_as_the_crosswalk_does(raw: str, written: str) -> None:
    assert email(raw) == written


@pytest.mark.parametrize("raw", ["", "no-at-sign", "a@b", "a b@example.com", "x" * 300 + "@e.com"])
def test_bad_emails(raw: str) -> None:
    with pytest.raises(ValueError, match="email"):
        email(raw)


@pytest.mark.parametrize(
    "raw", ["13800138000", "+86 138 0013 8000", "138-0013-8000", "0086 13800138000"]
)
def test_phones_become_e164(raw: str) -> None:
    assert phone(raw) == "+8613800138000"


@pytest.mark.parametrize("raw", ["", "call me", "12", "+86 138 0013 8000 ext 5", "1" * 20])
def test_bad_phones(raw: str) -> None:
    with pytest.raises(ValueError, match="phone"):
        phone(raw)


def test_national_ids_need_a_birth_date_and_their_check_digit() -> None:
    assert national_id("11010519491231002x") == "11010519491231002X"
    with pytest.raises(ValueError, match="check digit"):
        national_id("110105194912310021")
    with pytest.raises(ValueError, match="birth date"):
        national_id("110105194913310028")
    with pytest.raises(ValueError, match="18-character"):
        national_id("1101051949123100")


def test_dates() -> None:
    assert date("2026-12-07") == "2026-12-07"
    with pytest.raises(ValueError, match="date"):
        date("07/12/2026")
