"""The value checks the farm's settings share: whole numbers, numbers, seconds.

``bool`` is an ``int`` to Python but never a count or a duration in master.cfg, so every
check here refuses ``True`` and ``False``.
"""

from __future__ import annotations

import sys
from typing import Union

if sys.version_info >= (3, 10):
    from typing import TypeGuard
else:  # pragma: no cover - Python 3.9
    from typing_extensions import TypeGuard

__all__ = ["is_number", "is_positive", "is_whole", "is_whole_at_least"]


def is_whole(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a whole number (an ``int`` that is not a ``bool``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[Union[int, float]]:
    """Whether ``value`` is a real number (``int`` or ``float``, not a ``bool``, not NaN).

    NaN is refused: it is no amount of anything and compares false with every bound.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def is_positive(value: object) -> TypeGuard[Union[int, float]]:
    """Whether ``value`` is a number > 0, such as a number of seconds to wait."""
    return is_number(value) and value > 0


def is_whole_at_least(value: object, least: int) -> TypeGuard[int]:
    """Whether ``value`` is a whole number >= ``least``, such as a count or a size."""
    return is_whole(value) and value >= least
