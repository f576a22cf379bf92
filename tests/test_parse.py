"""`server.parse`: the ASCII rules for numbers, ids, cursors and byte ranges, exact in and out."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core import parse
from server.core.errors import BadRequest, RangeNotSatisfiable

# superscript two, Arabic-Indic, Extended Arabic-Indic, Devanagari, fullwidth, math
NOT_ASCII_DIGITS = [
    "\u00b2",
    "\u0663",
    "\u06f5",
    "\u0967",
    "\uff10",
    "\U0001d7d8",
    "\u00b92",
    "3\u00b2",
]


@pytest.mark.parametrize("text", ["", " 7", "7 ", "+7", "-7", "1_0", "1.0", "0x1", "1e3", "7\n",
                                  "1" * 19, *NOT_ASCII_DIGITS])  # fmt: skip
def test_uint_refuses_anything_but_ascii_digits(text):
    assert "²".isdigit() and int("٣") == 3 and int("1_0") == 10  # what Python alone would accept
    assert parse.uint(text) is None


def test_uint_and_its_bounds():
    assert parse.uint("0") == 0 and parse.uint("0042") == 42
    assert parse.uint("9" * 18) == 10**18 - 1  # fits a Redis integer (< 2**63)
    assert parse.uint("12345", max_digits=4) is None
    assert parse.canonical_uint("42") == 42 and parse.canonical_uint("042") is None
    assert parse.canonical_uint("0") == 0
    assert [parse.int_in(t, 1, 100) for t in ("1", "100", "0", "101", "0100", "²", "")] == [
        1, 100, None, None, None, None, None,
    ]  # fmt: skip


@given(st.text(max_size=20))
def test_uint_agrees_with_int_on_ascii_digits_only(text):
    value = parse.uint(text)
    if value is None:
        assert not (0 < len(text) <= 18 and all(c in "0123456789" for c in text))
    else:
        assert all(c in "0123456789" for c in text) and value == int(text)


def test_user_ids_and_item_ids():
    assert parse.is_user_id("u_ab-9") and not parse.is_user_id("u_ab\n")
    assert not parse.is_user_id("") and not parse.is_user_id("x" * 65)
    assert not parse.is_user_id("é") and not parse.is_user_id("a b")
    assert parse.split_item_id("u_ab.7") == ("u_ab", 7)
    assert parse.split_item_id("u.1.2") is None  # the owner part is a user id: no dots
    for bad in ("u_ab.²", "u_ab.٣", "u_ab.07", "u_ab.0", "u_ab.", ".7", "u_ab\n.7", "u_ab.7\n",
                "u_ab." + "9" * 16, "u_ab.-1", "u_ab. 7", "u_ab.1_0", "u_ab"):  # fmt: skip
        assert parse.split_item_id(bad) is None, bad
    assert parse.split_item_id("u_ab." + "9" * 15) == ("u_ab", 10**15 - 1)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_offset_cursors_round_trip_and_refuse_the_rest():
    for offset in (0, 20, 10**15):
        assert parse.offset_cursor(parse.encode_offset_cursor(offset)) == offset
    for bad in ("!!!", "zz", "é", _b64("x:1"), _b64("o:²"), _b64("o:٣"), _b64("o:-1"),
                _b64("o:" + "9" * 30), _b64("o:01"), _b64("o:"), _b64("o:1 ")):  # fmt: skip
        assert parse.offset_cursor(bad) is None, bad
    raw = base64.urlsafe_b64encode(b"\xff\xfe").decode()
    assert parse.offset_cursor(raw) is None


def test_score_cursors():
    assert parse.score_cursor("1764504000123:u_ab") == (1764504000123, "u_ab")
    for bad in ("abc", "123:", ":u_ab", "²:u_ab", "-5:u_ab", "9" * 19 + ":u_ab", "1:a b", "1"):
        assert parse.score_cursor(bad) is None, bad


def test_content_length():
    assert parse.content_length("123") == 123 and parse.content_length(" 5 ") == 5
    for bad in (None, "", "²", "-1", "1,2", "0x10", "1" * 19):
        assert parse.content_length(bad) is None


@pytest.mark.parametrize(
    ("header", "ranges"),
    [
        ("bytes=0-9", [(0, 9)]),
        ("bytes=0-", [(0, 99)]),
        ("bytes=-10", [(90, 99)]),
        ("bytes=-1000", [(0, 99)]),
        ("bytes=90-1000", [(90, 99)]),
        ("BYTES = 0-0", [(0, 0)]),
        ("bytes=0-1, 5-6,,", [(0, 1), (5, 6)]),
        ("bytes=0-1,500-600", [(0, 1)]),  # the unsatisfiable one is left out (RFC 9110 14.2)
        ("items=0-1", None),  # another unit: ignored, the whole file is sent
    ],
)
def test_byte_ranges(header, ranges):
    assert parse.byte_ranges(header, 100) == ranges


@pytest.mark.parametrize(
    "header", ["bytes=abc", "bytes=5-1", "bytes=", "bytes", "=0-1", "bytes=1-2-3", "bytes=-",
               "bytes=²-3", "bytes=0-٣", "bytes=1_0-20", "bytes=+1-2", "bytes=0-1,x"],
)  # fmt: skip
def test_malformed_byte_ranges_are_400(header):
    with pytest.raises(BadRequest):
        parse.byte_ranges(header, 100)


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=500-600", "bytes=-0", "bytes=200-,-0"])
def test_unsatisfiable_byte_ranges_are_416_with_the_size(header):
    with pytest.raises(RangeNotSatisfiable) as info:
        parse.byte_ranges(header, 100)
    assert info.value.status == 416 and info.value.headers["Content-Range"] == "bytes */100"


def test_too_many_ranges_are_416():
    with pytest.raises(RangeNotSatisfiable):
        parse.byte_ranges("bytes=" + ",".join(f"{n}-{n}" for n in range(101)), 1000)
    assert (
        len(parse.byte_ranges("bytes=" + ",".join(f"{n}-{n}" for n in range(100)), 1000) or [])
        == 100
    )
