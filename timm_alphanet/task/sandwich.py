"""Sandwich-rule supernet training with in-place alpha-divergence distillation (AlphaNet) as a timm task.

One `SandwichTask` forward trains one step of the paper's supernet recipe. The max subnet learns from the
labels (label-smoothed CE, with dropout and drop path on), optionally also from an external teacher. Then
``num_subnets - 2`` random subnets and the min subnet learn from the max subnet's detached logits with the
adaptive alpha-divergence (or KL), with dropout and drop path off. The subnets of a step come from
`sandwich_subnets`, keyed by ``(seed, step)``, so all processes train the same subnets without communication.
"""
import logging
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from timm.task import ClassificationTask, DistillationTeacher
from timm.utils import unwrap_model

from ..spaces import SubnetConfig
from ..utils import as_float
from ..calibration import INTERPOLATIONS, resize_to
from ..models import is_supernet
from ..loss import KD_LOSSES, create_kd_loss
from ._teacher import TeacherSpec, create_teacher, student_normalization, teacher_logits, unusable_teacher_rows
from .sampling import sandwich_subnets

__all__ = ['SandwichTask']

_logger = logging.getLogger(__name__)



# the first torch whose DDP (find_unused_parameters=True) all-reduces parameters used only under no_sync():
# pytorch issue 69031, fixed by pull request 124193
DDP_NO_SYNC_TORCH = (2, 4)


def check_ddp_no_sync(version: str = torch.__version__) -> None:
    """Refuse DDP sandwich training on a torch whose DDP drops the gradients of parameters that only the
    no_sync() subnets of a step used (they would drift apart across processes, silently)."""
    major, minor = (int(''.join(c for c in part if c.isdigit()) or 0) for part in version.split('.')[:2])
    if (major, minor) < DDP_NO_SYNC_TORCH:
        raise ValueError(f'sandwich training on several processes needs torch >= '
                           f'{".".join(map(str, DDP_NO_SYNC_TORCH))} (this is {version[:40]}): before it, DDP with '
                           'find_unused_parameters all-reduces only the parameters the last subnet of a step used. '
                           'pip install "torch>=2.4"')


