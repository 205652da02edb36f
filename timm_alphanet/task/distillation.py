"""Logit distillation with the adaptive alpha-divergence (AlphaNet) as a timm training task.

`AlphaDistillationTask` is timm's ``LogitDistillationTask`` with the KD term swapped: teacher creation
(timm name, ``hf-hub:``, ``local-dir:``, weights file or an ``nn.Module``), the student/teacher normalisation
fix-up, loss weighting, EMA, checkpoint state, compile and DDP preparation are all inherited.

A student with a DeiT distillation head (timm's ``deit_*_distilled_*``: a model with ``set_distilled_training``,
which returns ``(class logits, distillation logits)`` in training) trains as DeiT does: the class head from the
labels, the distillation head from the teacher with the chosen KD loss; in eval mode the model itself averages the
two heads (DeiT's prediction), which is what validation and export see.
"""
import logging
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn
from timm.task.distillation import DistillationTeacher, LogitDistillationTask
from timm.utils import unwrap_model

from ..loss import KD_LOSSES, create_kd_loss
from ._teacher import create_teacher, teacher_logits, unusable_teacher_rows

__all__ = ['AlphaDistillationTask']

_logger = logging.getLogger(__name__)


class AlphaDistillationTask(LogitDistillationTask):
    """Classification + adaptive alpha-divergence distillation from a frozen teacher.

    ``loss = task_loss_weight * criterion(student, target) + distill_loss_weight * kd(student, teacher)``, with the
    weighting modes of ``LogitDistillationTask`` (both 1.0 by default). The task criterion is timm's
    (``criterion_kwargs=dict(smoothing=0.1)`` for label smoothing). The KD term is `AdaptiveAlphaDivergence`
    (``kd_loss='alpha'``) or `KLDivergence` (``kd_loss='kl'``), both scaled by ``temperature ** 2``.

    Args:
        student_model: timm student model (needs ``pretrained_cfg``, ``num_classes``, ``in_chans``).
        teacher_model: timm model name (``hf-hub:``/``local-dir:`` prefixes work; weights are loaded), an
            ``nn.Module`` (used as is, put in eval mode and frozen) or a ``DistillationTeacher``.
        criterion: Task loss; created by timm's ``create_classification_loss(**criterion_kwargs)`` when None.
        criterion_kwargs: Arguments for ``create_classification_loss`` when `criterion` is None.
        teacher_pretrained_path: Weights file for a teacher given by name.
        teacher_pretrained_cfg_overlay: Pretrained cfg overrides for a teacher given by name.
        kd_loss: 'alpha' (adaptive alpha-divergence) or 'kl'.
        alpha_min: Lower divergence order of the adaptive loss (paper: -1).
        alpha_max: Upper divergence order of the adaptive loss (paper: +1).
        clip: Importance-weight clip of the adaptive loss (paper: 5).
        distill_loss_weight: Weight of the KD term (see ``LogitDistillationTask`` for the weighting modes).
        task_loss_weight: Weight of the task loss.
        temperature: Softmax temperature of the KD term (paper: 1).
        device: Device for task tensors/buffers.
        dtype: Dtype for task tensors/buffers.
        verbose: Enable info logging.

    The forward returns timm's dict (``loss``, ``output``, ``task_loss``, ``kd_loss``) plus, detached,
    ``kd_divergence`` (batch mean of the per-sample divergence that was optimised) and, for 'alpha',
    ``kd_alpha_max_frac`` (fraction of samples whose larger divergence was the ``alpha_max`` one).

    A student with a distillation head (``set_distilled_training``, e.g. ``deit_tiny_distilled_patch16_224``) is
    switched to distilled training: the task loss takes the class head, the KD term the distillation head, and
    ``output`` is their mean (DeiT's prediction, as the model gives it in eval mode).
    """

    def __init__(
            self,
            student_model: nn.Module,
            teacher_model: Union[str, nn.Module, DistillationTeacher],
            criterion: Optional[nn.Module] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            teacher_pretrained_path: Optional[str] = None,
            teacher_pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            kd_loss: str = 'alpha',
            alpha_min: float = -1.0,
            alpha_max: float = 1.0,
            clip: float = 5.0,
            distill_loss_weight: Optional[float] = None,
            task_loss_weight: Optional[float] = None,
            temperature: float = 1.0,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        if kd_loss not in KD_LOSSES:  # before the (possibly slow) teacher creation in super().__init__
            raise ValueError(f'kd_loss must be one of {KD_LOSSES}, got {kd_loss!r:.40}')
        kd_criterion = create_kd_loss(kd_loss, alpha_min, alpha_max, clip, temperature)
        # where timm's TrainingTask would put it (its defaults: cpu, the default dtype)
        teacher = create_teacher(teacher_model, student_model, teacher_pretrained_path, teacher_pretrained_cfg_overlay,
                                 device=device if device is not None else torch.device('cpu'),
                                 dtype=dtype if dtype is not None else torch.get_default_dtype())
        super().__init__(
            student_model,
            teacher,  # already a DistillationTeacher: the parent uses it as is
            criterion=criterion,
            criterion_kwargs=criterion_kwargs,
            loss_type='kl',  # the parent only accepts 'kl'; our own KD criterion replaces its KL
            distill_loss_weight=distill_loss_weight,
            task_loss_weight=task_loss_weight,
            temperature=temperature,
            device=device,
            dtype=dtype,
            verbose=verbose,
        )
        self.loss_type = kd_loss
        self.kd_criterion = kd_criterion
        # like timm's TokenDistillationTask: the model then returns both heads in training mode
        self.distillation_head = hasattr(unwrap_model(student_model), 'set_distilled_training')
        if self.distillation_head:
            unwrap_model(student_model).set_distilled_training(True)
        # True: the teacher's logits are not checked in forward (a host read) but returned as 'teacher_unusable'
        # rows for the caller to check where it reads the device anyway (the trainer: on a non-finite loss)
        self.defer_teacher_check = False
        if self.verbose:
            _logger.info(f'AlphaDistillationTask: kd_loss={self.kd_criterion}')

    def teacher_logits(self, input: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a student-normalised input batch, without gradient."""
        return teacher_logits(self.teacher, input, self.student_mean, self.student_std,
                              check=not self.defer_teacher_check)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Forward pass with alpha-divergence (or KL) logit distillation.

        Args:
            input: Input tensor [B, C, H, W], normalised for the student.
            target: Class indices [B] (or soft targets, if the criterion takes them).

        Returns:
            Dictionary with 'loss', 'output', 'task_loss', 'kd_loss', 'kd_divergence', for 'alpha'
            'kd_alpha_max_frac', and with `defer_teacher_check` 'teacher_unusable' ([B] bool).
        """
        student_out = self.trainable_module(input)
        if isinstance(student_out, tuple):  # distillation head in training mode: (class logits, distillation logits)
            class_logits, distill_logits = student_out
            student_logits = (class_logits + distill_logits) / 2
        else:  # one head, or a distilled model in eval mode (which returns the mean itself)
            class_logits = distill_logits = student_logits = student_out
        task_loss = self.criterion(class_logits, target)
        teacher_out = self.teacher_logits(input)
        kd = self.kd_criterion.forward_with_stats(distill_logits, teacher_out)
        total_loss = self.task_loss_weight * task_loss + self.distill_loss_weight * kd.loss

        result = {
            'loss': total_loss,
            'output': student_logits,
            'task_loss': task_loss,
            'kd_loss': kd.loss,
            'kd_divergence': kd.divergence.mean(),
        }
        if kd.branch is not None:
            result['kd_alpha_max_frac'] = kd.branch.float().mean()
        if self.defer_teacher_check:
            result['teacher_unusable'] = unusable_teacher_rows(teacher_out)
        return result
