"""Hostile and broken files: every reader refuses them with a one-line error naming the file, within bounds.

Each file is built here (never committed). Each load runs in a forked child limited in address space and CPU
time (`testing.hostile.run_bounded`), so a crash (segfault), a memory blow-up or a hang shows up as a failed
test instead of taking the machine down. The bounds are limits, not timing assertions.
"""
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timm_alphanet import SearchSpace, load_original_checkpoint
from timm_alphanet.archs import resolve_arch
from timm_alphanet.cli.convert import main as convert_main
from timm_alphanet.utils import check_model_dir, check_safetensors
from timm_alphanet.original import read_original_checkpoint, restricted_pickle
from timm_alphanet.testing.hostile import (
    ARCH_WITH_BOMB, Op, colliding_int_keys, deep_list, forge_storage_numel, forge_zip_entry_size, json_deep, numpy_object_array,
    run_bounded, shared_list_bomb, write_hostile_checkpoint, yaml_alias_bomb, yaml_deep)
from timm_alphanet.testing.original_ckpt import SMALL_SUPERNET_CONFIG, original_manifest, write_original_checkpoint

UNSAFE = 'timm_alphanet.original.unpickler.UnsafeCheckpointError'
VALUE = 'builtins.ValueError'
MEMORY_MB = 512  # address space a child may add: far below what any of these files asks for
CPU_S = 60


def _small_checkpoint(path, legacy=True):
    write_original_checkpoint(path, seed=0, legacy=legacy, supernet_config=SMALL_SUPERNET_CONFIG,
                              manifest=original_manifest(SMALL_SUPERNET_CONFIG, n_classes=10))
    return path


def _write(path, data):
    Path(path).write_bytes(data)
    return path


