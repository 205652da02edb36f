"""Checkpoints with ``Accelerator.save_state``: atomic (temp folder + rename), last K kept plus the best.

Layout: ``<run>/checkpoints/step_00000120/`` (Accelerate's files: model, optimizer, scheduler, EMA, train
state, RNG states, sampler) and ``<run>/checkpoints/index.json`` (names, steps, metrics, best), itself
written atomically. A folder that exists under its final name is complete.
"""
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ['CheckpointManager', 'TrainState', 'find_checkpoint']

INDEX = 'index.json'


class TrainState:
    """Loop position and bookkeeping, saved with the checkpoint (`register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step = 0  # optimizer steps taken (skipped non-finite steps included): keys the subnet sequence
        self.epoch = 0  # epoch in progress
        self.batch_in_epoch = 0  # batches of `epoch` already consumed
        self.nonfinite_in_row = 0
        self.subnet_digest = ''  # hash chain of the subnets trained so far (compared across processes)
        self.history: List[Dict[str, Any]] = []

    def state_dict(self) -> Dict[str, Any]:
        return dict(step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                    nonfinite_in_row=self.nonfinite_in_row, subnet_digest=self.subnet_digest, history=json.dumps(self.history))

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        self.step, self.epoch, self.batch_in_epoch = int(d['step']), int(d['epoch']), int(d['batch_in_epoch'])
        self.nonfinite_in_row = int(d['nonfinite_in_row'])
        self.subnet_digest = d.get('subnet_digest', '')
        self.history = json.loads(d['history'])


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """Saves/prunes checkpoints of one run; every process calls `save` (Accelerate writes per-process RNG)."""

    def __init__(self, accelerator, ckpt_dir: os.PathLike, keep: int = 3, metric_name: str = 'top1') -> None:
        self.accelerator = accelerator
        self.dir = Path(ckpt_dir)
        self.keep = max(1, keep)
        self.metric_name = metric_name
        if accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.index = self._read_index()

    def _read_index(self) -> Dict[str, Any]:
        path = self.dir / INDEX
        if path.exists():
            with open(path) as f:
                return json.load(f)
        return {'checkpoints': [], 'best': None}

    def save(self, step: int, metric: Optional[float] = None) -> Path:
        acc = self.accelerator
        name = f'step_{step:08d}'
        final, tmp = self.dir / name, self.dir / f'.tmp-{name}'
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            entries = [e for e in self.index['checkpoints'] if e['name'] != name]
            entries.append({'name': name, 'step': step, self.metric_name: metric})
            self.index['checkpoints'] = entries
            best = self.index.get('best')
            if metric is not None and (best is None or metric > best[self.metric_name]):
                self.index['best'] = {'name': name, 'step': step, self.metric_name: metric}
            self._prune()
            _write_json_atomic(self.dir / INDEX, self.index)
        acc.wait_for_everyone()
        return final

    def _prune(self) -> None:
        best = (self.index.get('best') or {}).get('name')
        entries = sorted(self.index['checkpoints'], key=lambda e: e['step'])
        keep = {e['name'] for e in entries[-self.keep:]} | ({best} if best else set())
        for e in entries:
            if e['name'] not in keep:
                shutil.rmtree(self.dir / e['name'], ignore_errors=True)
        self.index['checkpoints'] = [e for e in entries if e['name'] in keep]


def find_checkpoint(path: os.PathLike) -> Path:
    """`path` itself if it is a checkpoint folder, else the latest complete checkpoint under a run folder."""
    path = Path(path)
    if (path / 'train_state.json').exists() or any(path.glob('random_states_*.pkl')):
        return path
    ckpt_dir = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
    candidates = sorted(p for p in ckpt_dir.glob('step_*') if p.is_dir())
    if not candidates:
        raise FileNotFoundError(f'resume {str(path)!r}: no checkpoint folder (step_*) found; give a run folder or '
                                'one of its checkpoints/step_* folders')
    return candidates[-1]
