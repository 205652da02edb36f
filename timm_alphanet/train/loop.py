"""The training run: one `Accelerator`, a timm task (SandwichTask or AlphaDistillationTask), timm factories.

`run(args, args_text)` is everything `train.py` does. Supernet training (``--model alphanet_supernet``)
trains a sandwich of subnets per step (`SandwichTask`, one backward per subnet, subnets keyed by the global
step so every process and every resume agree); any other ``--model`` is a student distilled from
``--teacher`` (`AlphaDistillationTask`).
"""
import csv
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import random
import timm
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import broadcast_object_list, gather_object, is_tensorboard_available
from timm.data import resolve_data_config
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from ..task import AlphaDistillationTask, SandwichTask
from ..export import save_pretrained
from ..archs import resolve_space
from ..cost.flops import mflops
from .checkpoint import CheckpointManager, TrainState, find_checkpoint
from .config import eval_arch_list, is_supernet
from .data import create_datasets, create_loaders, create_mixup, num_classes_of
from ..evaluation import evaluate, format_table, validate_subnets
from ..layers.sync_bn import convert_sync_dynamic_bn

__all__ = ['NonFiniteLossError', 'build_accelerator', 'check_world_size', 'run']

_logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after --max-nonfinite non-finite losses in a row."""


def _no_accelerator_device() -> bool:
    xpu = getattr(torch, 'xpu', None)
    mps = getattr(torch.backends, 'mps', None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
                or (mps is not None and mps.is_available()))


def build_accelerator(args, project_dir: Optional[str] = None) -> Accelerator:
    """The run's Accelerator: DDP with unused parameters, seedable sampler, TensorBoard when installed.

    Without any accelerator device it is built with ``cpu=True``, which makes torchrun / ``accelerate launch
    --multi_gpu`` processes on a CPU-only machine one gloo process group (otherwise each trains alone).
    Refuses to start when the launcher's WORLD_SIZE disagrees with the Accelerator's process count.
    """
    log_with = 'tensorboard' if is_tensorboard_available() else None
    accelerator = Accelerator(
        cpu=_no_accelerator_device(),
        mixed_precision=args.mixed_precision,
        log_with=log_with,
        project_dir=project_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    check_world_size(accelerator.num_processes)
    return accelerator


def check_world_size(num_processes: int) -> None:
    """Exit if the launcher's WORLD_SIZE differs from the Accelerator's process count (each would train alone)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world != num_processes:
        raise SystemExit(f'the launcher started {world} processes (WORLD_SIZE) but the Accelerator has '
                         f'{num_processes}: each process would train alone. On CPU, launch with '
                         '`torchrun --nproc_per_node N train.py ...` or `accelerate launch --multi_gpu '
                         '--num_processes N train.py ...`.')


def _step_seed(seed: int, step: int, rank: int) -> None:
    """Seed the global RNGs per (seed, step, rank): dropout, drop path and mixup continue exactly on resume."""
    s = (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2 ** 31 - 1)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _scalars(result: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in result.items() if isinstance(v, torch.Tensor) and v.numel() == 1}


def _run_dir(args, accelerator) -> Path:
    if args.resume and not args.experiment:
        ckpt = find_checkpoint(args.resume)
        return ckpt.parent.parent
    name = args.experiment
    if not name:
        name = [f"{time.strftime('%Y%m%d-%H%M%S')}-{args.model}"]
        broadcast_object_list(name)  # the same folder on every process
        name = name[0]
    return Path(args.output) / name


def _build_model(args, num_classes: int):
    kwargs = dict(num_classes=num_classes, drop_rate=args.drop, pretrained=args.pretrained)
    if args.drop_path is not None:
        kwargs['drop_path_rate'] = args.drop_path
    if args.bn_momentum is not None:
        kwargs['bn_momentum'] = args.bn_momentum
    if args.initial_checkpoint:
        kwargs['checkpoint_path'] = args.initial_checkpoint
    if is_supernet(args):
        kwargs['space'] = args.space
    return timm.create_model(args.model, **kwargs)


