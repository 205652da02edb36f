"""Plain-value helpers shared across the package: numbers from numpy/torch scalars, bounded reprs, the common
start of every `from_dict`. Plain Python (no numpy or torch import): numpy and torch scalars are recognised by the
protocols they implement (`__index__`, `numbers.Real`).
"""
import math
import numbers
import operator
import reprlib
from typing import Any, Mapping, Optional, Type, TypeVar, Union

__all__ = ['plain_number', 'plain_items', 'as_int', 'as_float', 'short_repr', 'short_text', 'instance_or_mapping']

T = TypeVar('T')

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 12  # an arch list has up to 9 entries


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
        raise ValueError(f'{name} must be an int{"" if minimum is None else f" >= {minimum}"}, got {short_repr(value)}')
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
        raise ValueError(f'{name} must be a number in {interval}, got {short_repr(value)}')
    return float(value)


def short_repr(value: Any) -> str:
    """repr(value), truncated, for error messages (a value from a file or a caller may be arbitrarily large)."""
    return _REPR.repr(value)


def short_text(text: str, limit: int = 200) -> str:
    """`text` (e.g. a path), shortened in the middle to at most about `limit` characters, for messages."""
    return text if len(text) <= limit else f'{text[:limit // 2]}...{text[-(limit // 2 - 3):]}'


def instance_or_mapping(value: Any, cls: Type[T], what: str) -> Union[T, Mapping[str, Any]]:
    """The start of every `from_dict`: `value` itself if it already is a `cls`, else `value` checked to be a mapping.

    Raises:
        ValueError: naming `what` (e.g. 'an arch') and the type that was given.
    """
    if isinstance(value, cls) or isinstance(value, Mapping):
        return value
    raise ValueError(f'{what} must be a {cls.__name__} or a dict, got {type(value).__name__}')
