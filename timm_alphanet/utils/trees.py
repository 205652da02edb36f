"""Bounded parsing of YAML and JSON (and bounded walking of any parsed tree); no torch.

`json.loads` and `yaml.SafeLoader` parse; what is added is the bounds: parsed data is measured as the tree a
consumer would walk (aliases and shared objects counted once per reference, in time proportional to the file),
with a bounded nesting depth (PyYAML has none for aliases or depth, `json` only Python's recursion limit).
Errors are one-line `ValueError`s that start with the file name.
"""
import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import yaml

from .files import MAX_TEXT_BYTES, PathLike, read_text_file
from .messages import display_path, short_message

__all__ = ['MAX_NODES', 'MAX_DEPTH', 'INT_HASH_MODULUS', 'check_tree', 'parse_yaml', 'read_yaml_file', 'parse_json',
           'read_json_file']

MAX_NODES = 100_000  # values in the tree a consumer walks (aliases expanded); a training YAML has a few hundred
MAX_DEPTH = 64  # nesting levels; configs nest 3-4 deep
INT_HASH_MODULUS = (1 << 61) - 1  # CPython's int hash is x mod this: smaller ints never collide
_MAX_NUMBER_CHARS = 100  # YAML numbers: longer ones (e.g. 1:1:1:... sexagesimal) cost quadratic time to build


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
