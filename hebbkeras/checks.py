"""Checks of settings: each raises one ValueError that names the setting and what is allowed.

The library, the trainers and the exporter share these, so a bad value reads
the same wherever it is caught.
"""

import math
import numbers


def check_option(name, value, allowed):
    """Raises a ValueError naming the allowed values if `value` is not one."""
    if value not in allowed:
        raise ValueError(
            f"Unknown {name}={value!r}. Expected one of {', '.join(map(repr, allowed))}."
        )


def _real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name, value, minimum=1):
    """`value` must be a whole number >= `minimum` (an integral float such as 3.0 passes)."""
    if not (_real(value) and math.isfinite(value) and int(value) == value and value >= minimum):
        raise ValueError(f"{name}={value} must be an integer >= {minimum}.")


def check_finite(name, value):
    if not (_real(value) and math.isfinite(value)):
        raise ValueError(f"{name}={value} must be a finite number.")


def check_positive(name, value):
    """`value` must be a finite number > 0."""
    check_finite(name, value)
    if not value > 0:
        raise ValueError(f"{name}={value} must be positive.")


def check_between(name, value, low, high, low_open=True, high_open=True):
    """`value` must lie in the interval from `low` to `high` (open ends by default)."""
    check_finite(name, value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value} must lie in {interval}.")
