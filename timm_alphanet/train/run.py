"""`run(cfg)`: a whole training run from a `TrainConfig`, built from `build.py`'s pieces and `train_one_epoch`.

A supernet (any model following the `Supernet` protocol) trains a sandwich of subnets per step, keyed by the
global step so every process and every resume agree; any other model is a student distilled from the teacher.
Every builder runs, and the run folder and a resumed checkpoint are checked, before anything is written, so a bad
config fails without leaving a run folder. A run folder holds one run: a non-empty one is only continued with
``--resume`` (and the same model, space, batch size and number of processes, unless ``allow_resume_changes``);
default names are unique, and ``<output>/latest`` links to the newest. The last lines say where the models are
and what to run next (`final.next_steps`).
"""
import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import re
import reprlib
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn
from accelerate.utils import broadcast_object_list, gather_object

from ..evaluation import evaluate, validate_subnets
from ..models import is_supernet
from ..task import TeacherOutputError
from ..utils import LOCK_FILE, check_writable_folder, claim_folder, display_path, replace_symlink, write_atomic
from .build import (build_accelerator, build_data, build_ema, build_loaders, build_model, build_optimizer,
                    build_scheduler, build_task, learning_rate, model_is_supernet, validation_archs)
from .checkpoint import (INDEX, CheckpointManager, TrainState, checkpoint_processes, find_checkpoint,
                         load_checkpoint_extras)
from .config import TrainConfig, _read_yaml
from .data import create_mixup
from .epoch import NonFiniteLossError, train_one_epoch
from .final import final_recipe, final_report, next_steps, read_final, write_final

__all__ = ['RunPlan', 'plan_run', 'run']

ESSENTIALS = ('model', 'space', 'batch_size')  # with the process count: what a resumed run must keep
LATEST = 'latest'


class RunPlan(NamedTuple):
    """Where a run goes and what it continues, decided before anything is written."""
    run_dir: Optional[Path]  # None: a new folder, named uniquely when the run starts
    resume_from: Optional[Path]  # the verified checkpoint to continue
    previous: Optional[Dict[str, Any]]  # the args.yaml of the checkpoint's run, when it has one


def run(cfg: TrainConfig) -> Dict[str, Dict[str, float]]:
    """Train as `cfg` says; returns the last per-epoch validation results ({name: {top1, top5, loss}}; {} when
    nothing was validated, e.g. a finished run resumed again). The final models' results are in their folders.

    The main process claims the run folder (`claim_folder`) before its first write and holds it until the run
    ends: a second run into a folder in use is refused (ValueError naming the holder's pid and host)."""
    with contextlib.ExitStack() as claims:
        return _run(cfg, claims)


