"""Bounded reading of files users hand us (YAML, JSON, raw bytes), bounded reprs for messages, and atomic writing of
the small files we write; no torch.

Every file we read may be truncated, forged or huge. These readers refuse a file before it can cost much: its
size is checked before reading, text must be UTF-8, and parsed YAML/JSON is measured as the tree a consumer
would walk (aliases and shared objects counted once per reference, but measured in time proportional to the
file), with a bounded nesting depth. Errors are `ValueError` (`FileNotFoundError` for a missing file) with a
one-line message that starts with the file name, and never quote an unbounded value (`bounded_repr`).

The stdlib/PyYAML readers were the starting point: `json.loads` and `yaml.SafeLoader` are used for parsing;
what is added is the bounds (PyYAML has none for aliases or depth, `json` only Python's recursion limit).
"""
import json
import os
import reprlib
import stat
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import yaml

__all__ = [
    'MAX_TEXT_BYTES', 'MAX_NODES', 'MAX_DEPTH', 'INT_HASH_MODULUS', 'bounded_repr', 'display_path',
    'regular_file_size', 'read_bounded_bytes', 'short_message',
    'read_text_file', 'parse_yaml', 'read_yaml_file', 'parse_json', 'read_json_file', 'check_tree', 'write_atomic',
]

PathLike = Union[str, os.PathLike]

MAX_TEXT_BYTES = 1 << 20  # configs, arch files and config.json are a few KB; 1 MiB parses in ~3 s at worst
MAX_NODES = 100_000  # values in the tree a consumer walks (aliases expanded); a training YAML has a few hundred
MAX_DEPTH = 64  # nesting levels; configs nest 3-4 deep
MAX_REPR = 200  # characters of a value quoted in a message
INT_HASH_MODULUS = (1 << 61) - 1  # CPython's int hash is x mod this: smaller ints never collide
_MAX_NUMBER_CHARS = 100  # YAML numbers: longer ones (e.g. 1:1:1:... sexagesimal) cost quadratic time to build


# ---------------------------------------------------------------------------------------------------------
# messages
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


