"""Checkpoints with ``Accelerator.save_state``: atomic (temp folder + rename), verified, last K kept plus the best.

Layout: ``<run>/checkpoints/step_00000120/`` (Accelerate's files: model, optimizer, scheduler, RNG states, sampler;
ours: ``train_state.json`` and, with a weight EMA, ``ema.safetensors``; and ``manifest.json``: every file's size and
sha256 and the number of processes that wrote it) and
``<run>/checkpoints/index.json`` (names, steps, metrics, best), itself written atomically. A folder that exists under
its final name is complete; `find_checkpoint` also checks it against its manifest and falls back to the previous
complete checkpoint (with a warning) when the latest one was damaged after it was written. A full disk while saving
removes the partial folder and raises ``OSError(ENOSPC)`` naming the folder.

The train state and the EMA are not registered with Accelerate (`register_for_checkpointing`), because Accelerate
loads registered objects with full pickle (``weights_only=False``); ours are JSON and safetensors, read bounded.
"""
import contextlib
import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from safetensors.torch import load_file, save_file

from ..utils import NO_SPACE_ERRNOS, read_json_file, replace_directory, sha256_file, write_atomic

__all__ = ['CheckpointManager', 'TrainState', 'check_random_states', 'find_checkpoint', 'checkpoint_processes',
           'load_checkpoint_extras', 'no_space_left']

INDEX = 'index.json'
STATE = 'train_state.json'
EMA = 'ema.safetensors'
MANIFEST = 'manifest.json'
MANIFEST_FORMAT = 'timm_alphanet.checkpoint/1'
_MAX_JSON_BYTES = 16 << 20
_logger = logging.getLogger(__name__)


class TrainState:
    """Loop position and bookkeeping, saved with the checkpoint (`register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step = 0  # optimizer steps taken (skipped non-finite steps included): keys the subnet sequence
        self.epoch = 0  # epoch in progress
        self.batch_in_epoch = 0  # batches of `epoch` already consumed
        self.nonfinite_in_row = 0
        self.subnet_digest = ''  # hash chain of the subnets trained so far (compared across processes)
        self.loss_sum = 0.0  # this process's task loss summed over the epoch's finite steps (kept across a resume)
        self.loss_steps = 0
        self.scaler_skips = 0  # fp16 steps GradScaler skipped (overflowing gradients), over the whole run
        self.history: List[Dict[str, Any]] = []

    def state_dict(self) -> Dict[str, Any]:
        return dict(step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                    nonfinite_in_row=self.nonfinite_in_row, subnet_digest=self.subnet_digest,
                    loss_sum=self.loss_sum, loss_steps=self.loss_steps, scaler_skips=self.scaler_skips,
                    history=self.history)

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        """Raises ValueError on a state that is not one (a forged or damaged ``train_state.json``)."""
        try:
            self.step, self.epoch, self.batch_in_epoch = int(d['step']), int(d['epoch']), int(d['batch_in_epoch'])
            self.nonfinite_in_row = int(d['nonfinite_in_row'])
            self.subnet_digest = str(d.get('subnet_digest', ''))[:64]
            self.loss_sum, self.loss_steps = float(d.get('loss_sum', 0.0)), int(d.get('loss_steps', 0))
            self.scaler_skips = int(d.get('scaler_skips', 0))
            history = d['history']
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'not a train state ({str(e)[:100]})') from None
        if min(self.step, self.epoch, self.batch_in_epoch, self.nonfinite_in_row, self.loss_steps,
               self.scaler_skips) < 0 or not (
                isinstance(history, list) and all(isinstance(r, dict) for r in history)):
            raise ValueError('not a train state (negative counters, or a history that is not a list of rows)')
        self.history = history


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether `error` (raised while writing into `folder`) came from a full disk or quota.

    torch.save reports a full disk as a bare RuntimeError and safetensors as its own error type, so besides the
    errno the free space left on the file system is asked.
    """
    if getattr(error, 'errno', None) in NO_SPACE_ERRNOS or 'No space left' in str(error):
        return True
    if not isinstance(error, (OSError, RuntimeError)) and type(error).__module__.split('.')[0] != 'safetensors':
        return False  # e.g. a ValueError or KeyboardInterrupt is itself, whatever the free space
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


@contextlib.contextmanager
def no_space_left(folder: os.PathLike, what: str, cleanup: Optional[os.PathLike] = None) -> Iterator[None]:
    """Turn a full disk while writing into `folder` into ``OSError(ENOSPC, 'no space left on <folder>: ...')``.

    Args:
        folder: where the writing happens (named in the message, asked for free space).
        what: what was not written, and what to do, for the message.
        cleanup: a partial folder removed on any error.
    """
    try:
        yield
    except BaseException as e:
        full = isinstance(e, Exception) and _disk_full(e, Path(folder))
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        if full:
            raise OSError(errno.ENOSPC, f'no space left on {str(folder)[:300]}: {what}') from e
        raise


