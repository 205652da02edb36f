"""The bounded readers of `timm_alphanet.utils`: limits, measures and one-line messages.

The same readers under hostile files (bombs, huge or corrupt files, with time and memory bounds) are in
test_hostile_files.py."""
import collections
import os
import json
import random

import pytest
import yaml

from timm_alphanet.utils import (
    bounded_repr, check_tree, display_path, parse_json, parse_yaml, read_bounded_bytes, read_json_file,
    read_text_file, read_yaml_file)


def _expanded(value):
    """Reference measure by brute force: walk every reference, no memo (only for small values)."""
    if isinstance(value, dict):
        kids = [x for kv in value.items() for x in kv]
    elif isinstance(value, (list, tuple, set, frozenset)):
        kids = list(value)
    else:
        return 1, len(value) if isinstance(value, (str, bytes)) else 0, 0
    nodes, size, depth = 1, 0, 1
    for kid in kids:
        n, s, d = _expanded(kid)
        nodes, size, depth = nodes + n, size + s, max(depth, d + 1)
    return nodes, size, depth


def _random_value(rng, depth=0, pool=None):
    pool = [] if pool is None else pool
    if pool and rng.random() < 0.2:
        return rng.choice(pool)  # shared references, as pickle memo and YAML aliases make
    kind = rng.choice(['int', 'str', 'list', 'dict', 'tuple'] if depth < 4 else ['int', 'str'])
    if kind == 'int':
        return rng.randint(-5, 5)
    if kind == 'str':
        return 'x' * rng.randint(0, 5)
    items = [_random_value(rng, depth + 1, pool) for _ in range(rng.randint(0, 4))]
    value = {f'k{i}': v for i, v in enumerate(items)} if kind == 'dict' else (
        tuple(items) if kind == 'tuple' else items)
    pool.append(value)
    return value


@pytest.mark.parametrize('seed', range(20))
def test_check_tree_counts_every_reference_like_brute_force(seed):
    value = _random_value(random.Random(seed))
    assert check_tree(value, 'x') == _expanded(value)


def test_check_tree_limits_and_cycles():
    shared = [1, 2]
    value = {'a': [shared] * 3}
    nodes, size, depth = _expanded(value)
    assert (nodes, size, depth) == (12, 1, 3)
    assert check_tree(value, 'x', max_nodes=nodes, max_depth=depth) == (nodes, size, depth)
    with pytest.raises(ValueError, match=f'^x: more than {nodes - 1} values'):
        check_tree(value, 'x', max_nodes=nodes - 1)
    with pytest.raises(ValueError, match=f'^x: nested deeper than {depth - 1} levels'):
        check_tree(value, 'x', max_depth=depth - 1)
    with pytest.raises(ValueError, match='^x: more than 3 bytes of text'):
        check_tree(['ab', 'cd'], 'x', max_bytes=3)
    loop = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match='contains itself'):
        check_tree({'a': loop}, 'x')
    # a shared subtree reached again deeper down still counts at its full depth
    deep = [[[[1]]]]
    with pytest.raises(ValueError, match='nested deeper than 5'):
        check_tree([deep, [[deep]]], 'x', max_depth=5)


def test_bounded_repr_is_short_for_huge_and_shared_values():
    bomb = [0]
    for _ in range(60):
        bomb = [bomb] * 10  # 10**60 leaves as a tree
    for value in [bomb, collections.OrderedDict((i, bomb) for i in range(10)), 10 ** 5000, b'x' * 10 ** 6,
                  'y' * 10 ** 6, bytearray(10 ** 6), {'k': set(range(10 ** 4))}]:
        text = bounded_repr(value)
        assert 0 < len(text) <= 200, text
    assert bounded_repr([1, 'a', None]) == "[1, 'a', None]"  # small values are quoted exactly
    assert bounded_repr(10 ** 5000) == f'<int of {(10 ** 5000).bit_length()} bits>'
    assert len(display_path('d/' * 1000 + 'f.yml')) <= 303 and display_path('a/b.yml') == 'a/b.yml'


def test_parse_yaml_equals_safe_load_within_bounds():
    text = 'a: &x [1, 2.5, {b: c}]\nb: *x\nc: !!binary aGk=\nd: null\n<<: {e: 1}\n'
    assert parse_yaml(text, 'f') == yaml.safe_load(text)


def test_parse_yaml_counts_aliases_at_each_use():
    text = 'a: &a [1, 2, 3]\nb: [*a, *a, *a]\n'
    # nodes: root map 1 + keys 2 + a (1 + 3) + b (1 + 3 * 4) = 20
    assert check_tree(yaml.safe_load(text), 'x')[0] == 20
    parse_yaml(text, 'f', max_nodes=20)
    with pytest.raises(ValueError, match='^f: more than 19 values'):
        parse_yaml(text, 'f', max_nodes=19)