def _run(cfg: TrainConfig, claims: contextlib.ExitStack) -> Dict[str, Dict[str, float]]:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    logging.getLogger('accelerate').setLevel(logging.WARNING)  # one line per saved file otherwise
    acc = build_accelerator(cfg)
    model_is_supernet(cfg)  # a config error fails here, before the dataset cache is written
    plan = plan_run(cfg, acc.num_processes)
    data = build_data(cfg, acc)
    model = build_model(cfg, acc, data.num_classes)
    train_loader, val_loader = build_loaders(cfg, data, model)
    supernet = is_supernet(model)
    recipe = final_recipe(cfg, model, len(data.train)) if supernet else None  # a bad recipe fails before writing
    optimizer, mixup = build_optimizer(cfg, acc, model), create_mixup(cfg, data.num_classes)
    model, optimizer, train_loader, val_loader = acc.prepare(model, optimizer, train_loader, val_loader)
    unwrapped = acc.unwrap_model(model)
    ema = build_ema(cfg, unwrapped, acc.device)  # after prepare: on the model's device
    scheduler, num_epochs = build_scheduler(cfg, optimizer, len(train_loader))
    task = build_task(cfg, acc, model)
    val_archs = validation_archs(cfg, unwrapped)
    state = _load(cfg, acc, plan, scheduler, optimizer, ema, num_epochs)
    finished = state.epoch >= num_epochs or bool(cfg.max_train_steps and state.step >= cfg.max_train_steps)
    if finished and plan.run_dir is not None and (plan.run_dir / 'final').is_dir():
        _say_finished(cfg, acc, plan.run_dir, state, num_epochs)
        return {}
    run_dir = _start(cfg, acc, plan, claims)  # the first write
    ckpts = CheckpointManager(acc, run_dir / 'checkpoints', keep=cfg.checkpoint_hist, state=state, ema=ema)
    if plan.resume_from is not None and ckpts.forget_after(state.step):
        acc.print(f'resumed from step {state.step}: the run\'s later checkpoints were removed (they belong to the '
                  'abandoned continuation)')
    acc.print(f'{"supernet" if supernet else "KD"} training on {acc.num_processes} process(es), {acc.device}, '
              f'global batch {cfg.batch_size * acc.num_processes}, lr {learning_rate(cfg, acc.num_processes):.4g}, '
              f'{num_epochs} epochs x {len(train_loader)} steps, run folder {run_dir}')
    if cfg.val_teacher and not supernet and state.step == 0:
        state.history.append({'epoch': -1, 'teacher': _validate_teacher(cfg, acc, task, val_loader)})
    results: Dict[str, Dict[str, float]] = {}
    while not finished:
        train_loader.set_epoch(state.epoch)
        train_loader.dataset.set_epoch(state.epoch)  # seeds augmentation (Accelerate only reaches the sampler)
        skip = state.batch_in_epoch
        loader = acc.skip_first_batches(train_loader, skip) if skip else train_loader
        try:
            epoch = train_one_epoch(cfg, acc, task, loader, optimizer, scheduler, state, len(train_loader),
                                    mixup=mixup, ema=ema, save_checkpoint=ckpts.save)
        except NonFiniteLossError as e:
            _end(acc)
            raise NonFiniteLossError(f'{e} Run folder: {run_dir}') from None
        except TeacherOutputError as e:  # name the batch: the same images give the same logits on a rerun
            _end(acc)
            raise TeacherOutputError(f'step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch}): {e}. '
                                     f'Run folder: {run_dir}') from None
        if not epoch.completed:  # max_train_steps: a checkpoint, so that --resume can continue from here
            path = ckpts.dir / f'step_{state.step:08d}' if ckpts.has(state.step) else ckpts.save(state.step)
            acc.print(f'stopped at max_train_steps {cfg.max_train_steps} (epoch {state.epoch}, batch '
                      f'{state.batch_in_epoch} of {len(train_loader)}); checkpoint {path}')
            break
        state.epoch, state.batch_in_epoch, state.loss_sum, state.loss_steps = state.epoch + 1, 0, 0.0, 0
        _sync_buffers(acc, unwrapped)  # each process updated BN statistics from its own batches since the last sync
        if ema is not None:
            _sync_buffers(acc, ema.module)
        scheduler.step(state.epoch)
        # BN calibration draws from train_loader: position it as an uninterrupted epoch leaves it (a resumed epoch
        # iterated a skip-loader copy instead), so a resumed run validates on the same batches
        train_loader.set_epoch(state.epoch)
        results = _validate(cfg, acc, unwrapped, val_archs, train_loader, val_loader, ema)
        _record(acc, run_dir, state, epoch, optimizer, results)
        ckpts.save(state.step, metric=results['max' if supernet else 'student']['top1'])
        finished = state.epoch >= num_epochs or bool(cfg.max_train_steps and state.step >= cfg.max_train_steps)
    _finish(cfg, acc, unwrapped, state, run_dir, data, val_archs, recipe, ema)
    return results