# ---------------------------------------------------------------------------------------------------------
# files
def _a(what: str) -> str:
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def regular_file_size(path: PathLike, what: str = 'file') -> int:
    """The size of `path`, checked to be an existing regular file (not a directory, FIFO or device).

    Raises:
        TypeError: `path` is not a str or os.PathLike.
        FileNotFoundError: it does not exist.
        ValueError: it is a directory or not a regular file, or cannot be examined.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'{what} must be a path (str or os.PathLike), got {type(path).__name__}')
    name = display_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f'{what} not found: {name}') from None
    except (OSError, ValueError) as e:  # ValueError: embedded NUL
        raise ValueError(f'{name}: cannot read the {what}: {getattr(e, "strerror", None) or e}') from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f'{name}: is a directory, not {_a(what)}')
    if not stat.S_ISREG(st.st_mode):  # FIFOs and devices can block or never end
        raise ValueError(f'{name}: not a regular file, so not {_a(what)}')
    return st.st_size


def read_bounded_bytes(path: PathLike, max_bytes: int, what: str = 'file') -> bytes:
    """The content of a regular file of at most `max_bytes` bytes.

    Args:
        path: the file.
        max_bytes: refuse larger files (checked before reading, and again while reading).
        what: what the file is, for messages (e.g. 'arch file').

    Raises:
        TypeError: `path` is not a str or os.PathLike.
        FileNotFoundError: it does not exist.
        ValueError: it is a directory or not a regular file, cannot be read, or is too large.
    """
    size = regular_file_size(path, what)
    name = display_path(path)
    too_large = f'{name}: too large for {_a(what)} ({{}} bytes; at most {max_bytes})'
    if size > max_bytes:
        raise ValueError(too_large.format(size))
    try:
        with open(path, 'rb') as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat()
    except OSError as e:
        raise ValueError(f'{name}: cannot read the {what}: {e.strerror or e}') from None
    if len(data) > max_bytes:
        raise ValueError(too_large.format(f'more than {max_bytes}'))
    return data


def read_text_file(path: PathLike, max_bytes: int = MAX_TEXT_BYTES, what: str = 'file') -> str:
    """A UTF-8 text file of at most `max_bytes` bytes (see `read_bounded_bytes`); invalid UTF-8 is a ValueError."""
    data = read_bounded_bytes(path, max_bytes, what)
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise ValueError(f'{display_path(path)}: not a UTF-8 text file (invalid byte at offset {e.start}), '
                         f'so not {_a(what)}') from None


# ---------------------------------------------------------------------------------------------------------
# measuring trees
def _measure(root: Any, children: Callable[[Any], Optional[Iterable[Any]]], leaf_size: Callable[[Any], int],
             where: str, max_nodes: int, max_depth: int, max_bytes: Optional[int]) -> Tuple[int, int, int]:
    """(nodes, text bytes, depth) of the tree `root` stands for, each shared object counted at every reference.

    Shared objects are measured once (memo by id), so the cost is linear in the distinct objects even when
    the expanded tree is exponentially larger. Raises ValueError beyond a limit or on a reference cycle.
    """
    memo: Dict[int, Tuple[int, int, int]] = {}
    active: set = set()
    keep: List[Any] = []  # objects measured stay alive, so their ids are not reused

    def over(kind: str, limit: int) -> ValueError:
        return ValueError(f'{where}: more than {limit} {kind} (counting every reference to a shared or '
                          f'aliased value); refusing a value this large')

    def add(total: List[int], size: Tuple[int, int, int]) -> None:
        total[0] += size[0]
        total[1] += size[1]
        total[2] = max(total[2], size[2] + 1)
        if total[0] > max_nodes:
            raise over('values', max_nodes)
        if max_bytes is not None and total[1] > max_bytes:
            raise over('bytes of text', max_bytes)

    # explicit stack of (object, iterator over its children, running [nodes, bytes, height])
    stack: List[Tuple[Any, Iterable[Any], List[int]]] = []
    result: Tuple[int, int, int] = (0, 0, 0)

    def enter(obj: Any) -> Optional[Tuple[int, int, int]]:
        """Returns the size of a leaf or memoised object, else pushes it and returns None."""
        known = memo.get(id(obj))
        if known is not None:
            return known
        kids = children(obj)
        if kids is None:
            return (1, leaf_size(obj), 0)
        if id(obj) in active:
            raise ValueError(f'{where}: a value contains itself (a reference cycle); refusing it')
        if len(stack) >= max_depth:
            raise ValueError(f'{where}: nested deeper than {max_depth} levels; refusing it')
        active.add(id(obj))
        keep.append(obj)
        stack.append((obj, iter(kids), [1, 0, 1]))
        return None

    first = enter(root)
    if first is not None:
        return first
    while stack:
        obj, kids, total = stack[-1]
        for kid in kids:
            size = enter(kid)
            if size is None:
                break  # descend first
            if len(stack) + size[2] > max_depth:
                raise ValueError(f'{where}: nested deeper than {max_depth} levels; refusing it')
            add(total, size)
        else:
            stack.pop()
            active.discard(id(obj))
            result = memo[id(obj)] = (total[0], total[1], total[2])
            if stack:
                add(stack[-1][2], result)
    return result


def _python_children(obj: Any) -> Optional[Iterable[Any]]:
    if isinstance(obj, dict):
        return (x for item in obj.items() for x in item)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    return None


def _python_leaf_size(obj: Any) -> int:
    if isinstance(obj, (str, bytes, bytearray)):
        return len(obj)
    if isinstance(obj, int):
        return obj.bit_length() // 8
    return 0


def check_tree(value: Any, where: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
               max_bytes: Optional[int] = None) -> Tuple[int, int, int]:
    """Refuses a Python value (dicts, lists, tuples, sets) too large or deep to walk; returns its measures.

    Args:
        value: the value, e.g. unpickled or parsed data.
        where: the start of each message (a file name, or 'file: args').
        max_nodes: most values in the expanded tree (each reference to a shared object counts its subtree).
        max_depth: most nesting levels.
        max_bytes: most bytes of strings, bytes and ints in the expanded tree (None: no limit).

    Returns:
        (nodes, bytes, depth) of the expanded tree.

    Raises:
        ValueError: a limit is exceeded, or the value contains itself.
    """
    return _measure(value, _python_children, _python_leaf_size, where, max_nodes, max_depth, max_bytes)


# ---------------------------------------------------------------------------------------------------------
# YAML
def _yaml_children(node: Any) -> Optional[Iterable[Any]]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return (x for pair in node.value for x in pair)
    return None


def _yaml_leaf_size(node: Any) -> int:
    return len(node.value) if isinstance(node, yaml.ScalarNode) else 0


class _BoundedYamlLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that bounds nesting while composing and measures the expanded tree before building it."""

    max_nodes = MAX_NODES
    max_depth = MAX_DEPTH
    where = 'YAML'

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # PyYAML composes recursively: without this, deep nesting ends in RecursionError
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise ValueError(f'{self.where}: nested deeper than {self.max_depth} levels '
                                 f'(line {mark.line + 1}); refusing it')
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        # aliases make the tree a consumer walks larger than the file: measure it before anything is built
        _measure(node, _yaml_children, _yaml_leaf_size, self.where, self.max_nodes, self.max_depth, None)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Dict[Any, Any]:
        # int keys whose hashes collide make each insert walk all the others (quadratic time); no config
        # needs an int key beyond 2**61 - 1, below which CPython's int hashes are all distinct
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, int) and not -INT_HASH_MODULUS < key < INT_HASH_MODULUS:
                    raise ValueError(f'{self.where}: a mapping key of {key.bit_length()} bits (line '
                                     f'{key_node.start_mark.line + 1}); int keys must be below 2**61 - 1')
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        self._check_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> float:
        self._check_number(node)
        return super().construct_yaml_float(node)

    def _check_number(self, node: Any) -> None:
        if len(node.value) > _MAX_NUMBER_CHARS:
            raise ValueError(f'{self.where}: a number of {len(node.value)} characters (line '
                             f'{node.start_mark.line + 1}); at most {_MAX_NUMBER_CHARS}')


