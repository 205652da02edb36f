"""Test helpers for hostile files: build them in the test (never commit one) and run each load within bounds.

`run_bounded` runs a call in a forked child whose address space and CPU time are limited, and reports how it
ended: returned, raised (type and message), killed by a signal (a crash) or out of time. The builders make
pickle payloads from raw opcodes (`Op`), embed them in otherwise valid torch checkpoints
(`write_hostile_checkpoint`), forge the tensor sizes a checkpoint declares (`forge_storage_numel`) and write
YAML/JSON bombs. They are small on disk; what they ask a careless reader to do is not.
"""
import faulthandler
import io
import json
import os
import pickle
import re
import resource
import signal
import struct
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

__all__ = [
    'Outcome', 'run_bounded', 'Op', 'write_hostile_checkpoint', 'write_hostile_rng_state', 'forge_storage_numel',
    'numpy_object_array',
    'shared_list_bomb', 'deep_list', 'colliding_int_keys', 'forge_zip_entry_size', 'SPACE_WITH_BOMB',
    'ARCH_WITH_BOMB', 'yaml_alias_bomb', 'yaml_deep', 'json_deep',
]

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------------------
# running a load within bounds
@dataclass
class Outcome:
    """How a bounded call ended: `kind` is 'returned', 'raised', 'exit' (SystemExit), 'signal' or 'timeout'."""
    kind: str
    exc_type: Optional[str] = None  # qualified name of the exception raised (kind 'raised')
    message: str = ''  # its message, or what the call returned (repr, bounded), or the signal name
    stderr: str = ''  # what the call wrote to sys.stderr
    exit_code: Optional[int] = None  # SystemExit code (kind 'exit')
    cpu_s: float = 0.0  # CPU seconds the child used

    def __str__(self) -> str:
        return (f'{self.kind} {self.exc_type or ""} {self.exit_code if self.exit_code is not None else ""}: '
                f'{self.message[:500]!r} stderr={self.stderr[:500]!r}')


def _vm_bytes() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmSize:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('VmSize not found in /proc/self/status')


def _child(fn: Callable[..., Any], args: Any, kwargs: Any, memory_mb: int, cpu_s: int, out_fd: int) -> None:
    report: dict = {}
    captured = io.StringIO()
    try:
        faulthandler.disable()  # a crash is reported as a signal; the parent's fault handler would print a dump
        torch.set_num_threads(1)  # no thread pools in a forked child
        limit = _vm_bytes() + memory_mb * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        sys.stderr = captured
        try:
            value = fn(*args, **kwargs)
            report = {'kind': 'returned', 'message': repr(value)[:2000]}
        except SystemExit as e:
            report = {'kind': 'exit', 'exit_code': e.code if isinstance(e.code, int) else 1,
                      'message': str(e.code)[:2000]}
        except BaseException as e:  # noqa: BLE001 -- everything is reported to the parent
            report = {'kind': 'raised', 'exc_type': f'{type(e).__module__}.{type(e).__qualname__}',
                      'message': str(e)[:20000],
                      'traceback': ''.join(traceback.format_exception(e))[-4000:]}
    finally:
        sys.stderr = sys.__stderr__
        report['stderr'] = captured.getvalue()[:20000]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        report['cpu_s'] = usage.ru_utime + usage.ru_stime
        data = json.dumps(report).encode()[:60000]  # fits in a pipe buffer: written before the parent reads
        os.write(out_fd, data)
        os._exit(0)


