"""The argument types every command shares: parse, check the range, say what is allowed."""

from __future__ import annotations

import argparse
import math

import pytest

from drencoder.cli import argtypes


@pytest.mark.parametrize(
    ("kwargs", "text", "value"),
    [
        ({"lo": 1, "integer": True}, "3", 3),
        ({"lo": 0, "lo_open": True}, "0.5", 0.5),
        ({"lo": 0, "hi": 1, "lo_open": True, "hi_open": False}, "1", 1.0),
        ({"lo": 2, "integer": True}, "2", 2),
    ],
)
def test_number_accepts_values_in_range(kwargs, text, value):
    assert argtypes.number(**kwargs)(text) == value


@pytest.mark.parametrize(
    ("kwargs", "text", "message"),
    [
        ({"lo": 1, "integer": True}, "0", "must be an integer in [1, inf), got 0"),
        ({"lo": 1, "integer": True}, "1.5", "must be an integer in [1, inf), got '1.5'"),
        ({"lo": 0, "lo_open": True}, "0", "must be a number in (0, inf), got 0"),
        ({"lo": 0, "hi": 1, "lo_open": True}, "1", "must be a number in (0, 1), got 1"),
        ({"lo": 0}, "nan", "must be a number in [0, inf), got nan"),
        ({"lo": 0}, "inf", "must be a number in [0, inf), got inf"),
    ],
)
def test_number_refuses_values_out_of_range_and_says_the_range(kwargs, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        argtypes.number(**kwargs)(text)
    assert str(info.value) == message


def test_number_lists_check_every_item():
    assert argtypes.number_list(lo=0, lo_open=True)("2, 8") == (2.0, 8.0)
    assert argtypes.number_list(lo=0, integer=True)("0,1,2") == (0, 1, 2)
    with pytest.raises(argparse.ArgumentTypeError, match=r"each in \(0, inf\)"):
        argtypes.number_list(lo=0, lo_open=True)("2,0")
    with pytest.raises(argparse.ArgumentTypeError, match="expected integers like 0,1,2"):
        argtypes.number_list(lo=0, integer=True)("0,-1")
    assert math.isclose(argtypes.number_list(lo=0, lo_open=True)("1e-3")[0], 1e-3)


def test_names_split_on_commas_and_none_is_empty():
    assert argtypes.names("a, b,,c") == ("a", "b", "c")
    assert argtypes.names("none") == ()