_BoundedYamlLoader.add_constructor('tag:yaml.org,2002:int', _BoundedYamlLoader.construct_yaml_int)
_BoundedYamlLoader.add_constructor('tag:yaml.org,2002:float', _BoundedYamlLoader.construct_yaml_float)


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


def parse_yaml(text: str, where: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """`yaml.safe_load(text)` with bounded nesting and expanded size (aliases counted at each use).

    Raises:
        ValueError: not valid YAML (the parser's first line), several documents, or a limit exceeded;
            each message starts with `where`.
    """
    loader = _BoundedYamlLoader(text)
    loader.max_nodes, loader.max_depth, loader.where = max_nodes, max_depth, where
    try:
        return loader.get_single_data()
    except ValueError as e:  # ours, or int()/float() refusing a value
        if str(e).startswith(where):
            raise
        raise ValueError(f'{where}: not valid YAML ({short_message(e)})') from None
    except (yaml.YAMLError, RecursionError, OverflowError, TypeError) as e:
        raise ValueError(f'{where}: not valid YAML ({short_message(e)})') from None
    finally:
        loader.dispose()


def read_yaml_file(path: PathLike, max_bytes: int = MAX_TEXT_BYTES, max_nodes: int = MAX_NODES,
                   max_depth: int = MAX_DEPTH, what: str = 'YAML file') -> Any:
    """A YAML file, read and parsed within bounds (`read_text_file`, `parse_yaml`); messages name the file.

    Raises:
        TypeError: `path` is not a path.
        FileNotFoundError: it does not exist.
        ValueError: unreadable, too large, not UTF-8, not valid YAML, or too large/deep once aliases count.
    """
    return parse_yaml(read_text_file(path, max_bytes, what), display_path(path), max_nodes, max_depth)


# ---------------------------------------------------------------------------------------------------------
# JSON
def parse_json(text: Union[str, bytes], where: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(text)` with bounded nesting and size (JSON has no aliases: the size follows the text).

    Raises:
        ValueError: not valid JSON (the parser's message), or nested/large beyond the limits; each message
            starts with `where`.
    """
    try:
        data = json.loads(text)
    except RecursionError:  # the C scanner stops at the interpreter's recursion limit
        raise ValueError(f'{where}: nested deeper than {max_depth} levels; refusing it') from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int() refusing a huge number
        raise ValueError(f'{where}: not valid JSON ({short_message(e)})') from None
    check_tree(data, where, max_nodes=max_nodes, max_depth=max_depth)
    return data


def read_json_file(path: PathLike, max_bytes: int = MAX_TEXT_BYTES, max_nodes: int = MAX_NODES,
                   max_depth: int = MAX_DEPTH, what: str = 'JSON file') -> Any:
    """A JSON file, read and parsed within bounds (`read_text_file`, `parse_json`); messages name the file.

    Raises:
        TypeError: `path` is not a path.
        FileNotFoundError: it does not exist.
        ValueError: unreadable, too large, not UTF-8, not valid JSON, or nested too deeply.
    """
    return parse_json(read_text_file(path, max_bytes, what), display_path(path), max_nodes, max_depth)


def write_atomic(path: PathLike, data: Union[str, bytes]) -> None:
    """Write `data` to `path` through a hidden temp file beside it, synced, then renamed: readers and a crash never
    see half a file, and a failed write leaves no temp file behind."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f'.{name}.tmp{os.getpid()}')
    try:
        binary = isinstance(data, bytes)
        # text as given: no newline translation, so every platform writes the same bytes
        with open(tmp, 'wb' if binary else 'w', encoding=None if binary else 'utf-8',
                  newline=None if binary else '') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
