"""`run(cfg)`: a whole training run from a `TrainConfig`, built from `build.py`'s pieces and `train_one_epoch`.

A supernet (any model following the `Supernet` protocol) trains a sandwich of subnets per step, keyed by the
global step so every process and every resume agree; any other model is a student distilled from the teacher.
Every builder runs before anything is written, so a bad config fails without leaving a run folder.
"""
import csv
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import torch.nn as nn
from accelerate.utils import broadcast_object_list, gather_object

from ..cost.flops import mflops
from ..evaluation import evaluate, format_table, validate_subnets
from ..export import save_pretrained
from ..models import is_supernet
from ..spaces import SearchSpace
from .build import (build_accelerator, build_data, build_ema, build_loaders, build_model, build_optimizer,
                    build_scheduler, build_task, learning_rate, model_is_supernet, validation_archs)
from .checkpoint import CheckpointManager, TrainState, find_checkpoint
from .config import TrainConfig
from .data import create_mixup
from .epoch import NonFiniteLossError, train_one_epoch

__all__ = ['run']


def run(cfg: TrainConfig) -> Dict[str, Dict[str, float]]:
    """Train as `cfg` says; returns the last validation results ({name: {top1, top5, loss}})."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    logging.getLogger('accelerate').setLevel(logging.WARNING)  # one line per saved file otherwise
    acc = build_accelerator(cfg)
    model_is_supernet(cfg)  # a config error fails here, before the dataset cache is written
    data = build_data(cfg, acc)
    model = build_model(cfg, acc, data.num_classes)
    train_loader, val_loader = build_loaders(cfg, data, model)
    optimizer, ema, mixup = build_optimizer(cfg, acc, model), build_ema(cfg, model), create_mixup(cfg, data.num_classes)
    model, optimizer, train_loader, val_loader = acc.prepare(model, optimizer, train_loader, val_loader)
    unwrapped = acc.unwrap_model(model)
    scheduler, num_epochs = build_scheduler(cfg, optimizer, len(train_loader))
    task = build_task(cfg, acc, model)
    supernet, val_archs = is_supernet(unwrapped), validation_archs(cfg, unwrapped)
    run_dir, state, ckpts = _start(cfg, acc, scheduler, ema)  # the first write
    acc.print(f'{"supernet" if supernet else "KD"} training on {acc.num_processes} process(es), {acc.device}, '
              f'global batch {cfg.batch_size * acc.num_processes}, lr {learning_rate(cfg, acc.num_processes):.4g}, '
              f'{num_epochs} epochs x {len(train_loader)} steps, run folder {run_dir}')
    if cfg.val_teacher and not supernet and state.step == 0:
        state.history.append({'epoch': -1, 'teacher': _validate_teacher(cfg, acc, task, val_loader)})
    results: Dict[str, Dict[str, float]] = {}
    while state.epoch < num_epochs and not (cfg.max_train_steps and state.step >= cfg.max_train_steps):
        train_loader.set_epoch(state.epoch)
        skip = state.batch_in_epoch
        loader = acc.skip_first_batches(train_loader, skip) if skip else train_loader
        try:
            epoch = train_one_epoch(cfg, acc, task, loader, optimizer, scheduler, state, len(train_loader),
                                    mixup=mixup, ema=ema, save_checkpoint=ckpts.save)
        except NonFiniteLossError as e:
            acc.end_training()
            raise NonFiniteLossError(f'{e} Run folder: {run_dir}') from None
        if not epoch.completed:
            break
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        scheduler.step(state.epoch)
        results = _validate(cfg, acc, unwrapped, val_archs, train_loader, val_loader)
        _record(acc, run_dir, state, epoch, optimizer, results)
        ckpts.save(state.step, metric=results['max' if supernet else 'student']['top1'])
    _finish(acc, unwrapped, state, run_dir, results, val_archs)
    return results


def _start(cfg: TrainConfig, acc, scheduler, ema):
    """The run folder (with args.yaml), the train state and checkpoints; resumes when `cfg.resume` says so."""
    resume_from = find_checkpoint(cfg.resume) if cfg.resume else None  # a bad path fails before any write
    run_dir = resume_from.parent.parent if resume_from and not cfg.experiment else _run_dir(cfg)
    acc.project_configuration.project_dir = acc.project_configuration.logging_dir = str(run_dir)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / '.args.yaml.tmp'
        tmp.write_text(cfg.to_yaml())
        os.replace(tmp, run_dir / 'args.yaml')
    acc.wait_for_everyone()
    state = TrainState()
    acc.register_for_checkpointing(state, scheduler)
    if ema is not None:
        acc.register_for_checkpointing(ema)
    ckpts = CheckpointManager(acc, run_dir / 'checkpoints', keep=cfg.checkpoint_hist)
    if resume_from is not None:
        acc.load_state(str(resume_from))
        acc.print(f'resumed from {resume_from}: epoch {state.epoch}, step {state.step}')
    if acc.log_with and not acc.trackers:
        acc.init_trackers('train', config={k: v for k, v in cfg.to_dict().items()
                                           if isinstance(v, (int, float, str, bool))})
    return run_dir, state, ckpts


def _run_dir(cfg: TrainConfig) -> Path:
    name = cfg.experiment
    if not name:
        names = [f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}"]
        broadcast_object_list(names)  # the same folder on every process
        name = names[0]
    return Path(cfg.output) / name


def _validate_teacher(cfg: TrainConfig, acc, task, val_loader) -> Dict[str, float]:
    res = evaluate(acc, task.teacher_logits, val_loader, desc='eval teacher', progress=not cfg.no_progress)
    acc.print(f'teacher: top1 {res["top1"]:.2f} top5 {res["top5"]:.2f}')
    return res


def _validate(cfg: TrainConfig, acc, model: nn.Module, val_archs, train_loader, val_loader):
    """Supernet: BN-calibrated max, min and eval_archs; otherwise the student."""
    progress = not cfg.no_progress
    if val_archs:
        return validate_subnets(acc, model, val_archs, train_loader, val_loader, cfg.bn_calib_batches, progress)
    results = {'student': evaluate(acc, model, val_loader, desc='eval', progress=progress)}
    model.train()
    return results


def _record(acc, run_dir: Path, state: TrainState, epoch, optimizer, results) -> None:
    row = {'epoch': state.epoch - 1, 'step': state.step, 'train_loss': epoch.train_loss,
           'lr': optimizer.param_groups[0]['lr'], 'time_s': epoch.seconds,
           **{f'{n}_{k}': v for n, r in results.items() for k, v in r.items()}}
    state.history.append(row)
    acc.log({f'val/{k}': v for k, v in row.items() if k not in ('epoch', 'step')}, step=state.step)
    acc.print(f'epoch {row["epoch"]}: train loss {epoch.train_loss:.4f} | ' + ' | '.join(
        f'{n} top1 {r["top1"]:.2f} top5 {r["top5"]:.2f} loss {r["loss"]:.3f}' for n, r in results.items()))
    if acc.is_main_process:
        _write_summary(run_dir, state.history)


def _finish(acc, model: nn.Module, state: TrainState, run_dir: Path, results, val_archs) -> None:
    _check_processes_agree(acc, model, state)
    if acc.is_main_process:
        save_pretrained(model, run_dir / 'final', overwrite=True)  # a resumed run replaces its own
        if results:
            space = model.space if is_supernet(model) else None
            info = {n: {'res': a.resolution, **({'MFLOPs': round(mflops(a, space), 2)}
                                              if isinstance(space, SearchSpace) else {})} for n, a in val_archs}
            acc.print('\n' + format_table(results, info))
    acc.wait_for_everyone()
    acc.end_training()


def _check_processes_agree(acc, model: nn.Module, state: TrainState) -> None:
    """Every process trained the same subnet sequence and holds the same weights (raises otherwise)."""
    if acc.num_processes == 1:
        return
    h = hashlib.sha1()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    mine = (state.subnet_digest, h.hexdigest())
    everyone = gather_object([mine])
    if len(set(everyone)) != 1:
        raise RuntimeError(f'processes disagree (subnet-sequence digest, weights digest): {everyone}')
    acc.print(f'{acc.num_processes} processes agree: same subnet sequence ({mine[0][:12]}) and identical weights '
              f'({mine[1][:12]})')


def _write_summary(run_dir: Path, history: List[Dict[str, Any]]) -> None:
    rows = [r for r in history if 'train_loss' in r]
    tmp = run_dir / '.summary.json.tmp'
    tmp.write_text(json.dumps(history, indent=2))
    os.replace(tmp, run_dir / 'summary.json')
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(run_dir / '.summary.csv.tmp', 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(run_dir / '.summary.csv.tmp', run_dir / 'summary.csv')
