"""The one KD-teacher helper of both tasks: build timm's `DistillationTeacher`, and get its logits for a batch
normalised for the student.

timm's `DistillationTeacher` does the creation (timm name, ``hf-hub:``, ``local-dir:``, weights file, or an
``nn.Module``) and the student -> teacher re-normalisation; what is left is the part both tasks need identically.
"""
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.task import DistillationTeacher
from timm.utils import unwrap_model

from ..io_checks import check_model_spec

__all__ = ['TeacherSpec', 'create_teacher', 'student_normalization', 'teacher_logits']

TeacherSpec = Union[str, nn.Module, DistillationTeacher]


def create_teacher(
        teacher: TeacherSpec,
        student: nn.Module,
        pretrained_path: Optional[str] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
) -> DistillationTeacher:
    """`teacher` as a frozen, eval-mode `DistillationTeacher` with the student's `num_classes` and `in_chans`.

    Args:
        teacher: a timm model name (pretrained weights are loaded; ``hf-hub:``/``local-dir:`` work), an
            ``nn.Module`` (used as is) or a `DistillationTeacher` (returned as is, frozen).
        student: the model being trained (or a DDP/compile wrapper of it).
        pretrained_path: weights file for a teacher given by name.
        pretrained_cfg_overlay: pretrained cfg overrides for a teacher given by name.
        device, dtype: where the teacher is created.
    """
    if isinstance(teacher, str):
        check_model_spec(teacher)  # a corrupt local-dir: folder is named here, not deep inside timm
    if not isinstance(teacher, DistillationTeacher):
        plain = unwrap_model(student)
        teacher = DistillationTeacher(
            teacher, num_classes=plain.num_classes, in_chans=getattr(plain, 'in_chans', 3),
            pretrained_path=pretrained_path, pretrained_cfg_overlay=pretrained_cfg_overlay, device=device, dtype=dtype)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()


def student_normalization(student: nn.Module, device: Optional[torch.device] = None,
                          dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The student's input mean and std (from its `pretrained_cfg`, ImageNet's by default) as [1, C, 1, 1] tensors."""
    cfg = getattr(unwrap_model(student), 'pretrained_cfg', None) or {}
    return tuple(torch.tensor(cfg.get(key, default), device=device, dtype=dtype).view(1, -1, 1, 1)
                 for key, default in (('mean', IMAGENET_DEFAULT_MEAN), ('std', IMAGENET_DEFAULT_STD)))


@torch.no_grad()
def teacher_logits(teacher: DistillationTeacher, input: torch.Tensor, student_mean: torch.Tensor,
                   student_std: torch.Tensor) -> torch.Tensor:
    """The teacher's logits, without gradient, for a batch normalised with the student's mean/std."""
    return teacher(teacher.normalize_input(input, student_mean, student_std), return_features=False)
