"""Value checks shared by the space types: plain Python, no torch."""
from typing import Any, Sequence, Tuple

__all__ = ['int_tuple', 'check_int']


def int_tuple(name: str, value: Any) -> Tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f'{name} must be a list of ints, got {value!r}')
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError(f'{name} must contain ints, got {v!r} in {list(value)!r}')
        out.append(v)
    return tuple(out)


def check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'{name} must be an int, got {value!r}')
    return value