def plan_run(cfg: TrainConfig, num_processes: int) -> RunPlan:
    """Check where `cfg` trains and what it resumes, writing nothing.

    Raises:
        ValueError: an ``experiment`` folder that holds another run (without ``resume`` of it), a reserved or hidden
            experiment name, a damaged checkpoint, or a resume whose essentials (model, space, batch size, number
            of processes) differ from the checkpoint's run without ``allow_resume_changes``.
        FileNotFoundError: ``resume`` names no checkpoint.
    """
    resume_from = find_checkpoint(cfg.resume) if cfg.resume else None
    source = None
    check_writable_folder(cfg.output, 'training output folder')  # before the dataset, the model and any calibration
    if resume_from is not None and resume_from.parent.name == 'checkpoints':
        source = Path(os.path.realpath(resume_from)).parent.parent
    run_dir = source
    if cfg.experiment:
        parts = Path(cfg.experiment).parts
        if parts[-1:] == (LATEST,) or any(p.startswith('.') for p in parts) or Path(cfg.experiment).is_absolute():
            raise ValueError(f'experiment: {cfg.experiment[:100]!r} is not allowed (a relative folder name, not '
                             f'{LATEST!r}, which links to the newest run, and not hidden)')
        run_dir = Path(cfg.output) / cfg.experiment
        same = source is not None and run_dir.is_dir() and os.path.samefile(run_dir, source)
        if not same and _holds_run(run_dir):
            raise ValueError(f'run folder {str(run_dir)[:300]} already holds a run; continue it with --resume '
                             f'{str(run_dir)[:300]}, or choose another --experiment (a new run never mixes into '
                             'another one\'s checkpoints)')
    previous = None
    if resume_from is not None:
        args = source / 'args.yaml' if source is not None else None
        # lexists: anything there but a regular file (a link to a device, a folder) is refused by the reader
        previous = _read_yaml(args, what='run config') if args is not None and os.path.lexists(args) else None
        if previous is not None and not isinstance(previous, dict):
            raise ValueError(f'{args}: not a run config (a mapping of option values)')
        changes = _essential_changes(cfg, previous, num_processes, checkpoint_processes(resume_from))
        if changes and not cfg.allow_resume_changes:
            raise ValueError(f'resume {str(resume_from)[:300]}: this run differs from the checkpoint\'s in '
                             f'{"; ".join(changes)}. Resume with the same model, space, batch size and number of '
                             'processes, or pass --allow-resume-changes to continue anyway (then not exactly)')
        if changes:
            logging.getLogger(__name__).warning(f'WARNING: resuming with changes ({"; ".join(changes)}): the run '
                                                'will not be what an uninterrupted one would have been')
    return RunPlan(run_dir, resume_from, previous)


def _essential_changes(cfg: TrainConfig, previous: Optional[Dict[str, Any]], num_processes: int,
                       saved_processes: int) -> List[str]:
    now = cfg.to_dict()
    changes = [f'{key} {reprlib.repr(previous[key])} -> {reprlib.repr(now[key])}' for key in ESSENTIALS
               if previous is not None and key in previous and previous[key] != now[key]]
    if saved_processes != num_processes:
        changes.append(f'processes {saved_processes} -> {num_processes}')
    return changes


def _load(cfg: TrainConfig, acc, plan: RunPlan, scheduler, optimizer, ema, num_epochs: int) -> TrainState:
    """The train state: fresh, or loaded from the plan's checkpoint; the schedule is positioned to it.

    The schedule is not restored from the checkpoint but recomputed from `cfg` (timm schedules are functions of the
    epoch and update count), so a run resumed with more epochs follows a schedule over the new total instead of
    staying at the end of the old one.
    """
    state = TrainState()
    if plan.resume_from is not None:
        load_checkpoint_extras(plan.resume_from, state, ema)  # ours first: a foreign folder fails before Accelerate
        acc.load_state(str(plan.resume_from))
    reached = optimizer.param_groups[0]['lr']
    scheduler.step(state.epoch)
    scheduler.step_update(num_updates=state.step)
    if plan.resume_from is None:
        return state
    lr = optimizer.param_groups[0]['lr']
    msg = f'resumed from {plan.resume_from}: epoch {state.epoch}, step {state.step}, lr {lr:.4g}'
    planned = (plan.previous or {}).get('epochs')
    if isinstance(planned, int) and planned != cfg.epochs and state.epoch < num_epochs:
        msg += (f'; the run was planned for {planned} epochs, now {cfg.epochs}: the {cfg.sched} schedule is '
                f'recomputed over {num_epochs} epochs, so lr continues at {lr:.4g} (the {planned}-epoch schedule '
                f'had reached {reached:.4g})')
    acc.print(msg)
    return state


