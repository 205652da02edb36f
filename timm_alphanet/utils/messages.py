"""Messages that quote what users hand us: bounded reprs, display paths and one-line error texts; no torch.

A value from a file or a caller may be arbitrarily large: every message quotes it through `bounded_repr` (at most
200 characters, in time independent of its size), a path through `display_path`, another error through
`short_message`. reprlib is the starting point; what is added is bounds for subclasses and huge ints/bytes.
"""
import os
import reprlib
from typing import Any, Union

__all__ = ['MAX_REPR', 'bounded_repr', 'display_path', 'short_message']

MAX_REPR = 200  # characters of a value quoted in a message


class _BoundedRepr(reprlib.Repr):
    """reprlib with small limits everywhere; container subclasses and huge ints/bytes are bounded too."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = self.maxset = self.maxfrozenset = 10
        self.maxdeque = 10
        self.maxstring = self.maxother = 80
        self.maxlong = 40

    def repr1(self, x: Any, level: int) -> str:
        # reprlib picks a method by the exact type name, so an OrderedDict or a dict subclass would fall
        # back to the full builtin repr
        for base, method in ((dict, self.repr_dict), (list, self.repr_list), (tuple, self.repr_tuple),
                             (set, self.repr_set), (frozenset, self.repr_frozenset)):
            if isinstance(x, base) and type(x) is not base:
                return f'{type(x).__name__}({method(x, level)})'
        return super().repr1(x, level)

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # repr() of a huge int is slow (and refused beyond 4300 digits)
            return f'<int of {x.bit_length()} bits>'
        return super().repr_int(x, level)

    def repr_bytes(self, x: bytes, level: int) -> str:
        text = repr(x[:self.maxstring])
        return text if len(x) <= self.maxstring else text + '...'

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return f'bytearray({self.repr_bytes(bytes(x[:self.maxstring + 1]), level)})'


_REPR = _BoundedRepr()


def bounded_repr(value: Any, limit: int = MAX_REPR) -> str:
    """A repr of `value` for an error message: at most `limit` characters, in time independent of its size."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def display_path(path: Any, limit: int = 300) -> str:
    """A file name for a message: the path as given, shortened in the middle if it is very long."""
    try:
        text = os.fspath(path)
    except TypeError:
        return bounded_repr(path)
    if isinstance(text, bytes):
        text = text.decode('utf-8', 'backslashreplace')
    return text if len(text) <= limit else text[:limit // 2] + '...' + text[-(limit // 2):]


def short_message(e: Union[BaseException, str], limit: int = 300) -> str:
    """One line of at most `limit` characters from an error (or text), for quoting inside another message.

    PyYAML's messages span several lines with a snippet of the file; they become 'problem at line L, column C'.
    """
    mark = getattr(e, 'problem_mark', None)
    if getattr(e, 'problem', None) and mark is not None:
        context = getattr(e, 'context', None)
        text = f"{context + ': ' if context else ''}{e.problem} at line {mark.line + 1}, column {mark.column + 1}"
    else:
        text = ' '.join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + '...'
