"""Masks: the CONTRACT.md examples exactly, edge cases, and properties over arbitrary text."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from policies import MASK_NAMES, MASKS, REDACTED, Mask, make_hash_mask, masks_with_hash

KEY = b"0123456789abcdef0123456789abcdef"
HASH = make_hash_mask(KEY, "k1")
ALL_MASKS: dict[str, Mask] = dict(masks_with_hash(KEY, "k1"))

# What each mask's output looks like; an input that is returned unchanged must already
# look like this, i.e. be masked already.
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"


def name_shaped(text: str) -> bool:
    if text == REDACTED:
        return True
    end = 1
    while end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end += 1
    first, stars = text[:end], text[end:]
    if first.isspace():
        return False
    if not stars or set(stars) != {"*"}:
        return False
    is_han = unicodedata.name(first[0], "").startswith("CJK")
    return is_han or len(stars) == 3


SHAPES: dict[str, Callable[[str], object]] = {
    "email": re.compile(r"\S\*\*\*@[^@\s]+|\*\*\*").fullmatch,
    "phone": re.compile(r"[0-9]{3}\*{3,}[0-9]{4}|\*+").fullmatch,
    "national_id": re.compile(r"\S{3}\*{3,}\S{4}|\*+").fullmatch,
    "name": name_shaped,
    "address": re.compile(rf"[{HAN}]{{1,10}}市|[^\s,*\d][^,*\d]*[^\s,*\d]|\*\*\*").fullmatch,
    "redact": re.compile(r"\*\*\*").fullmatch,
    "hash": re.compile(r"h1:k1:[A-Z2-7]{16}").fullmatch,
}


# -- the contract's examples -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "raw", "masked"),
    [
        ("email", "zhang.wei@example.com", "z***@example.com"),
        ("phone", "13800138000", "138****8000"),
        ("phone", "+86 138 0013 8000", "138****8000"),
        ("national_id", "110105199001011234", "110***********1234"),
        ("name", "张伟", "张*"),
        ("name", "欧阳娜娜", "欧***"),
        ("address", "北京市朝阳区建国路88号", "北京市"),
        ("address", "广东省深圳市南山区科技园路1号", "深圳市"),
        ("address", "88 Jianguo Road, Chaoyang District, Beijing 100022", "Beijing"),
        ("redact", "anything at all", "***"),
    ],
)
def test_contract_examples(mask: str, raw: str, masked: str) -> None:
    assert MASKS[mask](raw) == masked


def test_registry_names() -> None:
    assert set(MASKS) == {"email", "phone", "national_id", "name", "address", "redact"}
    assert {*MASKS, "hash"} == set(MASK_NAMES)
    assert set(ALL_MASKS) == MASK_NAMES


# -- email ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("张伟@例子.中国", "张***@例子.中国"),  # non-ASCII local part, IDN domain
        ("Ärger@bücher.de", "Ä***@bücher.de"),
        ("wei@xn--fsqu00a.xn--fiqs8s", "w***@xn--fsqu00a.xn--fiqs8s"),
        ("  Zhang.Wei@Example.COM  ", "Z***@Example.COM"),
        ("a@b", "a***@b"),
        ('"a@b"@example.com', '"***@example.com'),  # split at the last @
        ("zhang.wei.example.com", REDACTED),  # no @
        ("@example.com", REDACTED),
        ("zhang@", REDACTED),
        ("Zhang Wei <zhang@example.com>", REDACTED),  # not one address
        ("", REDACTED),
        ("   ", REDACTED),
        ("@", REDACTED),
    ],
)
def test_email(raw: str, masked: str) -> None:
    assert MASKS["email"](raw) == masked


# -- phone ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("138-0013-8000", "138****8000"),
        ("(138) 0013 8000", "138****8000"),
        ("8613800138000", "138****8000"),
        ("0086 138 0013 8000", "138****8000"),
        ("+86-138-0013-8000", "138****8000"),
        ("１３８００１３８０００", "138****8000"),  # full-width digits
        ("010-6512-3456", "010****3456"),  # Beijing landline, 11 digits
        ("+1 (415) 555-0100", "141****0100"),
        ("12345678", "********"),  # too short to keep 3 + 4
        ("5", "*"),
        ("unknown", REDACTED),
        ("", REDACTED),
        (" \t", REDACTED),
    ],
)
def test_phone(raw: str, masked: str) -> None:
    assert MASKS["phone"](raw) == masked


# -- national id ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("11010519900101123X", "110***********123X"),
        ("110105 19900101 1234", "110***********1234"),
        ("110105-19900101-1234", "110***********1234"),
        ("110105900101123", "110********1123"),  # old 15-digit id, length kept
        ("E12345678", "*********"),  # short: nothing kept
        ("", REDACTED),
        ("  ", REDACTED),
    ],
)
def test_national_id(raw: str, masked: str) -> None:
    assert MASKS["national_id"](raw) == masked


# -- name -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("李娜", "李*"),
        ("司马相如", "司***"),
        ("阿沛·阿旺晋美", "阿******"),
        (" 张伟 ", "张*"),
        ("Wei Zhang", "W***"),  # a fixed *** : neither word count nor lengths shown
        ("Wu", "W***"),
        ("Maximilian Alexander von Habsburg", "M***"),
        ("Émile Zola", "É***"),
        ("E\u0301mile Zola", "E\u0301***"),  # the first grapheme, combining accent included
        ("Ólafur", "Ó***"),
        ("김민준", "김***"),
        ("张", REDACTED),  # a single character: nothing left to hide it behind
        ("W", REDACTED),
        ("", REDACTED),
        ("   ", REDACTED),
    ],
)
def test_name(raw: str, masked: str) -> None:
    assert MASKS["name"](raw) == masked


def test_latin_names_of_different_shapes_look_alike() -> None:
    assert MASKS["name"]("Wei Zhang") == MASKS["name"]("Walter") == MASKS["name"]("W X Y Z")


# -- address ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("上海市浦东新区世纪大道100号", "上海市"),
        ("中国北京市海淀区中关村大街1号", "北京市"),
        ("100022 北京市朝阳区建国路88号", "北京市"),
        ("内蒙古自治区呼和浩特市新城区", "呼和浩特市"),
        ("新疆维吾尔自治区伊犁哈萨克自治州伊宁市解放路", "伊宁市"),
        ("湖北省荆州市沙市区北京路", "荆州市"),
        ("浙江省杭州市西湖区", "杭州市"),
        ("北京市", "北京市"),  # already only a city
        ("1600 Amphitheatre Parkway, Mountain View, CA 94043", "CA"),
        ("10 Downing Street, London SW1A 2AA", "London"),
        ("Rue de Rivoli, Paris,", "Paris"),
        ("北京朝阳区建国路88号", REDACTED),  # no city found
        ("Beijing", REDACTED),  # one part: cannot tell a city from anything else
        ("88 Jianguo Road, 100022", REDACTED),
        ("Flat 3, 12", REDACTED),
        ("Apt 5, São Paulo 01310", "São Paulo"),
        ("", REDACTED),
        ("   ", REDACTED),
    ],
)
def test_address(raw: str, masked: str) -> None:
    assert MASKS["address"](raw) == masked


# -- hash -------------------------------------------------------------------------------


def test_hash_format_and_stability() -> None:
    first = HASH("zhang.wei@example.com")
    assert re.fullmatch(r"h1:k1:[A-Z2-7]{16}", first)
    assert HASH("zhang.wei@example.com") == first
    assert make_hash_mask(KEY, "k1")("zhang.wei@example.com") == first
    assert HASH("Zhang.Wei@example.com") != first  # the exact string is hashed


def test_hash_depends_on_key_and_names_the_key_id() -> None:
    other_key = make_hash_mask(b"another key of 16+ bytes", "k1")
    assert other_key("x")[6:] != HASH("x")[6:]
    rotated = make_hash_mask(KEY, "k2")("x")
    assert rotated.startswith("h1:k2:")
    assert rotated != HASH("x")


@pytest.mark.parametrize(
    ("key", "key_id"),
    [(b"short", "k1"), (b"", "k1"), (KEY, ""), (KEY, "k:1"), (KEY, "x" * 33), (KEY, "k 1")],
)
def test_hash_rejects_weak_keys_and_bad_key_ids(key: bytes, key_id: str) -> None:
    with pytest.raises(ValueError, match="hash mask key"):
        make_hash_mask(key, key_id)


def test_hash_of_lone_surrogate_does_not_raise() -> None:
    assert HASH("\ud800").startswith("h1:k1:")


# -- properties over arbitrary text -----------------------------------------------------

MASK_ITEMS = sorted(ALL_MASKS.items())
mask_params = pytest.mark.parametrize(("name", "mask"), MASK_ITEMS, ids=[n for n, _ in MASK_ITEMS])

# Arbitrary text plus text shaped like the values the masks see.
values = st.one_of(
    st.text(),
    st.text(alphabet="0123456789 +-()*", max_size=30),
    st.from_regex(r"[^@\s]{1,12}@[^@\s]{1,12}", fullmatch=True),
    st.text(alphabet="张伟欧阳娜李王省市区县北京广东深圳路号88 ,*", max_size=20),
    st.text(alphabet=st.characters(categories=["L", "M", "Zs"]), max_size=20),
)


def revealed(text: str) -> Counter[str]:
    return Counter(ch for ch in text if ch != "*")


@mask_params
@given(value=values)
@example(value="")
@example(value=" ")
@example(value="\x00")
@example(value="\ud800\udfff")
def test_masks_never_raise_and_return_text(name: str, mask: Mask, value: str) -> None:
    out = mask(value)
    assert isinstance(out, str)
    assert SHAPES[name](out), out


@mask_params
@given(value=values)
@example(value="ab")
@example(value="13800138000")
@example(value="张伟")
def test_masks_never_return_non_trivial_input_unchanged(name: str, mask: Mask, value: str) -> None:
    out = mask(value)
    if len(value) >= 2 and out == value:
        # only a value that already has the mask's output shape may come back as is
        assert SHAPES[name](value)
        assert name != "hash"


@mask_params
@given(value=values)
def test_masking_twice_never_reveals_more(name: str, mask: Mask, value: str) -> None:
    once = mask(value)
    twice = mask(once)
    if name == "hash":
        assert twice != once  # a pseudonym of a pseudonym, revealing nothing of either
    else:
        assert not revealed(twice) - revealed(once), (once, twice)


@given(value=values)
@example(value="+86 138 0013 8000 ext 12345")
@example(value="1" * 40)
def test_phone_mask_shows_at_most_seven_digits(value: str) -> None:
    out = MASKS["phone"](value)
    assert sum(ch.isdigit() for ch in out) <= 7
    assert set(out) <= set("0123456789*")


@given(value=st.text(min_size=2))
def test_masked_output_never_contains_a_long_input_verbatim(value: str) -> None:
    # except for the parts a mask keeps on purpose (email domain, city), no mask copies
    # a long stretch of a value that is not already masked
    assume("*" not in value)
    for name in ("phone", "national_id", "name", "redact", "hash"):
        out = ALL_MASKS[name](value)
        if len(value.strip()) >= 9:
            assert value.strip() not in out


@given(value=st.text(), other=st.text())
def test_hash_is_stable_and_keyed(value: str, other: str) -> None:
    again = make_hash_mask(KEY, "k1")
    rekeyed = make_hash_mask(KEY[::-1], "k1")
    assert HASH(value) == again(value)
    assert HASH(value) != rekeyed(value)
    if value != other:
        assert HASH(value) != HASH(other)
