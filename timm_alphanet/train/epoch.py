"""One training epoch on Accelerate: the step loop shared by sandwich training and teacher KD.

Each step seeds the global RNGs (dropout, drop path, mixup) from ``(seed, step, rank)``, so a run resumed from
any checkpoint continues bit-identically; a sandwich task gets the global step, which picks its subnets.
"""
import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
from timm.utils import unwrap_model
from tqdm.auto import tqdm

from ..task import SandwichTask, check_teacher_logits
from .checkpoint import TrainState
from .config import TrainConfig

__all__ = ['EpochResult', 'NonFiniteLossError', 'seed_step', 'train_one_epoch']


class NonFiniteLossError(RuntimeError):
    """Raised after `TrainConfig.max_nonfinite` non-finite losses in a row."""


@dataclass(frozen=True)
class EpochResult:
    """What `train_one_epoch` did: mean task loss of the finite steps, steps taken, whether the epoch ended."""
    train_loss: float
    steps: int
    completed: bool  # False when max_train_steps stopped it part-way
    seconds: float


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed the global RNGs per (seed, step, rank): dropout, drop path and mixup continue exactly on resume."""
    s = (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2 ** 31 - 1)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _scalars(result: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v.detach()) for k, v in result.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()}


class _PendingLoss:
    """Task losses summed on the device, added to ``state.loss_sum`` / ``loss_steps`` only on `flush` (one read).

    With ``checked``, `flush` raises `NonFiniteLossError` if any loss since the last flush was non-finite (the
    ``nonfinite_check: log`` mode, whose steps are not checked one by one): before a checkpoint saves such weights.
    """

    def __init__(self, state: TrainState, device: torch.device, checked: Optional[Callable] = None) -> None:
        self.state, self.sum, self.steps = state, torch.zeros((), dtype=torch.float64, device=device), 0
        self.nonfinite = torch.zeros((), dtype=torch.float32, device=device)
        self.checked, self.first_step = checked, state.step

    def add(self, task_loss: torch.Tensor, loss: torch.Tensor) -> None:
        """Sum `task_loss` (what is shown); with ``checked``, also count a non-finite total `loss`."""
        self.sum += task_loss.detach().to(torch.float64)
        if self.checked is not None:
            self.nonfinite += (~torch.isfinite(loss.detach())).float()
        self.steps += 1

    def flush(self) -> None:
        if self.steps:
            total = float(self.sum)
            # every process flushes at the same steps: all stop together when any saw a non-finite loss
            if self.checked is not None and float(self.checked(self.nonfinite.reshape(1))) > 0:
                raise NonFiniteLossError(
                    f'stopped: a non-finite loss between steps {self.first_step} and {self.state.step - 1} (epoch '
                    f'{self.state.epoch}; nonfinite_check: log checks at log steps only; a teacher\'s NaN logits '
                    'count too). Resume from the last '
                    "checkpoint in the run folder's checkpoints/ with a lower --lr, --clip-grad, bf16 instead of "
                    'fp16, or --nonfinite-check step (skips single bad steps).')
            self.state.loss_sum += total
            self.state.loss_steps += self.steps
            self.sum.zero_()
            self.nonfinite.zero_()
            self.steps = 0
        self.first_step = self.state.step


def train_one_epoch(
        cfg: TrainConfig,
        accelerator,
        task: nn.Module,
        loader: Iterable,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: TrainState,
        steps_per_epoch: int,
        mixup: Optional[Callable] = None,
        ema: Optional[nn.Module] = None,
        save_checkpoint: Optional[Callable[[int], Any]] = None,
) -> EpochResult:
    """Train epoch ``state.epoch`` from batch ``state.batch_in_epoch`` on; `state` advances with every step.

    Args:
        cfg: clip_grad/clip_mode, max_nonfinite, seed, log_interval, checkpoint_interval, max_train_steps,
            no_progress and channels_last are read.
        accelerator: the run's Accelerator (backward, clipping, cross-process reduction, logging).
        task: a `SandwichTask` (called with the global step and ``backward=``) or a timm task returning 'loss'.
        loader: the epoch's batches (already positioned: a resumed epoch skips consumed batches beforehand).
        optimizer: stepped once per batch, unless the loss is non-finite on any process (then the step is
            skipped and the model's buffers, e.g. BN running statistics, are restored).
        scheduler: timm scheduler, ``step_update`` after every step.
        state: loop position; ``step``, ``batch_in_epoch``, ``nonfinite_in_row`` and ``subnet_digest`` advance.
        steps_per_epoch: batches of a full epoch (progress bar and the last log line).
        mixup: optional timm Mixup applied to each batch.
        ema: optional weight EMA updated after each optimizer step.
        save_checkpoint: called with the step every ``checkpoint_interval`` steps.

    Raises:
        NonFiniteLossError: after ``max_nonfinite`` non-finite losses in a row (the message says what to try).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    sandwich = isinstance(task, SandwichTask)
    params = list(task.get_clip_parameters())
    # a non-finite forward also writes NaN into BN running statistics: a skipped step restores them from a snapshot
    # taken with one foreach copy per step into tensors allocated once (not a clone per buffer per step)
    buffers = [b for b in task.get_trainable_module().buffers() if b.numel()]
    snapshot = [torch.empty_like(b) for b in buffers]
    # the task loss is summed on the device and read only where it is shown or saved: a read per step would make
    # the host wait for the device every step
    per_step = cfg.nonfinite_check == 'step'
    pending = _PendingLoss(state, accelerator.device,
                           checked=None if per_step else lambda t: accelerator.reduce(t, reduction='sum'))
    max_steps = cfg.max_train_steps or None
    bar = tqdm(total=steps_per_epoch, initial=state.batch_in_epoch, desc=f'epoch {state.epoch}', leave=False,
               disable=cfg.no_progress or not accelerator.is_main_process)
    steps, t0 = 0, time.time()
    task.train()
    seed_step(cfg.seed, state.step, rank)
    for x, y in loader:
        if mixup is not None:
            x, y = mixup(x, y)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        if buffers:
            torch._foreach_copy_(snapshot, buffers)
        with accelerator.autocast():
            if sandwich:
                out = task(x, y, state.step, backward=accelerator.backward)
            else:
                out = task(x, y)
                accelerator.backward(out['loss'])
        loss = out['loss'].detach().float()
        # the one host read of a step: whether every process's loss is finite. Skipping exactly (no optimizer,
        # momentum or weight-decay update) needs the answer before optimizer.step() for any optimizer; GradScaler
        # reads its inf flag the same way under fp16
        # (nonfinite_check: log skips it; `pending` then checks the summed losses where it is read anyway)
        finite = not per_step or bool(accelerator.reduce(torch.isfinite(loss).float().reshape(1),
                                                         reduction='sum') == world)
        if finite:
            if cfg.clip_grad is not None:
                clip = accelerator.clip_grad_value_ if cfg.clip_mode == 'value' else accelerator.clip_grad_norm_
                clip(params, cfg.clip_grad)
            optimizer.step()
            # fp16: GradScaler skips a step whose gradients overflowed (the loss was finite); it is not trained on
            scaler_skipped = accelerator.scaler is not None and accelerator.optimizer_step_was_skipped
            if scaler_skipped:
                state.scaler_skips += 1
            else:
                if ema is not None:
                    ema.update(unwrap_model(task.get_trainable_module()), step=state.step)
                # a sandwich's total also holds KD surrogates; the sums live in `state` so a resumed epoch keeps them
                pending.add(out.get('task_loss', loss), loss)
            state.nonfinite_in_row = 0
        else:
            if 'teacher_unusable' in out:  # a frozen teacher's NaN is no bad step to skip: it recurs every epoch
                check_teacher_logits(None, out['teacher_unusable'])
            if buffers:
                with torch.no_grad():
                    torch._foreach_copy_(buffers, snapshot)
            _skip_nonfinite(cfg, accelerator, optimizer, state)
        if sandwich:
            state.subnet_digest = hashlib.sha1((state.subnet_digest + repr(out['subnets'])).encode()).hexdigest()
        state.step += 1
        state.batch_in_epoch += 1
        steps += 1
        scheduler.step_update(num_updates=state.step)
        seed_step(cfg.seed, state.step, rank)
        bar.update(1)
        if state.step % cfg.log_interval == 0 or state.batch_in_epoch == steps_per_epoch:
            pending.flush()
            logs = {f'train/{k}': v for k, v in _scalars(out).items()}
            logs['train/lr'] = optimizer.param_groups[0]['lr']
            if accelerator.scaler is not None:
                logs['train/scaler_skips'] = state.scaler_skips
            accelerator.log(logs, step=state.step)
            bar.set_postfix(task_loss=f"{float(out.get('task_loss', loss).detach()):.3f}")
        if save_checkpoint is not None and cfg.checkpoint_interval and state.step % cfg.checkpoint_interval == 0:
            pending.flush()
            save_checkpoint(state.step)
        if max_steps is not None and state.step >= max_steps:
            break
    bar.close()
    pending.flush()
    mean = state.loss_sum / state.loss_steps if state.loss_steps else float('nan')  # nan: no finite step
    return EpochResult(mean, steps, state.batch_in_epoch >= steps_per_epoch, time.time() - t0)


def _skip_nonfinite(cfg: TrainConfig, accelerator, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    optimizer.zero_grad(set_to_none=True)
    state.nonfinite_in_row += 1
    accelerator.print(f'WARNING: non-finite loss at step {state.step} (epoch {state.epoch}); step skipped '
                      f'({state.nonfinite_in_row} in a row, stop at {cfg.max_nonfinite})')
    accelerator.log({'train/nonfinite_skips': state.nonfinite_in_row}, step=state.step)
    if state.nonfinite_in_row >= cfg.max_nonfinite:
        raise NonFiniteLossError(
            f'stopped: {state.nonfinite_in_row} non-finite losses in a row (last at step {state.step}, epoch '
            f'{state.epoch}). Lower --lr, set --clip-grad, or use --mixed-precision bf16 instead of fp16; resume '
            f'from the last checkpoint in the run folder\'s checkpoints/.')
