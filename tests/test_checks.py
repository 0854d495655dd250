"""clenv.checks: the shared argument checks and the messages they give."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clenv.checks import check_flags, check_range


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("weight_decay", -1.0, 0), "weight_decay must be >= 0, got -1.0"),
        (("chunk", 0, 1), "chunk must be >= 1, got 0"),
        (("Adam's lr", -0.1, 0.0), "Adam's lr must be >= 0.0, got -0.1"),
        (("momentum", 1.0, 0.0, 1.0), "momentum must be in [0.0, 1.0), got 1.0"),
        (("momentum", -0.5, 0.0, 1.0), "momentum must be in [0.0, 1.0), got -0.5"),
        (("rate", 1.5, 0, 1, True), "rate must be in [0, 1], got 1.5"),
    ],
)
def test_check_range_refuses_with_the_argument_bound_and_value(args, message):
    with pytest.raises(ValueError) as error:
        check_range(*args[:4], closed=args[4] if len(args) > 4 else False)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "args",
    [
        ("x", 0, 0),
        ("x", 5.5, 0),
        ("x", 0.0, 0.0, 1.0),
        ("x", 0.999, 0.0, 1.0),
        ("x", np.float32(0.5), 0.0, 1.0),
        ("x", math.inf, 0),
    ],
)
def test_check_range_accepts_values_inside_the_bounds(args):
    assert check_range(*args) is None


def test_check_range_closed_accepts_its_upper_bound_and_refuses_nan():
    assert check_range("rate", 1, 0, 1, closed=True) is None
    with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\), got 1$"):
        check_range("rate", 1, 0, 1)
    with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\], got nan$"):
        check_range("rate", math.nan, 0, 1, closed=True)


@pytest.mark.parametrize("bounds", [(0,), (0.0, 1.0)])
def test_check_range_refuses_nan(bounds):
    """NaN compares false with every bound: it is refused, not let through."""
    with pytest.raises(ValueError, match="^lr must be .*, got nan$"):
        check_range("lr", math.nan, *bounds)


def test_check_flags_accepts_python_and_numpy_bools():
    assert check_flags(a=True, b=False, c=np.bool_(True)) is None
    assert check_flags() is None


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0, np.int64(1)])
def test_check_flags_refuses_anything_else_naming_the_flag(value):
    with pytest.raises(ValueError) as error:
        check_flags(ok=True, halve=value, later="not checked first")
    assert str(error.value) == f"halve must be True or False, got {value!r}"


def test_supervised_envs_still_export_check_flags():
    from clenv.envs import supervised

    assert supervised.check_flags is check_flags
