"""Value checks shared by the space types: plain Python, no torch. Messages quote values boundedly."""
from typing import Any, Sequence, Tuple

from ._io import bounded_repr

__all__ = ['int_tuple', 'check_int']


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