@pytest.mark.parametrize('text, message', [
    ('a: [1, 2', r"^f\.yml: not valid YAML \(while parsing a flow sequence: expected ',' or '\]'.* line 1"),
    ('a: 1\n---\nb: 2\n', r'^f\.yml: not valid YAML \(expected a single document'),
    ('a: !!python/object:os.system x', r'^f\.yml: not valid YAML \(could not determine a constructor'),
    ('a: &r [*r]', r'^f\.yml: a value contains itself'),
    ('a: ' + '9' * 101, r'^f\.yml: a number of 101 characters \(line 1\); at most 100'),
    ('a: ' + '[' * 70 + ']' * 70, r'^f\.yml: nested deeper than 64 levels \(line 1\)'),
])
def test_parse_yaml_errors_are_one_line_and_name_the_file(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_yaml(text, 'f.yml')
    assert '\n' not in str(info.value) and len(str(info.value)) < 400


def test_read_files(tmp_path):
    (tmp_path / 'a.yml').write_text('x: [1, 2]\n')
    (tmp_path / 'a.json').write_text(json.dumps({'x': [1, 2]}))
    assert read_yaml_file(tmp_path / 'a.yml') == read_json_file(tmp_path / 'a.json') == {'x': [1, 2]}
    assert read_bounded_bytes(tmp_path / 'a.yml', 10) == b'x: [1, 2]\n'
    with pytest.raises(ValueError, match=r'a\.yml: too large for an arch file \(10 bytes; at most 9\)'):
        read_bounded_bytes(tmp_path / 'a.yml', 9, what='arch file')
    (tmp_path / 'bad.yml').write_bytes(b'x: \xff\xfe')
    with pytest.raises(ValueError, match=r'bad\.yml: not a UTF-8 text file \(invalid byte at offset 3\)'):
        read_yaml_file(tmp_path / 'bad.yml')
    with pytest.raises(FileNotFoundError, match='YAML file not found: .*nope.yml'):
        read_yaml_file(tmp_path / 'nope.yml')
    with pytest.raises(ValueError, match='is a directory, not a JSON file'):
        read_json_file(tmp_path)
    with pytest.raises(TypeError, match='must be a path .* got NoneType'):
        read_text_file(None)
    (tmp_path / 'deep.json').write_text('[' * 3000 + ']' * 3000)  # beyond Python's recursion limit
    with pytest.raises(ValueError, match=r'deep\.json: nested deeper than 64 levels'):
        read_json_file(tmp_path / 'deep.json')
    assert parse_json('[' * 10 + ']' * 10, 'j', max_depth=10) == [[[[[[[[[[]]]]]]]]]]


def test_write_atomic_writes_exactly_and_leaves_nothing_on_failure(tmp_path):
    from timm_alphanet.utils import write_atomic
    write_atomic(tmp_path / 'a.csv', 'x,y\r\n1,2\r\n')
    assert (tmp_path / 'a.csv').read_bytes() == b'x,y\r\n1,2\r\n'  # no newline translation
    write_atomic(tmp_path / 'a.csv', b'\x00\x01')
    assert (tmp_path / 'a.csv').read_bytes() == b'\x00\x01'
    with pytest.raises(TypeError):
        write_atomic(tmp_path / 'a.csv', 3)  # fails mid-write: the old file stays, no temp file is left
    assert (tmp_path / 'a.csv').read_bytes() == b'\x00\x01' and sorted(p.name for p in tmp_path.iterdir()) == ['a.csv']


def test_write_atomic_never_writes_through_a_planted_link(tmp_path):
    # links planted for every temp name a predictable writer might use, and one at the target itself
    import os
    from timm_alphanet.utils import write_atomic
    outside = tmp_path / 'outside.txt'
    outside.write_text('keep')
    folder = tmp_path / 'folder'
    folder.mkdir()
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        os.symlink(outside, folder / f'.config.json.tmp{pid}')
    os.symlink(outside, folder / 'config.json')
    write_atomic(folder / 'config.json', '{}')
    assert outside.read_text() == 'keep'
    assert not (folder / 'config.json').is_symlink() and (folder / 'config.json').read_text() == '{}'
    mode = (folder / 'config.json').stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask  # not the private mode of a temp file


def test_staged_directory_is_all_or_nothing(tmp_path):
    from timm_alphanet.utils import staged_directory
    target = tmp_path / 'out'
    with pytest.raises(RuntimeError):
        with staged_directory(target) as tmp:
            (tmp / 'a').write_text('1')
            raise RuntimeError('crash mid-write')
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no temp folder
    with staged_directory(target) as tmp:
        (tmp / 'a').write_text('1')
    assert (target / 'a').read_text() == '1'
    with staged_directory(target) as tmp:  # 'replace': the new folder, whole
        (tmp / 'b').write_text('2')
    assert sorted(p.name for p in target.iterdir()) == ['b']
    with staged_directory(target, if_exists='keep') as tmp:  # 'keep': a finished cache stays as it is
        (tmp / 'c').write_text('3')
    assert sorted(p.name for p in target.iterdir()) == ['b'] and sorted(p.name for p in tmp_path.iterdir()) == ['out']
    with pytest.raises(ValueError, match="if_exists must be 'replace' or 'keep', got 'merge'"):
        with staged_directory(target, if_exists='merge'):
            pass


def test_replace_symlink_points_the_link_anew(tmp_path):
    from timm_alphanet.utils import replace_symlink
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    replace_symlink(tmp_path / 'latest', 'a')
    replace_symlink(tmp_path / 'latest', 'b')
    assert os.readlink(tmp_path / 'latest') == 'b' and sorted(p.name for p in tmp_path.iterdir()) == ['a', 'b', 'latest']


def test_sha256_file_matches_hashlib_on_bytes_over_several_chunks(tmp_path):
    import hashlib
    from timm_alphanet.utils import sha256_file
    data = bytes(random.Random(0).getrandbits(8) for _ in range(10_000))
    (tmp_path / 'w').write_bytes(data)
    assert sha256_file(tmp_path / 'w', chunk=4096) == hashlib.sha256(data).hexdigest()


def test_append_jsonl_appends_whole_lines(tmp_path):
    from timm_alphanet.utils import append_jsonl
    path = tmp_path / 'log.jsonl'
    append_jsonl(path, {'a': 1})
    append_jsonl(path, {'b': [1, 2]})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{'a': 1}, {'b': [1, 2]}]