def _say_finished(cfg: TrainConfig, acc, run_dir: Path, state: TrainState, num_epochs: int) -> None:
    models = read_final(run_dir)
    stop = (f'max_train_steps {cfg.max_train_steps}' if cfg.max_train_steps and state.step >= cfg.max_train_steps
            else f'{num_epochs} epochs')
    acc.print(f'run {run_dir} is already finished (epoch {state.epoch}, step {state.step}: {stop}); nothing to '
              'train. To train longer, resume it with a larger --epochs (the schedule is then recomputed over the '
              'new total).')
    if acc.is_main_process:
        print('\n'.join(['', final_report(models), '', *next_steps(cfg, run_dir, models)]), flush=True)
    _end(acc)


def _start(cfg: TrainConfig, acc, plan: RunPlan, claims: contextlib.ExitStack) -> Path:
    """Claim the run folder (a new one is named uniquely) for the run (held by `claims`), write args.yaml, point
    ``latest`` at it. A claim refused, or a new run's folder filled since `plan_run`, fails on every process."""
    run_dir, error = plan.run_dir, None
    if acc.is_main_process:
        try:
            run_dir = _new_run_dir(cfg) if run_dir is None else run_dir
            claims.enter_context(claim_folder(run_dir, 'run folder'))
            if plan.resume_from is None and _holds_run(run_dir):  # another run wrote it since plan_run
                raise ValueError(f'run folder {display_path(run_dir)} already holds a run; continue it with --resume, '
                                 'or choose another --experiment')
            if plan.resume_from is None and _stopped_before_first_checkpoint(run_dir):
                _reclaim(run_dir)
            write_atomic(run_dir / 'args.yaml', cfg.to_yaml())
            _link_latest(run_dir, Path(cfg.output))
        except ValueError as e:
            error = str(e)
    names = [str(run_dir) if run_dir is not None else None, error]
    broadcast_object_list(names)  # the same folder on every process
    if names[1] is not None:
        _end(acc)
        raise ValueError(names[1])
    run_dir = Path(names[0])
    acc.wait_for_everyone()
    acc.project_configuration.project_dir = acc.project_configuration.logging_dir = str(run_dir)
    if acc.log_with and not acc.trackers:
        acc.init_trackers('train', config={k: v for k, v in cfg.to_dict().items()
                                           if isinstance(v, (int, float, str, bool))})
    return run_dir


# what a run writes before its first checkpoint: a folder holding only these (and no complete checkpoint) is a run
# stopped before it saved anything to continue from, which a new run may reclaim
_BEFORE_FIRST_CHECKPOINT = frozenset({LOCK_FILE, 'args.yaml', 'summary.json', 'summary.csv', 'checkpoints'})


def _holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run to continue: anything besides a claim's lock file and what a run stopped before
    its first checkpoint leaves (`_stopped_before_first_checkpoint`)."""
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()) \
        and not _stopped_before_first_checkpoint(run_dir)


def _stopped_before_first_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` is what a run killed before its first checkpoint leaves: args.yaml (and the summary of an
    epoch whose checkpoint was not written), and a checkpoints/ folder with at most partial ``.tmp-step_*`` folders
    and an index, but no ``step_*`` checkpoint and no final/. There is nothing in it to resume from."""
    if not (run_dir / 'args.yaml').is_file() or (run_dir / 'args.yaml').is_symlink():
        return False
    if any(p.name not in _BEFORE_FIRST_CHECKPOINT or p.is_symlink() for p in run_dir.iterdir()):
        return False
    ckpts = run_dir / 'checkpoints'
    return not ckpts.exists() or (ckpts.is_dir() and all(
        (p.name.startswith('.tmp-step_') and p.is_dir() or p.name == INDEX) and not p.is_symlink()
        for p in ckpts.iterdir()))


