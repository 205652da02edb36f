"""Checks of plain values from files and callers: ints, floats, int lists, mappings; numpy/torch scalars are recognised
by the protocols they implement (`__index__`, `numbers.Real`), so this module imports neither. Messages name the
value and what is allowed, quoting the value through `bounded_repr`.
"""
import math
import numbers
import operator
from typing import Any, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

from .messages import bounded_repr

__all__ = ['plain_number', 'plain_items', 'as_int', 'as_float', 'int_tuple', 'check_int', 'instance_or_mapping']

T = TypeVar('T')


def plain_number(value: Any) -> Any:
    """`value` as a Python int or float if it is a numpy/torch integer or floating scalar; otherwise unchanged.

    Booleans (Python or numpy) and everything else are returned as they are, so the caller's type check still
    rejects them with its own message.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    try:
        return int(operator.index(value))  # numpy/torch integer scalars; numpy bools refuse __index__
    except TypeError:
        pass
    if isinstance(value, numbers.Real):  # numpy floating scalars register as Real
        return float(value)
    return value


def plain_items(value: Any) -> Any:
    """A list/tuple with its numpy/torch scalars as Python numbers; anything else unchanged (for the caller to judge)."""
    return [plain_number(v) for v in value] if isinstance(value, (list, tuple)) else value


def as_int(name: str, value: Any, minimum: Optional[int] = None) -> int:
    """`value` as a Python int (numpy/torch integers too; bools and floats are refused), at least `minimum`."""
    value = plain_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise ValueError(f'{name} must be an int{"" if minimum is None else f" >= {minimum}"}, got {bounded_repr(value)}')
    return value


def as_float(name: str, value: Any, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
             high_open: bool = False) -> float:
    """`value` as a float in the interval from `low` to `high` (each end open or closed); NaN is never inside.

    An infinite end that is closed admits that infinity: ``high=math.inf, high_open=True`` means finite.
    """
    value = plain_number(value)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) \
        and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
        raise ValueError(f'{name} must be a number in {interval}, got {bounded_repr(value)}')
    return float(value)


def instance_or_mapping(value: Any, cls: Type[T], what: str) -> Union[T, Mapping[str, Any]]:
    """The start of every `from_dict`: `value` itself if it already is a `cls`, else `value` checked to be a mapping.

    Raises:
        ValueError: naming `what` (e.g. 'an arch') and the type that was given.
    """
    if isinstance(value, cls) or isinstance(value, Mapping):
        return value
    raise ValueError(f'{what} must be a {cls.__name__} or a dict, got {type(value).__name__}')


def int_tuple(name: str, value: Any) -> Tuple[int, ...]:
    """`value` as a tuple of ints (integral floats accepted), or a ValueError naming `name` and the bad entry."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f'{name} must be a list of ints, got {bounded_repr(value)}')
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError(f'{name} must contain ints, got {bounded_repr(v)} at index {i} of '
                                 f'{bounded_repr(value)}')
        out.append(v)
    return tuple(out)


def check_int(name: str, value: Any) -> int:
    """`value` if it is an int (not a bool), else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'{name} must be an int, got {bounded_repr(value)}')
    return value