class SandwichTask(ClassificationTask):
    """One sandwich step per forward: max subnet on labels, the others distilled in place from it.

    A `timm.task.TrainingTask` (through `ClassificationTask`, whose DDP wrapping and compile it reuses).
    `get_trainable_module`, `get_eval_model`, EMA and checkpoint state are timm's: they see the whole supernet
    (its state dict holds the max-size tensors), and the eval model runs whichever subnet is active. `forward`
    makes the previously active subnet active again when it returns (or raises), so training steps never change
    what validation, EMA evaluation or export sees.

    Args:
        model: The supernet (`alphanet_supernet`), or a DDP/compiled wrapper of it. It needs `space`,
            `set_subnet`, `active_subnet` and the `regularized()` context (dropout at the model's ``drop_rate`` and
            drop path, for the max subnet only).
        num_subnets: Subnets per step, >= 2: max, ``num_subnets - 2`` random, min (paper: 4).
        seed: Seed of the subnet sequence; the same on every process.
        kd_loss: In-place (and teacher) KD loss: 'alpha' (`AdaptiveAlphaDivergence`) or 'kl' (`KLDivergence`).
        inplace_kd: When False, the random and min subnets learn from the labels (the max subnet's label loss)
            instead of the max subnet's logits: the slimmable paper's "w/o KD" baseline.
        alpha_min: Lower divergence order of the adaptive loss (paper: -1).
        alpha_max: Upper divergence order of the adaptive loss (paper: +1).
        clip: Importance-weight clip of the adaptive loss (paper: 5).
        temperature: KD softmax temperature (paper: 1); the KD losses are scaled by its square.
        smoothing: Label smoothing of the max subnet's CE (timm's ``LabelSmoothingCrossEntropy``; plain CE at 0;
            paper: 0.1). Replace ``task.criterion`` for other label losses (e.g. soft targets with mixup).
        teacher: Optional external teacher distilled into the max subnet: a timm model name (``hf-hub:`` and
            ``local-dir:`` work; pretrained weights are loaded), an ``nn.Module`` (used as is, kept in eval
            mode, frozen) or a `timm.task.DistillationTeacher`. It sees the batch as given (before any resize),
            re-normalised from the supernet's ``pretrained_cfg`` mean/std to its own (timm's fix-up).
        teacher_weight: Weight of the teacher's KD term in the max subnet's loss.
        teacher_pretrained_path: Weights file for a teacher given by name.
        teacher_pretrained_cfg_overlay: Pretrained cfg overrides for a teacher given by name.
        interpolation: How the batch is resized to each subnet's resolution (``F.interpolate`` mode,
            ``align_corners=False``, no antialias; the original uses bicubic).
        device: Device for task tensors/buffers.
        dtype: Dtype for task tensors/buffers.
        verbose: Enable info logging.

    Example:
        ```python
        task = SandwichTask(accelerator.prepare(supernet), num_subnets=4, seed=42)
        for step, (x, y) in enumerate(loader, start=first_step):  # same step numbers on every process
            optimizer.zero_grad()
            result = task(x, y, step, backward=accelerator.backward)  # one backward per subnet
            accelerator.clip_grad_value_(task.get_clip_parameters(), 1.0)
            optimizer.step()
        ```
    """

    def __init__(
            self,
            model: nn.Module,
            num_subnets: int = 4,
            seed: int = 0,
            kd_loss: str = 'alpha',
            inplace_kd: bool = True,
            alpha_min: float = -1.0,
            alpha_max: float = 1.0,
            clip: float = 5.0,
            temperature: float = 1.0,
            smoothing: float = 0.1,
            teacher: Optional[TeacherSpec] = None,
            teacher_weight: float = 1.0,
            teacher_pretrained_path: Optional[str] = None,
            teacher_pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            interpolation: str = 'bicubic',
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        if isinstance(model, DistributedDataParallel):
            check_ddp_no_sync()
        supernet = unwrap_model(model)
        if not is_supernet(supernet):
            missing = [a for a in ('space', 'set_subnet', 'active_subnet', 'sample_subnet', 'regularized',
                                   'macs_and_params')
                       if not hasattr(supernet, a)]
            raise TypeError(f'SandwichTask needs a supernet, a model that follows the Supernet protocol '
                            f'(timm_alphanet.models.Supernet); {type(supernet).__name__} lacks {missing}')
        # argument checks before the (possibly slow) teacher creation
        sandwich_subnets(supernet.space, num_subnets, seed, 0)  # validates num_subnets and seed
        if not isinstance(inplace_kd, bool):
            raise ValueError(f'inplace_kd must be True or False, got {inplace_kd!r:.40}')
        if kd_loss not in KD_LOSSES:
            raise ValueError(f'kd_loss must be one of {KD_LOSSES}, got {kd_loss!r:.40}')
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f'interpolation must be one of {INTERPOLATIONS}, got {interpolation!r:.40}')
        smoothing = as_float('smoothing', smoothing, 0., 1., high_open=True)
        teacher_weight = as_float('teacher_weight', teacher_weight, 0., high_open=True)
        super().__init__(model, criterion_kwargs={'smoothing': smoothing}, device=device, dtype=dtype, verbose=verbose)
        self.num_subnets = num_subnets
        self.seed = seed
        self.interpolation = interpolation
        self.loss_type = kd_loss
        self.inplace_kd = inplace_kd
        self.kd_criterion = create_kd_loss(kd_loss, alpha_min, alpha_max, clip, temperature)  # in place and teacher

        self.teacher: Optional[DistillationTeacher] = None
        self.teacher_weight = teacher_weight
        # as AlphaDistillationTask's: True returns the teacher's 'teacher_unusable' rows instead of checking them here
        self.defer_teacher_check = False
        if teacher is not None:
            self.teacher = create_teacher(teacher, supernet, teacher_pretrained_path, teacher_pretrained_cfg_overlay,
                                          device=self.device, dtype=self.dtype)
            # the supernet's input normalisation, for timm's student -> teacher re-normalisation
            mean, std = student_normalization(supernet, device=self.device, dtype=self.dtype)
            self.register_buffer('student_mean', mean, persistent=False)
            self.register_buffer('student_std', std, persistent=False)
        if self.verbose:
            _logger.info(f'SandwichTask: num_subnets={num_subnets}, seed={seed}, kd={self.kd_criterion}, '
                         f'teacher={None if teacher is None else type(self.teacher.model).__name__}')

    @property
    def supernet(self) -> nn.Module:
        """The supernet itself, without DDP/compile wrappers (where `set_subnet` goes)."""
        return unwrap_model(self.trainable_module)

    def subnets_for_step(self, step: int) -> List[SubnetConfig]:
        """The subnets `forward` trains at `step`: ``[max, random..., min]``, from ``(seed, step)`` only."""
        return sandwich_subnets(self.supernet.space, self.num_subnets, self.seed, step)

    def train(self, mode: bool = True) -> 'SandwichTask':
        """Set training mode, keeping a teacher in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'SandwichTask':
        """Wrap the supernet in DDP (the teacher stays unwrapped and frozen).

        Subnets skip blocks and channels, so pass ``find_unused_parameters=True``.
        """
        check_ddp_no_sync()
        super().prepare_distributed(device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        """Compile the supernet (as timm's ClassificationTask) and the teacher's logit forward."""
        compiled = super().compile(backend=backend, mode=mode, **compile_kwargs)
        if self.teacher is not None:
            self.teacher.compile(backend=backend, mode=mode, compile_model=True, compile_features=False,
                                 **compile_kwargs)
        return compiled

    def teacher_logits(self, input: torch.Tensor) -> torch.Tensor:
        """External teacher logits for a supernet-normalised batch, without gradient."""
        if self.teacher is None:
            raise RuntimeError('this SandwichTask has no teacher')
        return teacher_logits(self.teacher, input, self.student_mean, self.student_std,
                              check=not self.defer_teacher_check)

    def resize(self, input: torch.Tensor, resolution: int) -> torch.Tensor:
        """`input` resized to ``resolution x resolution`` (returned as is when already that size)."""
        return resize_to(input, resolution, self.interpolation)

    def forward(
            self,
            input: torch.Tensor,
            target: torch.Tensor,
            step: int,
            backward: Optional[Callable[[torch.Tensor], None]] = None,
    ) -> Dict[str, Any]:
        """Train the sandwich of `step` on one batch.

        Args:
            input: Batch [B, C, H, W], normalised for the supernet, at any size: each subnet gets it resized to
                its resolution.
            target: Class indices [B] (or what the label criterion takes) for the max subnet.
            step: Picks the subnets (with the task's seed); must be the same on every process, e.g. the global
                batch index, and continue across a resume.
            backward: Called once per subnet loss, right after that subnet's forward (e.g.
                ``accelerator.backward`` or ``lambda loss: loss.backward()``), so only one subnet's activations
                are alive at a time; gradients accumulate, the caller steps the optimizer once. Under DDP every
                subnet but the last runs under the wrapper's ``no_sync()``, so gradients are all-reduced once.
                When None, 'loss' is the sum of the subnet losses with its graph, for one backward by the
                caller (all subnets' activations kept); not under DDP, which allows one forward per backward.

        Returns:
            Dictionary with 'loss' (the total; detached if `backward` was given), 'output' (max subnet logits,
            detached), 'loss_max' (its loss: 'task_loss' plus, with a teacher, ``teacher_weight *
            'teacher_kd_loss'``), 'task_loss', 'loss_random0'.. and 'loss_min' (KD losses; label losses without
            in-place KD), 'kd_divergence' (the per-sample divergence of the KD subnets, averaged over them; only with
            in-place KD), 'kd_alpha_max_frac' (for 'alpha':
            fraction of samples that used the alpha_max branch) and 'subnets' (the step's configs). With a
            teacher also 'teacher_kd_loss' and 'teacher_kd_divergence' (and the [B] bool 'teacher_unusable' with
            `defer_teacher_check`). All tensors but 'loss' are detached.
        """
        if backward is None and isinstance(self.trainable_module, DistributedDataParallel):
            # DDP expects one forward per backward: with several subnets it marks parameters ready twice
            raise RuntimeError('under DistributedDataParallel pass backward= (e.g. accelerator.backward): one '
                               'backward per subnet forward, only the last one synchronised')
        supernet = self.supernet
        subnets = self.subnets_for_step(step)
        teacher_out = None if self.teacher is None else self.teacher_logits(input)
        teacher_kd = None
        names = ['loss_max', *[f'loss_random{i}' for i in range(len(subnets) - 2)], 'loss_min']
        result: Dict[str, Any] = {}
        losses, divergences, alpha_max_fracs = [], [], []
        previous = supernet.active_subnet
        try:
            for i, (name, subnet) in enumerate(zip(names, subnets)):
                supernet.set_subnet(subnet)
                x = self.resize(input, subnet.resolution)
                last = i == len(subnets) - 1
                # DDP decides at forward whether the coming backward all-reduces, so forward goes inside no_sync
                with nullcontext() if backward is None or last else self.no_sync():
                    if i == 0:
                        with supernet.regularized():
                            logits = self.trainable_module(x)
                        max_logits = logits.detach()
                        loss = task_loss = self.criterion(logits, target)
                        if teacher_out is not None:
                            teacher_kd = self.kd_criterion.forward_with_stats(logits, teacher_out)
                            loss = task_loss + self.teacher_weight * teacher_kd.loss
                    elif not self.inplace_kd:
                        loss = self.criterion(self.trainable_module(x), target)
                    else:
                        logits = self.trainable_module(x)
                        kd = self.kd_criterion.forward_with_stats(logits, max_logits)
                        loss = kd.loss
                        divergences.append(kd.divergence.mean())
                        if kd.branch is not None:
                            alpha_max_fracs.append(kd.branch.float().mean())
                    if backward is not None:
                        backward(loss)
                        loss = loss.detach()
                result[name] = loss.detach()
                losses.append(loss)
        finally:
            supernet.set_subnet(previous)

        result['loss'] = sum(losses[1:], losses[0])
        result['output'] = max_logits
        result['task_loss'] = task_loss.detach()
        if teacher_kd is not None:
            result['teacher_kd_loss'] = teacher_kd.loss.detach()
            result['teacher_kd_divergence'] = teacher_kd.divergence.mean()
            if self.defer_teacher_check:
                result['teacher_unusable'] = unusable_teacher_rows(teacher_out)
        if divergences:
            result['kd_divergence'] = torch.stack(divergences).mean()
        if alpha_max_fracs:
            result['kd_alpha_max_frac'] = torch.stack(alpha_max_fracs).mean()
        result['subnets'] = subnets
        return result