def run(args, args_text: str = '') -> Dict[str, Any]:
    """Train as `args` say; returns the final validation results ({name: {top1, top5, loss}})."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    logging.getLogger('accelerate').setLevel(logging.WARNING)  # one line per saved file otherwise
    accelerator = build_accelerator(args)
    run_dir = _run_dir(args, accelerator)
    accelerator.project_configuration.project_dir = str(run_dir)
    accelerator.project_configuration.logging_dir = str(run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if args_text:
            (run_dir / 'args.yaml').write_text(args_text)
    accelerator.wait_for_everyone()
    rank, world = accelerator.process_index, accelerator.num_processes
    supernet_mode = is_supernet(args)
    progress = not args.no_progress
    _step_seed(args.seed, 0, 0)  # model init: identical everywhere (DDP also broadcasts it)

    # ---- data + model
    if supernet_mode:
        space = resolve_space(args.space)
        args.space = space.to_dict()
        data_config = {'mean': timm.data.IMAGENET_DEFAULT_MEAN, 'std': timm.data.IMAGENET_DEFAULT_STD,
                       'interpolation': 'bicubic', 'crop_pct': 1.0}
        train_size = eval_size = max(space.resolutions)
    else:
        probe = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes or 1000)
        data_config = resolve_data_config(vars(args), model=probe)
        train_size = eval_size = data_config['input_size'][-1]
        del probe
    with accelerator.main_process_first():  # builds the digits folder once
        train_ds, val_ds = create_datasets(args, data_config, train_size, eval_size)
    num_classes = args.num_classes or num_classes_of(train_ds)
    model = _build_model(args, num_classes)
    if supernet_mode:
        model.pretrained_cfg = {**model.pretrained_cfg, 'mean': data_config['mean'], 'std': data_config['std']}
    if supernet_mode and args.sync_bn:
        convert_sync_dynamic_bn(model)
    train_loader, val_loader = create_loaders(args, train_ds, val_ds)
    mixup = create_mixup(args, num_classes)

    # ---- optimizer / schedule (lr scaled by the global batch)
    global_batch = args.batch_size * world
    lr = args.lr if args.lr is not None else args.lr_base * global_batch / args.lr_base_size
    opt_kwargs = {} if args.opt_eps is None else {'eps': args.opt_eps}
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **opt_kwargs)
    ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup) if args.model_ema else None

    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.to(accelerator.device)
    steps_per_epoch = len(train_loader)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs, step_on_epochs=not args.sched_on_updates,
        updates_per_epoch=steps_per_epoch)

    # ---- task
    if supernet_mode:
        task = SandwichTask(model, num_subnets=args.num_subnets, seed=args.seed, kd_loss=args.kd_loss,
                            alpha_min=args.alpha_min, alpha_max=args.alpha_max, clip=args.alpha_clip,
                            temperature=args.kd_temperature, smoothing=args.smoothing,
                            teacher=args.teacher or None, teacher_weight=1.0 if args.kd_weight is None else args.kd_weight,
                            teacher_pretrained_path=args.teacher_pretrained_path,
                            device=accelerator.device, verbose=False)
    else:
        task = AlphaDistillationTask(model, args.teacher, criterion_kwargs=dict(smoothing=args.smoothing),
                                     teacher_pretrained_path=args.teacher_pretrained_path, kd_loss=args.kd_loss,
                                     alpha_min=args.alpha_min, alpha_max=args.alpha_max, clip=args.alpha_clip,
                                     distill_loss_weight=args.kd_weight, task_loss_weight=args.task_weight,
                                     temperature=args.kd_temperature, device=accelerator.device, verbose=False)
        for p in task.teacher.parameters():
            p.requires_grad = False
    if mixup is not None:
        task.criterion = SoftTargetCrossEntropy()
    task.to(accelerator.device)

    # ---- checkpointing / resume
    state = TrainState()
    accelerator.register_for_checkpointing(state, scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    ckpts = CheckpointManager(accelerator, run_dir / 'checkpoints', keep=args.checkpoint_hist)
    if args.resume:
        path = find_checkpoint(args.resume)
        accelerator.load_state(str(path))
        accelerator.print(f'resumed from {path}: epoch {state.epoch}, step {state.step}')
    if accelerator.trackers == [] and accelerator.log_with:
        accelerator.init_trackers('train', config={k: v for k, v in vars(args).items()
                                                   if isinstance(v, (int, float, str, bool))})

    # ---- what validation runs
    if supernet_mode:
        val_archs = [('max', space.max_config()), ('min', space.min_config()), *eval_arch_list(args)]
        arch_info = {n: {'MFLOPs': round(mflops(a, space), 2),
                         'res': space.validate(a).resolution} for n, a in val_archs}
    else:
        arch_info = {}
    metric_key = 'max' if supernet_mode else 'student'

    accelerator.print(f'{"supernet" if supernet_mode else "KD"} training on {world} process(es), '
                      f'{accelerator.device}, global batch {global_batch}, lr {lr:.4g}, {num_epochs} epochs x '
                      f'{steps_per_epoch} steps, run folder {run_dir}')
    results: Dict[str, Dict[str, float]] = {}
    if not supernet_mode and args.val_teacher and state.step == 0:
        teacher_res = evaluate(accelerator, task.teacher_logits, val_loader, desc='eval teacher', progress=progress)
        accelerator.print(f'teacher: top1 {teacher_res["top1"]:.2f} top5 {teacher_res["top5"]:.2f}')
        state.history.append({'epoch': -1, 'teacher': teacher_res})

    max_steps = args.max_train_steps or None
    done = False
    while state.epoch < num_epochs and not done:
        epoch = state.epoch
        task.train()
        train_loader.set_epoch(epoch)
        skip = state.batch_in_epoch
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f'epoch {epoch}', leave=False,
                   disable=not (progress and accelerator.is_main_process))
        loss_sum, loss_n, t0 = 0.0, 0, time.time()
        _step_seed(args.seed, state.step, rank)
        for x, y in loader:
            if mixup is not None:
                x, y = mixup(x, y)
            optimizer.zero_grad(set_to_none=True)
            with accelerator.autocast():
                if supernet_mode:
                    out = task(x, y, state.step, backward=accelerator.backward)
                else:
                    out = task(x, y)
                    accelerator.backward(out['loss'])
            loss = out['loss'].detach().float()
            finite = accelerator.reduce(torch.isfinite(loss).float().reshape(1), reduction='sum').item() == world
            if finite:
                if args.clip_grad is not None:
                    if args.clip_mode == 'value':
                        accelerator.clip_grad_value_(model.parameters(), args.clip_grad)
                    else:
                        accelerator.clip_grad_norm_(model.parameters(), args.clip_grad)
                optimizer.step()
                if ema is not None:
                    ema.update(unwrapped, step=state.step)
                state.nonfinite_in_row = 0
                loss_sum += float(out.get('task_loss', loss).detach())  # the supernet total holds KD surrogates
                loss_n += 1
            else:
                optimizer.zero_grad(set_to_none=True)
                state.nonfinite_in_row += 1
                accelerator.print(f'WARNING: non-finite loss at step {state.step} (epoch {epoch}); step skipped '
                                  f'({state.nonfinite_in_row} in a row, stop at {args.max_nonfinite})')
                accelerator.log({'train/nonfinite_skips': state.nonfinite_in_row}, step=state.step)
                if state.nonfinite_in_row >= args.max_nonfinite:
                    accelerator.end_training()
                    raise NonFiniteLossError(
                        f'stopped: {state.nonfinite_in_row} non-finite losses in a row (last at step {state.step}, '
                        f'epoch {epoch}). Lower --lr, set --clip-grad, or use --mixed-precision bf16 instead of '
                        f'fp16; resume from the last checkpoint in {run_dir / "checkpoints"}.')
            if supernet_mode:
                state.subnet_digest = hashlib.sha1(
                    (state.subnet_digest + repr(out['subnets'])).encode()).hexdigest()
            state.step += 1
            state.batch_in_epoch += 1
            scheduler.step_update(num_updates=state.step)
            _step_seed(args.seed, state.step, rank)
            bar.update(1)
            if state.step % args.log_interval == 0 or state.batch_in_epoch == steps_per_epoch:
                logs = {f'train/{k}': v for k, v in _scalars(out).items()}
                logs['train/lr'] = optimizer.param_groups[0]['lr']
                accelerator.log(logs, step=state.step)
                bar.set_postfix(task_loss=f"{float(out.get('task_loss', loss).detach()):.3f}")
            if args.checkpoint_interval and state.step % args.checkpoint_interval == 0:
                ckpts.save(state.step)
            if max_steps is not None and state.step >= max_steps:
                done = True
                break
        bar.close()
        if done and state.batch_in_epoch < steps_per_epoch:
            break
        state.epoch += 1
        state.batch_in_epoch = 0
        scheduler.step(state.epoch)

        # ---- validation
        if supernet_mode:
            results = validate_subnets(accelerator, unwrapped, val_archs, train_loader, val_loader,
                                       args.bn_calib_batches, progress=progress)
        else:
            results = {'student': evaluate(accelerator, unwrapped, val_loader, desc='eval', progress=progress)}
            task.train()
        train_loss = loss_sum / max(loss_n, 1)
        row = {'epoch': epoch, 'step': state.step, 'train_loss': train_loss, 'lr': optimizer.param_groups[0]['lr'],
               'time_s': time.time() - t0, **{f'{n}_{k}': v for n, r in results.items() for k, v in r.items()}}
        state.history.append(row)
        accelerator.log({f'val/{k}': v for k, v in row.items() if k not in ('epoch', 'step')}, step=state.step)
        accelerator.print(f'epoch {epoch}: train loss {train_loss:.4f} | ' + ' | '.join(
            f'{n} top1 {r["top1"]:.2f} top5 {r["top5"]:.2f} loss {r["loss"]:.3f}' for n, r in results.items()))
        if accelerator.is_main_process:
            _write_summary(run_dir, state.history)
        ckpts.save(state.step, metric=results[metric_key]['top1'])

    _check_processes_agree(accelerator, unwrapped, state)
    if accelerator.is_main_process:
        save_pretrained(unwrapped, run_dir / 'final')
        if results:
            accelerator.print('\n' + format_table(results, arch_info))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _check_processes_agree(accelerator, model: torch.nn.Module, state: TrainState) -> None:
    """Every process trained the same subnet sequence and holds the same weights (raises otherwise)."""
    if accelerator.num_processes == 1:
        return
    h = hashlib.sha1()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    mine = (state.subnet_digest, h.hexdigest())
    everyone = gather_object([mine])
    if len(set(everyone)) != 1:
        raise RuntimeError(f'processes disagree (subnet-sequence digest, weights digest): {everyone}')
    accelerator.print(f'{accelerator.num_processes} processes agree: same subnet sequence '
                      f'({mine[0][:12]}) and identical weights ({mine[1][:12]})')


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