def _truncated(path, legacy):
    full = _small_checkpoint(Path(str(path) + '.full'), legacy)
    data = full.read_bytes()
    return _write(path, data[:len(data) // 2])


def _payload(payload, legacy=True, entry='args'):
    def build(path):
        write_hostile_checkpoint(path, payload, legacy=legacy, entry=entry)
        return path
    return build


def _forged_storage(legacy):
    def build(path):
        _small_checkpoint(path, legacy)
        forge_storage_numel(path, 1 << 36)  # 256 GiB of float32 per tensor
        return path
    return build


def _forged_zip_size(path):
    _small_checkpoint(path, legacy=False)
    forge_zip_entry_size(path, 'data.pkl', 0xFFFFFFF0)
    return path


def _random_bytes(prefix=b''):
    return lambda path: _write(path, prefix + random.Random(0).randbytes(4096))


# (id, build(path) -> path, exception type, message pattern after the file name)
CHECKPOINT_CASES = [
    ('zero_bytes', lambda p: _write(p, b''), VALUE, r'empty file \(0 bytes\), not a checkpoint'),
    ('random_bytes', _random_bytes(b'\x13'), VALUE, r'not a PyTorch checkpoint \(neither a zip archive nor a pickle'),
    ('random_pickle_like', _random_bytes(b'\x80\x02'), VALUE, r'not a readable checkpoint \(truncated or corrupt'),
    ('random_zip_like', _random_bytes(b'PK\x03\x04'), VALUE, r'not a readable checkpoint \(a broken or truncated zip'),
    ('truncated_legacy', lambda p: _truncated(p, True), VALUE, r'not a readable checkpoint \(truncated or corrupt'),
    ('truncated_zip', lambda p: _truncated(p, False), VALUE, r'not a readable checkpoint \(a broken or truncated zip'),
    ('directory', lambda p: (p.mkdir(), p)[1], VALUE, r'is a directory, not a checkpoint'),
    # issue 13 item 1: numpy's own globals forge an object pointer (a segfault before)
    ('numpy_object_array_legacy', _payload(numpy_object_array()), UNSAFE,
     r"refusing to load global 'numpy\.core\.multiarray\._reconstruct'"),
    ('numpy_object_array_zip', _payload(numpy_object_array(), legacy=False), UNSAFE,
     r"refusing to load global 'numpy\.core\.multiarray\._reconstruct'"),
    ('numpy_dtype_flags', _payload(Op.call(Op.glob('numpy', 'dtype'), Op.text('O8'), Op.FALSE, Op.TRUE)), UNSAFE,
     r"refusing the numpy dtype 'O8'"),
    # issue 13 item 2: tiny files asking for huge work or memory
    ('shared_list_bomb', _payload(shared_list_bomb(30, 10)), VALUE,
     r'more than 2000000 values \(counting every reference'),
    ('shared_list_bomb_in_optimizer', _payload(shared_list_bomb(30, 10), entry='optimizer'), VALUE,
     r'more than 2000000 values'),
    ('bytearray_16gib', _payload(Op.call(Op.glob('builtins', 'bytearray'), Op.num(1 << 34))), UNSAFE,
     r'refusing the call bytearray\(17179869184,\)'),
    ('deep_nesting', _payload(deep_list(5000)), VALUE, r'nested deeper than 64 levels'),
    ('tensor_alloc', _payload(Op.call(Op.glob('torch', 'Tensor'), Op.num(1 << 36))), UNSAFE,
     r'refusing to call <class .torch\.Tensor.>'),
    ('storage_via_rebuild_from_type', _payload(Op.call(
        Op.glob('torch._tensor', '_rebuild_from_type_v2'), Op.glob('torch.storage', 'UntypedStorage'),
        Op.glob('torch', 'Tensor'), Op.tup(Op.num(1 << 36)), Op.NONE)), UNSAFE,
     r'refusing _rebuild_from_type_v2 of <class .torch\.storage\.UntypedStorage.>'),
    ('codec_growth', _payload(Op.call(Op.glob('_codecs', 'encode'), Op.text('ab'), Op.text('hex'))), UNSAFE,
     r"refusing _codecs\.encode with the codec 'hex'"),
    ('colliding_dict_keys', _payload(colliding_int_keys(50_000)), UNSAFE,
     r'refusing a dict key or set item 2305843009213693951 of type int'),
    ('forged_storage_size_legacy', _forged_storage(True), VALUE,
     r'declares a tensor storage of \d+ bytes, more than the file holds'),
    ('forged_storage_size_zip', _forged_storage(False), VALUE,
     r'declares a tensor storage of \d+ bytes, more than the file holds'),
    ('forged_zip_entry_size', _forged_zip_size, VALUE, r'the zip archive declares \d+ bytes of content in a file of'),
]


def _one_line(text):
    return '\n' not in text.strip() and len(text) < 2500


@pytest.mark.parametrize('case', CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_load_original_checkpoint_refuses_hostile_files(tmp_path, case):
    name, build, exc_type, pattern = case
    path = build(tmp_path / f'{name}.pth')
    outcome = run_bounded(load_original_checkpoint, path, memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'raised' and outcome.exc_type == exc_type, str(outcome)
    assert outcome.message.startswith(f'{path}: '), outcome.message[:500]
    assert re.search(pattern, outcome.message), outcome.message[:500]
    assert _one_line(outcome.message)


@pytest.mark.parametrize('case', CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_alphanet_convert_exits_2_with_one_line(tmp_path, case):
    name, build, _, pattern = case
    path = build(tmp_path / f'{name}.pth')
    out = tmp_path / 'out'
    outcome = run_bounded(convert_main, [str(path), '--out', str(out), '--no-progress'], memory_mb=MEMORY_MB,
                          cpu_s=CPU_S)
    assert outcome.kind == 'exit' and outcome.exit_code == 2, str(outcome)
    assert re.fullmatch(rf'alphanet-convert: error: {re.escape(str(path))}: .*{pattern}.*\n', outcome.stderr), \
        outcome.stderr[:500]
    assert 'Traceback' not in outcome.stderr and not out.exists()


def test_none_and_missing_checkpoints(tmp_path):
    with pytest.raises(TypeError, match='checkpoint must be a path or a seekable binary file object, got NoneType'):
        read_original_checkpoint(None)
    with pytest.raises(TypeError, match='checkpoint must be a path .* got NoneType'):
        load_original_checkpoint(None)
    with pytest.raises(FileNotFoundError, match=f'checkpoint not found: {tmp_path / "nope.pth"}'):
        read_original_checkpoint(tmp_path / 'nope.pth')


def test_file_objects_are_bounded_too(tmp_path):
    path = _payload(Op.call(Op.glob('builtins', 'bytearray'), Op.num(1 << 34)))(tmp_path / 'b.pth')
    with open(path, 'rb') as f:
        outcome = run_bounded(read_original_checkpoint, f, memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'raised' and outcome.exc_type == UNSAFE and 'bytearray' in outcome.message, str(outcome)
    assert outcome.message.startswith(f'{path}: ')


def test_the_numpy_payload_is_real():
    """Guards the numpy cases above: with numpy's own unpickling the same bytes crash the process."""
    outcome = run_bounded(lambda data: __import__('pickle').loads(data), numpy_object_array() + b'.',
                          memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'signal' and outcome.message == 'SIGSEGV', str(outcome)


def test_forged_numpy_scalars_are_checked():
    def scalar(spec, state, data):
        dtype = Op.call(Op.glob('numpy', 'dtype'), Op.text(spec), Op.FALSE, Op.TRUE) + state + Op.BUILD
        return Op.call(Op.glob('numpy.core.multiarray', 'scalar'), dtype, Op.blob(data)) + b'.'

    plain = Op.tup(Op.num(3), Op.text('>'), Op.NONE, Op.NONE, Op.NONE, Op.num(-1), Op.num(-1), Op.num(0))
    assert restricted_pickle.loads(scalar('i4', plain, b'\x00\x00\x01\x02')) == 0x0102  # big-endian honoured
    flags = Op.tup(Op.num(3), Op.text('<'), Op.NONE, Op.NONE, Op.NONE, Op.num(-1), Op.num(-1), Op.num(63))
    with pytest.raises(restricted_pickle.UnpicklingError, match=r'refusing the numpy dtype state .*63'):
        restricted_pickle.loads(scalar('i4', flags, b'\x00' * 4))
    with pytest.raises(restricted_pickle.UnpicklingError, match=r'refusing a numpy i4 scalar from 3 bytes'):
        restricted_pickle.loads(scalar('i4', plain, b'\x00' * 3))


def test_a_real_checkpoint_still_loads_in_bounds(tmp_path):
    """The bounds are not what makes the cases above fail: a valid checkpoint loads under the same limits."""
    path = _small_checkpoint(tmp_path / 'ok.pth')
    outcome = run_bounded(lambda p: sorted(read_original_checkpoint(p)['args']['supernet_config']), path,
                          memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'returned' and outcome.message == repr(sorted(SMALL_SUPERNET_CONFIG)), str(outcome)


def test_alphanet_convert_process_on_a_crashing_file(tmp_path):
    """The console script in its own process: exit status 2, one line, no crash, nothing written."""
    path = _payload(numpy_object_array())(tmp_path / 'evil.pth')
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, '-m', 'timm_alphanet.cli.convert', str(path), '--out', str(out),
                           '--no-progress'], capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1'}, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith(f'alphanet-convert: error: {path}: refusing to load global') and \
        proc.stderr.count('\n') == 1 and not out.exists()


# ---------------------------------------------------------------------------------------------------------
# YAML / JSON: search spaces, arch files, the --config of alphanet-convert
def _yaml_cases():
    big = 'supernet_config:\n' + '  # padding\n' * 200_000  # 2.4 MB of comments: too large before parsing
    return [
        ('alias_bomb', yaml_alias_bomb(), r'more than 100000 values \(counting every reference'),
        ('deep', yaml_deep(10_000), r'nested deeper than 64 levels \(line 1\)'),
        ('huge', big, r'too large for a search space YAML \(\d+ bytes; at most 1048576\)'),
        ('invalid_utf8', b'supernet_config: \xff\xfe\n', r'not a UTF-8 text file \(invalid byte at offset 17\)'),
        ('corrupt', 'supernet_config: [1, 2\n', r"not valid YAML \(while parsing a flow sequence: expected ','"),
        ('sexagesimal', 'x: ' + '1:' * 100_000 + '1\n', r'a number of 200001 characters'),
        ('colliding_keys', ''.join(f'{i * ((1 << 61) - 1)}: 1\n' for i in range(1, 3)),
         r'a mapping key of \d+ bits \(line 1\); int keys must be below 2\*\*61 - 1'),
        ('not_a_space', 'supernet_config:\n  resolutions: [1, 2]\n  first_conv: {c: [8]}\n  last_conv: {c: [8]}\n'
         '  mb1: ' + str(list(range(50_000))) + '\n', r'supernet_config\.mb1 must be a mapping'),
    ]


def _write_text(path, text):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize('case', _yaml_cases(), ids=[c[0] for c in _yaml_cases()])
def test_search_space_yaml_refused_in_bounds(tmp_path, case):
    name, text, pattern = case
    path = _write_text(tmp_path / f'{name}.yml', text)
    outcome = run_bounded(SearchSpace.from_yaml, path, memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'raised' and outcome.exc_type == VALUE, str(outcome)
    assert outcome.message.startswith(f'{path}: ') and re.search(pattern, outcome.message), outcome.message[:500]
    assert _one_line(outcome.message) and len(outcome.message) < 700


@pytest.mark.parametrize('case', _yaml_cases()[:5], ids=[c[0] for c in _yaml_cases()[:5]])
def test_alphanet_convert_config_refused(tmp_path, case):
    name, text, pattern = case
    path = _write_text(tmp_path / f'{name}.yml', text)
    ckpt = _small_checkpoint(tmp_path / 'ok.pth')
    outcome = run_bounded(convert_main, [str(ckpt), '--config', str(path), '--out', str(tmp_path / 'out'),
                                         '--no-progress'], memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'exit' and outcome.exit_code == 2, str(outcome)
    assert re.fullmatch(rf'(reading .*\n)?alphanet-convert: error: {re.escape(str(path))}: .*{pattern}.*\n',
                        outcome.stderr), outcome.stderr[:500]


@pytest.mark.parametrize('suffix, text, pattern', [
    ('.yaml', yaml_alias_bomb(document=ARCH_WITH_BOMB), r'more than 100000 values'),
    ('.yaml', yaml_deep(10_000), r'nested deeper than 64 levels'),
    ('.json', json_deep(100_000), r'nested deeper than 64 levels'),
    ('.json', '{"resolution": 224, "width": [16', r'not valid JSON \(Expecting'),
    ('.json', b'{"resolution": \xff}', r'not a UTF-8 text file'),
    ('.json', '[' + '0,' * 600_000 + '0]', r'too large for an arch file'),
    ('.yaml', 'resolution: 224\nwidth: ' + str(list(range(50_000))) + '\n', r'not an arch: arch is missing'),
], ids=['alias_bomb', 'deep_yaml', 'deep_json', 'corrupt_json', 'invalid_utf8', 'huge', 'not_an_arch'])
def test_arch_files_refused_in_bounds(tmp_path, suffix, text, pattern):
    path = _write_text(tmp_path / f'arch{suffix}', text)
    outcome = run_bounded(resolve_arch, str(path), memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'raised' and outcome.exc_type == VALUE, str(outcome)
    assert outcome.message.startswith(f'{path}: ') and re.search(pattern, outcome.message), outcome.message[:500]
    assert _one_line(outcome.message) and len(outcome.message) < 900
    outcome = run_bounded(convert_main, [str(tmp_path / 'none.pth'), '--subnets', str(path), '--out',
                                         str(tmp_path / 'out'), '--no-progress'], memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'exit' and outcome.exit_code == 2 and re.fullmatch(
        rf'alphanet-convert: error: {re.escape(str(path))}: .*{pattern}.*\n', outcome.stderr), str(outcome)


def test_config_yaml_of_load_original_checkpoint(tmp_path):
    bomb = _write_text(tmp_path / 'bomb.yml', yaml_alias_bomb())
    ckpt = _small_checkpoint(tmp_path / 'ok.pth')
    outcome = run_bounded(load_original_checkpoint, ckpt, bomb, memory_mb=MEMORY_MB, cpu_s=CPU_S)
    assert outcome.kind == 'raised' and outcome.exc_type == VALUE, str(outcome)
    assert outcome.message.startswith(f'{bomb}: more than 100000 values'), outcome.message[:300]
    with pytest.raises(ValueError, match=f'{tmp_path}: is a directory, not a config file'):
        load_original_checkpoint(ckpt, tmp_path)


# ---------------------------------------------------------------------------------------------------------
# model folders (local-dir:) we read later
def test_corrupt_model_folders(tmp_path):
    from safetensors.torch import save_file
    folder = tmp_path / 'model'
    folder.mkdir()
    (folder / 'config.json').write_text('{"architecture": "alphanet_a0", "num_classes": 10}')
    save_file({'w': torch.arange(6, dtype=torch.float32).reshape(2, 3)}, folder / 'model.safetensors')
    assert check_model_dir(folder) == {'architecture': 'alphanet_a0', 'num_classes': 10}
    assert check_safetensors(folder / 'model.safetensors') == {'w': ('F32', (2, 3))}

    weights = (folder / 'model.safetensors').read_bytes()
    (folder / 'model.safetensors').write_bytes(weights[:-4])
    with pytest.raises(ValueError, match=r'model\.safetensors: not a valid safetensors file \(.*incomplete'):
        check_model_dir(folder)
    (folder / 'model.safetensors').write_bytes(b'\xff' * 8 + weights[8:])
    with pytest.raises(ValueError, match=r'model\.safetensors: not a valid safetensors file: its header claims'):
        check_safetensors(folder / 'model.safetensors')
    (folder / 'model.safetensors').write_bytes(b'\x01')
    with pytest.raises(ValueError, match=r'model\.safetensors: truncated safetensors file \(1 bytes'):
        check_safetensors(folder / 'model.safetensors')
    (folder / 'model.safetensors').write_bytes(weights)

    (folder / 'config.json').write_text('{"architecture": ')
    with pytest.raises(ValueError, match=r'config\.json: not valid JSON \(Expecting value'):
        check_model_dir(folder)
    (folder / 'config.json').write_text(' ' * (2 << 20) + '{}')
    with pytest.raises(ValueError, match=r'config\.json: too large for a config\.json'):
        check_model_dir(folder)
    (folder / 'config.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match=r'config\.json: expected a JSON object, got list'):
        check_model_dir(folder)
    (folder / 'config.json').unlink()
    with pytest.raises(FileNotFoundError, match='config.json not found'):
        check_model_dir(folder)
    with pytest.raises(FileNotFoundError, match='model folder not found'):
        check_model_dir(tmp_path / 'nope')