def run_bounded(fn: Callable[..., Any], *args: Any, memory_mb: int = 1024, cpu_s: int = 60,
                timeout_s: float = 300.0, **kwargs: Any) -> Outcome:
    """Calls ``fn(*args, **kwargs)`` in a forked child limited to `memory_mb` MiB more address space than the
    parent uses and `cpu_s` CPU seconds (SIGXCPU beyond), killed after `timeout_s` wall seconds.

    The bounds keep a runaway load from taking the machine down; they are limits, not timing assertions.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        os.close(read_fd)
        _child(fn, args, kwargs, memory_mb, cpu_s, write_fd)
    os.close(write_fd)
    deadline = time.monotonic() + timeout_s
    status = None
    chunks = []
    os.set_blocking(read_fd, False)
    while status is None:
        try:
            chunk = os.read(read_fd, 65536)
            if chunk:
                chunks.append(chunk)
        except BlockingIOError:
            pass
        done, status_now = os.waitpid(pid, os.WNOHANG)
        if done:
            status = status_now
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return Outcome('timeout', message=f'still running after {timeout_s} s')
        else:
            time.sleep(0.02)
    try:
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    os.close(read_fd)
    if os.WIFSIGNALED(status):
        return Outcome('signal', message=signal.Signals(os.WTERMSIG(status)).name)
    data = b''.join(chunks)
    if not data:
        return Outcome('signal', message=f'child ended with status {status} and no report')
    report = json.loads(data)
    report.pop('traceback', None)
    return Outcome(**report)


# ---------------------------------------------------------------------------------------------------------
# pickle payloads from raw opcodes
class Op:
    """Pickle opcodes, each pushing one object (protocol 2/3 forms)."""
    MARK, TUPLE, REDUCE, BUILD, NONE, POP = b'(', b't', b'R', b'b', b'N', b'0'
    TRUE, FALSE = b'\x88', b'\x89'
    EMPTY_LIST, APPEND, APPENDS, EMPTY_DICT, SETITEM, SETITEMS = b']', b'a', b'e', b'}', b's', b'u'

    @staticmethod
    def glob(module: str, name: str) -> bytes:
        return b'c' + f'{module}\n{name}\n'.encode()

    @staticmethod
    def text(text: str) -> bytes:
        data = text.encode('utf-8')
        return b'X' + struct.pack('<I', len(data)) + data

    @staticmethod
    def num(value: int) -> bytes:
        if 0 <= value < 256:
            return b'K' + bytes([value])
        if -2 ** 31 <= value < 2 ** 31:
            return b'J' + struct.pack('<i', value)
        data = pickle.encode_long(value)
        return b'\x8a' + bytes([len(data)]) + data

    @staticmethod
    def blob(data: bytes) -> bytes:
        return (b'C' + bytes([len(data)]) if len(data) < 256 else b'B' + struct.pack('<I', len(data))) + data

    @staticmethod
    def tup(*items: bytes) -> bytes:
        return Op.MARK + b''.join(items) + Op.TUPLE

    @staticmethod
    def call(func: bytes, *args: bytes) -> bytes:
        return func + Op.tup(*args) + Op.REDUCE

    @staticmethod
    def put(index: int) -> bytes:
        return b'r' + struct.pack('<I', index)  # LONG_BINPUT: high indices do not clash with torch's memo

    @staticmethod
    def get(index: int) -> bytes:
        return b'j' + struct.pack('<I', index)


def numpy_object_array(pointer: int = 0x4141414141414141) -> bytes:
    """An ndarray of dtype object whose element pointer is read from the file (only numpy's own globals).

    A dtype 'O' with its flags forged to 1 (no list pickling) makes ``ndarray.__setstate__`` take raw bytes;
    touching or freeing the array then dereferences `pointer`.
    """
    dtype = (Op.call(Op.glob('numpy', 'dtype'), Op.text('O8'), Op.FALSE, Op.TRUE)
             + Op.tup(Op.num(3), Op.text('|'), Op.NONE, Op.NONE, Op.NONE, Op.num(-1), Op.num(-1), Op.num(1))
             + Op.BUILD)
    array = Op.call(Op.glob('numpy.core.multiarray', '_reconstruct'), Op.glob('numpy', 'ndarray'),
                    Op.tup(Op.num(0)), Op.blob(b'b'))
    state = Op.tup(Op.num(1), Op.tup(Op.num(1)), dtype, Op.FALSE, Op.blob(struct.pack('<Q', pointer)))
    return array + state + Op.BUILD


def shared_list_bomb(levels: int = 30, width: int = 10, base: int = 900_000) -> bytes:
    """Nested lists where each level holds `width` references to the level below: width**levels leaves."""
    out = Op.EMPTY_LIST + Op.num(0) + Op.APPEND + Op.put(base)
    for level in range(1, levels + 1):
        out += Op.POP + Op.EMPTY_LIST + Op.MARK + Op.get(base + level - 1) * width + Op.APPENDS + Op.put(base + level)
    return out


def deep_list(depth: int) -> bytes:
    """A list nested `depth` levels deep (the unpickler builds it without recursion; a recursive walk fails)."""
    return Op.EMPTY_LIST * depth + Op.APPEND * (depth - 1)


def colliding_int_keys(n: int) -> bytes:
    """A dict of `n` int keys that all hash alike (multiples of 2**61 - 1): inserting them takes n**2 / 2 steps."""
    modulus = (1 << 61) - 1
    return Op.EMPTY_DICT + Op.MARK + b''.join(Op.num(i * modulus) + Op.num(1) for i in range(1, n + 1)) \
        + Op.SETITEMS


# ---------------------------------------------------------------------------------------------------------
# checkpoints carrying a payload
_PLACEHOLDER = 'hostile-payload-0123456789abcdef'


def _patch_pickle(path: PathLike, patch: Callable[[bytes], bytes]) -> None:
    """Applies `patch` to the pickled bytes of a torch checkpoint, zip (its data.pkl) or legacy."""
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as src:
            entries = [(info, src.read(info)) for info in src.infolist()]
        with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as dst:
            for info, data in entries:
                dst.writestr(info, patch(data) if info.filename.endswith('/data.pkl') else data)
    else:
        with open(path, 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(patch(data))


def write_hostile_checkpoint(path: PathLike, payload: bytes, legacy: bool = True, entry: str = 'args') -> None:
    """A valid torch checkpoint (one small tensor in ``state_dict``) whose `entry` unpickles from `payload`.

    `payload` is pickle opcodes that push exactly one object (see `Op`).
    """
    obj = {'epoch': 1, entry: _PLACEHOLDER,
           'state_dict': {'module.classifier.linear.linear.bias': torch.zeros(3)}}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    marker = Op.text(_PLACEHOLDER)

    def patch(data: bytes) -> bytes:
        if data.count(marker) != 1:
            raise RuntimeError('placeholder not found exactly once in the pickle')
        return data.replace(marker, payload)
    _patch_pickle(path, patch)


def write_hostile_rng_state(path: PathLike, payload: bytes) -> None:
    """An Accelerate ``random_states_<N>.pkl`` (as `save_state` writes it) whose numpy generator key unpickles from
    `payload` instead of a 624-word uint32 array (e.g. `numpy_object_array()`)."""
    import random

    import numpy as np

    key = np.random.get_state()
    states = {'step': 0, 'random_state': random.getstate(),
              'numpy_random_seed': (key[0], _PLACEHOLDER, *key[2:]), 'torch_manual_seed': torch.get_rng_state()}
    torch.save(states, path)
    marker = Op.text(_PLACEHOLDER)

    def patch(data: bytes) -> bytes:
        if data.count(marker) != 1:
            raise RuntimeError('placeholder not found exactly once in the pickle')
        return data.replace(marker, payload)
    _patch_pickle(path, patch)


def forge_storage_numel(path: PathLike, numel: int) -> None:
    """Makes every tensor storage of a torch checkpoint declare `numel` elements (the data stays as it is)."""
    # a storage's persistent id is ('storage', <type>, key, 'cpu', numel[, view]): numel follows 'cpu'
    pattern = re.compile(rb'(X\x03\x00\x00\x00cpu(?:q.|r....)?)(K.|M..|J....)', re.DOTALL)

    def patch(data: bytes) -> bytes:
        out, count = pattern.subn(lambda m: m.group(1) + Op.num(numel), data)
        if not count:
            raise RuntimeError('no storage size found in the pickle')
        return out
    _patch_pickle(path, patch)


# ---------------------------------------------------------------------------------------------------------
# YAML and JSON
# where the anchors go (a key the reader ignores) and where the bomb goes (a value it checks and quotes)
SPACE_WITH_BOMB = ('anchors: {anchors}\nsupernet_config:\n  resolutions: {bomb}\n  first_conv: {{c: [8]}}\n'
                   '  last_conv: {{c: [8]}}\n')
ARCH_WITH_BOMB = 'name: {anchors}\nresolution: 224\nwidth: {bomb}\ndepth: [1]\nkernel_size: [3]\nexpand_ratio: [1]\n'


def yaml_alias_bomb(levels: int = 9, width: int = 9, document: str = SPACE_WITH_BOMB) -> str:
    """A ~1 KB YAML file: `document` with ``{bomb}`` replaced by a list of width**levels strings built by aliases.

    The default puts it where a search space's resolutions go, so a reader that quotes the bad value in its
    error message (they are strings, not ints) builds a multi-GB message.
    """
    anchors = [f'&l0 [{", ".join(["lol"] * width)}]']
    anchors += [f'&l{i} [{", ".join([f"*l{i - 1}"] * width)}]' for i in range(1, levels)]
    bomb = f'[{", ".join([f"*l{levels - 1}"] * width)}]'
    return document.format(anchors=f'[{", ".join(anchors)}]', bomb=bomb)


def yaml_deep(depth: int) -> str:
    """A flow sequence nested `depth` levels deep."""
    return 'x: ' + '[' * depth + ']' * depth + '\n'


def json_deep(depth: int) -> str:
    """A JSON array nested `depth` levels deep."""
    return '[' * depth + ']' * depth


def forge_zip_entry_size(path: PathLike, entry_suffix: str, size: int) -> None:
    """Makes the central directory of a zip archive declare `size` bytes for the entry ending in `entry_suffix`.

    The entry's data stays as it is: a reader that allocates what the directory declares allocates `size`.
    """
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    pos, done = 0, 0
    while True:
        pos = data.find(b'PK\x01\x02', pos)
        if pos < 0:
            break
        name_len = struct.unpack_from('<H', data, pos + 28)[0]
        name = bytes(data[pos + 46:pos + 46 + name_len]).decode('utf-8', 'replace')
        if name.endswith(entry_suffix):
            struct.pack_into('<I', data, pos + 24, size)  # uncompressed size
            done += 1
        pos += 4
    if not done:
        raise RuntimeError(f'no zip entry ending in {entry_suffix!r}')
    with open(path, 'wb') as f:
        f.write(bytes(data))