def _reclaim(run_dir: Path) -> None:
    """Remove what a run stopped before its first checkpoint left (called under the folder's claim, whose flock
    proves that run is no longer alive), so the new run starts from an empty folder."""
    logging.getLogger(__name__).warning(f'WARNING: run folder {display_path(run_dir)} holds a run stopped before its '
                                        'first checkpoint (nothing to resume from); starting it again there')
    shutil.rmtree(run_dir / 'checkpoints', ignore_errors=True)
    for name in ('summary.json', 'summary.csv', 'args.yaml'):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def _new_run_dir(cfg: TrainConfig) -> Path:
    """``<output>/<time>-<model>``, with ``-2``, ``-3``, ... when runs start in the same second (mkdir is atomic)."""
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9._-]+', '_', cfg.model).strip('._')[:80]}"
    for i in itertools.count(1):
        path = output / (base if i == 1 else f'{base}-{i}')
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError('unreachable')


def _link_latest(run_dir: Path, output: Path) -> None:
    """Point ``<output>/latest`` at `run_dir` (relative, also for ``--experiment a/b``), replacing the old link
    atomically."""
    link = output / LATEST
    if link.exists() and not link.is_symlink():
        logging.getLogger(__name__).warning(f'WARNING: {link} is not a link; not pointing it at the new run')
        return
    try:
        replace_symlink(link, os.path.relpath(run_dir, output))
    except OSError as e:  # a file system without symbolic links
        logging.getLogger(__name__).warning(f'WARNING: could not link {link} to the run ({e})')


def _validate_teacher(cfg: TrainConfig, acc, task, val_loader) -> Dict[str, float]:
    res = evaluate(acc, task.teacher_logits, val_loader, desc='eval teacher', progress=not cfg.no_progress)
    acc.print(f'teacher: top1 {res["top1"]:.2f} top5 {res["top5"]:.2f}')
    return res


def _validate(cfg: TrainConfig, acc, model: nn.Module, val_archs, train_loader, val_loader, ema=None):
    """Supernet: BN-calibrated max, min and eval_archs; otherwise the student (and its weight EMA)."""
    progress = not cfg.no_progress
    if val_archs:
        return validate_subnets(acc, model, val_archs, train_loader, val_loader, cfg.bn_calib_batches, progress)
    results = {'student': evaluate(acc, model, val_loader, desc='eval', progress=progress)}
    if ema is not None:
        results['ema'] = evaluate(acc, ema.module, val_loader, desc='eval ema', progress=progress)
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


def _finish(cfg: TrainConfig, acc, model: nn.Module, state: TrainState, run_dir: Path, data, val_archs,
            recipe, ema=None) -> None:
    """Check the processes agree, write final/ (models measured as saved), print the table and what is next."""
    _sync_buffers(acc, model)
    if ema is not None:
        _sync_buffers(acc, ema.module)
    _check_processes_agree(acc, model, state)
    # the run by its folder's name: model cards and config.json are published, this machine's paths are not
    training = {'run': run_dir.name, 'epochs': state.epoch, 'steps': state.step}
    if ema is not None:  # a KD student with --model-ema: final/ holds the EMA weights (timm's deployable ones)
        model = ema.module
        training['weights'] = f'EMA (decay {cfg.model_ema_decay})'
    models = write_final(acc, cfg, model, run_dir, data.train, data.val, val_archs, recipe, training)
    if acc.is_main_process:
        print('\n'.join(['', final_report(models), '', *next_steps(cfg, run_dir, models)]), flush=True)
    acc.wait_for_everyone()
    _end(acc)


def _end(acc) -> None:
    """Close the trackers. The process group stays: `run` may be called again in the same processes (the
    reproduction scripts do), and a new Accelerator reuses the group; the command line destroys it on exit."""
    for tracker in acc.trackers:
        tracker.finish()
    acc.wait_for_everyone()


def _sync_buffers(acc, model: nn.Module) -> None:
    """Give every process the main one's buffers (BN running statistics), as DDP does before each forward: a run
    stopped mid-epoch (max_train_steps) ends without the validation that recalibrates them on every process."""
    if acc.num_processes == 1:
        return
    import torch.distributed as dist
    with torch.no_grad():
        for b in model.buffers():
            dist.broadcast(b.data, src=0)


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
    write_atomic(run_dir / 'summary.json', json.dumps(history, indent=2))
    if rows:
        text = io.StringIO(newline='')
        w = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
        write_atomic(run_dir / 'summary.csv', text.getvalue())