def _manifest(folder: Path, num_processes: int) -> Dict[str, Any]:
    files = {p.name: {'bytes': p.stat().st_size, 'sha256': sha256_file(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    return {'format': MANIFEST_FORMAT, 'num_processes': num_processes, 'files': files}


def _verify(folder: Path) -> Optional[str]:
    """None if `folder`'s files match its manifest (or it has none: an older checkpoint), else what is wrong."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = read_json_file(path, max_bytes=_MAX_JSON_BYTES, what='checkpoint manifest')
        files = manifest['files']
        for name, entry in files.items():
            f = folder / name
            if '/' in name or name.startswith('.') or not f.is_file():
                return f'{name[:100]} is missing'
            if f.stat().st_size != entry['bytes'] or sha256_file(f) != entry['sha256']:
                return f'{name[:100]} differs from what was saved'
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        return f'unreadable manifest ({str(e)[:200]})'
    return None


def checkpoint_processes(folder: os.PathLike) -> int:
    """How many processes wrote the checkpoint `folder` (one RNG state file each)."""
    return max(1, len(list(Path(folder).glob('random_states_*.pkl'))))


class CheckpointManager:
    """Saves/prunes checkpoints of one run; every process calls `save` (Accelerate writes per-process RNG)."""

    def __init__(self, accelerator, ckpt_dir: os.PathLike, keep: int = 3, metric_name: str = 'top1',
                 state: Optional[TrainState] = None, ema: Optional[Any] = None) -> None:
        self.accelerator = accelerator
        self.state, self.ema = state, ema  # written by us next to Accelerate's files
        self.dir = Path(ckpt_dir)
        self.keep = max(1, keep)
        self.metric_name = metric_name
        if accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.index = self._read_index()

    def _read_index(self) -> Dict[str, Any]:
        path = self.dir / INDEX
        if path.exists():
            return read_json_file(path, max_bytes=_MAX_JSON_BYTES, what='checkpoint index')
        return {'checkpoints': [], 'best': None}

    def has(self, step: int) -> bool:
        """Whether a checkpoint of `step` was saved (by this run)."""
        return any(e['step'] == step for e in self.index['checkpoints'])

    def save(self, step: int, metric: Optional[float] = None) -> Path:
        """Save the Accelerator's state as ``step_<step>``; raises OSError(ENOSPC) naming the folder on a full disk."""
        acc = self.accelerator
        name = f'step_{step:08d}'
        final, tmp = self.dir / name, self.dir / f'.tmp-{name}'
        if acc.is_main_process and tmp.is_symlink():  # a planted link: removed, never followed (Accelerate would
            tmp.unlink()                              # write the checkpoint into whatever it points to)
        elif acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        what = (f'checkpoint {name} was not written (its partial folder was removed); free some space, then '
                f'continue with --resume {self.dir.parent}')
        with no_space_left(self.dir, what, cleanup=tmp):
            acc.save_state(str(tmp))
            acc.wait_for_everyone()
            if acc.is_main_process:
                if self.state is not None:
                    write_atomic(tmp / STATE, json.dumps(self.state.state_dict(), indent=2))
                if self.ema is not None:
                    save_file({k: v.detach().cpu().contiguous() for k, v in self.ema.module.state_dict().items()},
                              str(tmp / EMA))
                write_atomic(tmp / MANIFEST, json.dumps(_manifest(tmp, acc.num_processes), indent=2))
                replace_directory(tmp, final)
        # every process keeps the same index (so `has` answers alike everywhere); the main one writes and prunes
        entries = [e for e in self.index['checkpoints'] if e['name'] != name]
        entries.append({'name': name, 'step': step, self.metric_name: metric})
        self.index['checkpoints'] = entries
        best = self.index.get('best')
        if metric is not None and (best is None or metric > best[self.metric_name]):
            self.index['best'] = {'name': name, 'step': step, self.metric_name: metric}
        removed = self._prune()
        if acc.is_main_process:
            with no_space_left(self.dir, what):
                for gone in removed:
                    shutil.rmtree(self.dir / gone, ignore_errors=True)
                write_atomic(self.dir / INDEX, json.dumps(self.index, indent=2))
        acc.wait_for_everyone()
        return final

    def forget_after(self, step: int) -> List[str]:
        """Drop checkpoints later than `step` (a resume from an older checkpoint abandons them, so that a later
        ``--resume <run>`` cannot pick them up); the main process removes their folders. Returns their names."""
        later = [e['name'] for e in self.index['checkpoints'] if e['step'] > step]
        later += sorted(p.name for p in self.dir.glob('step_*') if p.is_dir() and p.name not in later
                        and re.fullmatch(r'step_\d{1,12}', p.name) and int(p.name[5:]) > step)
        self.index['checkpoints'] = [e for e in self.index['checkpoints'] if e['step'] <= step]
        if (self.index.get('best') or {}).get('step', -1) > step:
            kept = [e for e in self.index['checkpoints'] if e.get(self.metric_name) is not None]
            self.index['best'] = max(kept, key=lambda e: e[self.metric_name]) if kept else None
        if later and self.accelerator.is_main_process:
            for name in later:
                shutil.rmtree(self.dir / name, ignore_errors=True)
            write_atomic(self.dir / INDEX, json.dumps(self.index, indent=2))
        self.accelerator.wait_for_everyone()
        return later

    def _prune(self) -> List[str]:
        """Keep the last `keep` and the best in the index; returns the names dropped."""
        best = (self.index.get('best') or {}).get('name')
        entries = sorted(self.index['checkpoints'], key=lambda e: e['step'])
        keep = {e['name'] for e in entries[-self.keep:]} | ({best} if best else set())
        self.index['checkpoints'] = [e for e in entries if e['name'] in keep]
        return [e['name'] for e in entries if e['name'] not in keep]


MAX_RNG_STATE_BYTES = 1 << 20  # a random_states_*.pkl is ~10 KB (Python's, numpy's and torch's generator states)
_MAX_RNG_FILES = 4096  # one per process
_RNG_KEYS = ('step', 'random_state', 'numpy_random_seed', 'torch_manual_seed', 'xm_seed')
_MAX_DEVICE_STATES = 1024


def check_random_states(folder: os.PathLike) -> int:
    """Read every ``random_states_*.pkl`` of a checkpoint with our restricted reader and check it is what
    Accelerate's `save_state` writes; returns how many there are.

    Accelerate's own reader (``accelerate.utils.load``) is ``torch.load(weights_only=True)`` with numpy's
    ``_reconstruct``, ``ndarray`` and ``dtype`` allow-listed, through which a forged file can set dtype flags; the
    checkpoint manifest's hashes would catch only a file changed after its manifest was written, not a folder
    forged whole. So each file is first read by `original.restricted_pickle` (no numpy code runs: arrays are
    rebuilt from checked numeric dtypes) and its content checked by setting it on throw-away generators; Accelerate
    then reads files already shown to be plain RNG states (the same bytes, in a folder nobody is writing).

    Raises:
        ValueError: one line naming the file: too large, not a torch file, a refused global or call, or content that
            is not an RNG state.
    """
    import pickle

    import torch

    from ..original import numpy_arrays, restricted_pickle, storage_limit
    from ..utils import display_path, regular_file_size, short_message

    files = sorted(Path(folder).glob('random_states_*.pkl'))
    if len(files) > _MAX_RNG_FILES:
        raise ValueError(f'{display_path(folder)}: {len(files)} random_states_*.pkl files (at most {_MAX_RNG_FILES}, '
                         'one per process)')
    for path in files:
        name = display_path(path)
        if not re.fullmatch(r'random_states_\d{1,4}\.pkl', path.name):
            raise ValueError(f'{name}: not a random state file of a process (random_states_<N>.pkl)')
        size = regular_file_size(path, 'random state file')
        if size > MAX_RNG_STATE_BYTES:
            raise ValueError(f'{name}: too large for a random state file ({size} bytes; at most '
                             f'{MAX_RNG_STATE_BYTES})')
        try:
            with open(path, 'rb') as f, storage_limit(size), numpy_arrays():
                states = torch.load(f, map_location='cpu', weights_only=False, pickle_module=restricted_pickle)
        except (pickle.UnpicklingError, ValueError, RuntimeError, EOFError, OSError, TypeError, KeyError,
                AttributeError, IndexError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f'{name}: not a random state file Accelerate wrote ({short_message(e, 200)})') from None
        problem = _rng_problem(states)
        if problem:
            raise ValueError(f'{name}: not a random state file Accelerate wrote ({problem})')
    return len(files)


def _rng_problem(states: Any) -> Optional[str]:
    """None if `states` is a dict of generator states as Accelerate saves them, else what is wrong (each state is
    set on a throw-away generator, which checks its format)."""
    import random

    import numpy as np
    import torch

    def byte_tensor(t: Any) -> bool:
        return type(t) is torch.Tensor and t.dtype == torch.uint8 and t.dim() == 1 and t.numel() <= (1 << 16)

    if not isinstance(states, dict) or not all(isinstance(k, str) for k in states):
        return f'a {type(states).__name__}, not a dict of generator states'
    unknown = [k for k in states if k not in _RNG_KEYS and not re.fullmatch(r'torch_[a-z]{1,10}_manual_seed', k)]
    if unknown or not {'random_state', 'numpy_random_seed', 'torch_manual_seed'} <= set(states):
        return f'keys {sorted(states)[:10]}'[:200]
    step = states.get('step', 0)
    if type(step) is not int or step < 0:
        return 'its step is not a count'
    try:
        random.Random().setstate(states['random_state'])
        key = states['numpy_random_seed']
        if not (isinstance(key, tuple) and len(key) == 5 and key[0] == 'MT19937' and type(key[1]) is np.ndarray
                and key[1].dtype == np.uint32 and key[1].shape == (624,)):
            return "numpy's state is not an MT19937 key"
        np.random.RandomState().set_state(key)
        if not byte_tensor(states['torch_manual_seed']):
            return "torch's state is not a byte tensor"
        torch.Generator().set_state(states['torch_manual_seed'])
        for k, v in states.items():
            if k.startswith('torch_') and k != 'torch_manual_seed':
                device_states = v if isinstance(v, list) else [v]
                if len(device_states) > _MAX_DEVICE_STATES or not all(byte_tensor(t) for t in device_states):
                    return f'{k} is not a list of byte tensors'
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        return str(e)[:200] or type(e).__name__
    return None


def load_checkpoint_extras(folder: os.PathLike, state: TrainState, ema: Optional[Any] = None) -> None:
    """Load ``train_state.json`` (and ``ema.safetensors`` when `ema` is given) of a checkpoint folder, and check
    its RNG state files (`check_random_states`): all before Accelerate reads anything of it.

    Raises:
        ValueError: a checkpoint without them (written by an older version) or with damaged ones, naming the file.
    """
    folder = Path(folder)
    check_random_states(folder)
    path = folder / STATE
    if not os.path.lexists(path):  # anything else there (a link to a device, a folder) is refused by the reader
        raise ValueError(f'resume {str(folder)[:300]}: no {STATE} (a checkpoint of an older version, or not one of '
                         'a timm_alphanet run)')
    try:
        state.load_state_dict(read_json_file(path, max_bytes=_MAX_JSON_BYTES, what='train state'))
    except ValueError as e:
        raise ValueError(f'{str(path)[:300]}: {str(e)[:300]}') from None
    if ema is None:
        return
    if not (folder / EMA).is_file():
        raise ValueError(f'resume {str(folder)[:300]}: no {EMA}, but this run keeps a weight EMA (--model-ema); the '
                         'checkpoint was saved without one')
    try:
        ema.module.load_state_dict(load_file(str(folder / EMA), device=str(next(ema.module.parameters()).device)))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f'{str(folder / EMA)[:300]}: not the EMA of this model ({str(e)[:200]})') from None


def _is_checkpoint(path: Path) -> bool:
    return ((path / MANIFEST).exists() or (path / STATE).exists() or any(path.glob('random_states_*.pkl'))
            or any(path.glob('custom_checkpoint_*')))


def find_checkpoint(path: os.PathLike) -> Path:
    """`path` itself if it is a checkpoint folder, else the latest complete checkpoint under a run folder.

    A checkpoint whose files no longer match its manifest (truncated, overwritten) is skipped with a warning for the
    previous one; a damaged checkpoint named directly is refused.

    Raises:
        FileNotFoundError: no checkpoint folder under `path`.
        ValueError: a damaged checkpoint named directly, or only damaged checkpoints under a run folder.
    """
    path = Path(path)
    if _is_checkpoint(path):
        problem = _verify(path)
        if problem:
            raise ValueError(f'resume {str(path)[:300]!r}: damaged checkpoint ({problem}); resume from its run folder '
                             'to fall back to the previous complete checkpoint')
        return path
    ckpt_dir = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
    candidates = sorted((p for p in ckpt_dir.glob('step_*') if p.is_dir()), reverse=True)
    if not candidates:
        if (path / 'args.yaml').is_file():  # a run folder whose run stopped before saving anything
            raise FileNotFoundError(f'resume {str(path)[:300]!r}: this run stopped before its first checkpoint, so '
                                    'there is nothing to resume; start it again without --resume (the same --output '
                                    'and --experiment reclaim the folder)')
        raise FileNotFoundError(f'resume {str(path)[:300]!r}: no checkpoint folder (step_*) found; give a run folder '
                                'or one of its checkpoints/step_* folders')
    damaged: List[Tuple[Path, str]] = []
    for candidate in candidates:
        problem = _verify(candidate)
        if problem is None:
            for bad, why in damaged:
                _logger.warning(f'WARNING: checkpoint {bad} is damaged ({why}); resuming from the previous complete '
                                f'one, {candidate.name}')
            return candidate
        damaged.append((candidate, problem))
    raise ValueError(f'resume {str(path)[:300]!r}: every checkpoint is damaged (latest: {damaged[0][0].name}: '
                     f'{damaged[0][1]})')
