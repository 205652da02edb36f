"""The one KD-teacher helper of both tasks: build timm's `DistillationTeacher`, and get its logits for a batch
normalised for the student.

timm's `DistillationTeacher` does the creation (timm name, ``hf-hub:``, ``local-dir:``, weights file, or an
``nn.Module``) and the student -> teacher re-normalisation; what is left is the part both tasks need identically.
"""
from typing import Any, Dict, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError
from timm.task import DistillationTeacher
from timm.utils import unwrap_model

from ..calibration import mean_std_of
from ..utils import check_model_spec, check_safetensors

__all__ = ['TeacherOutputError', 'TeacherSpec', 'check_teacher_logits', 'create_teacher', 'student_normalization',
           'teacher_logits', 'unusable_teacher_rows']

TeacherSpec = Union[str, nn.Module, DistillationTeacher]


def create_teacher(
        teacher: TeacherSpec,
        student: nn.Module,
        pretrained_path: Optional[str] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
) -> DistillationTeacher:
    """`teacher` as a frozen, eval-mode `DistillationTeacher` with the student's `in_chans`.

    A teacher given by name keeps its own pretrained classifier: one whose number of classes differs from the
    student's is refused instead of distilling from a randomly initialised head (timm's `DistillationTeacher`
    would silently re-create the head with the student's classes).

    Args:
        teacher: a timm model name (pretrained weights are loaded; ``hf-hub:``/``local-dir:`` work), an
            ``nn.Module`` (used as is) or a `DistillationTeacher` (returned as is, frozen).
        student: the model being trained (or a DDP/compile wrapper of it).
        pretrained_path: weights file for a teacher given by name.
        pretrained_cfg_overlay: pretrained cfg overrides for a teacher given by name.
        device, dtype: where the teacher is created.

    Raises:
        ValueError: the teacher's weights cannot be loaded (the message says how to give them locally), or its
            number of classes differs from the student's (naming both).
    """
    plain = unwrap_model(student)
    if isinstance(teacher, str):
        check_model_spec(teacher)  # a corrupt local-dir: folder is named here, not deep inside timm
        teacher = _pretrained(teacher, plain, pretrained_path, pretrained_cfg_overlay, device, dtype)
    if not isinstance(teacher, DistillationTeacher):
        _check_classes(teacher, plain, repr(type(teacher).__name__))
        teacher = DistillationTeacher(teacher, device=device, dtype=dtype)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()


def _classes(model: nn.Module) -> Optional[int]:
    classes = getattr(model, 'num_classes', None)
    if isinstance(classes, int):
        return classes
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    return getattr(head, 'out_features', None)


def _check_classes(teacher: nn.Module, student: nn.Module, name: str) -> None:
    theirs, ours = _classes(unwrap_model(teacher)), _classes(student)
    if theirs is not None and ours is not None and theirs != ours:
        raise ValueError(f'teacher {name[:200]} has {theirs} classes, the student (and the data) {ours}: its '
                         'predictions cannot teach these classes, and a new head would be random. Give a teacher '
                         'trained on this data (--teacher local-dir:<model folder>, or a timm name with '
                         '--teacher-pretrained-path <weights>)')


def _pretrained(name: str, student: nn.Module, pretrained_path: Optional[str],
                overlay: Optional[Dict[str, Any]], device: Optional[torch.device],
                dtype: Optional[torch.dtype]) -> nn.Module:
    """The named teacher with its pretrained weights and its own classifier (a weights file: the student's classes,
    loaded strictly, so a file with another head fails)."""
    kwargs: Dict[str, Any] = dict(pretrained=True, in_chans=getattr(student, 'in_chans', 3), device=device,
                                  dtype=dtype)
    overlay = dict(overlay or {})
    if pretrained_path:
        overlay = {'file': pretrained_path, 'num_classes': _classes(student), **overlay}
        kwargs['num_classes'] = _classes(student)
    if overlay:
        kwargs['pretrained_cfg_overlay'] = overlay
    try:
        model = timm.create_model(name, **kwargs)
    except (OSError, RuntimeError, ValueError, HfHubHTTPError) as e:
        reason = ' '.join(str(e).split())[:300]
        if hf_constants.HF_HUB_OFFLINE and not pretrained_path and not name.startswith('local-dir:'):
            reason = 'HF_HUB_OFFLINE is set and they are not in the local cache'  # not the hub's "check your connection"
        if pretrained_path:
            rows = _file_classes(pretrained_path, name)
            if rows is not None and rows != _classes(student):
                raise ValueError(f'teacher weights {pretrained_path[:200]} have a {rows}-class head, the student (and '
                                 f'the data) {_classes(student)} classes: give weights trained on this data') from None
            raise ValueError(f'teacher {name[:100]!r}: could not load --teacher-pretrained-path '
                             f'{pretrained_path[:200]} ({reason})') from None
        if name.startswith('local-dir:'):
            raise ValueError(f'teacher {name[:200]}: could not load it ({reason})') from None
        raise ValueError(f'teacher {name[:100]!r}: its pretrained weights could not be loaded ({reason}). Give them '
                         'locally: --teacher local-dir:<model folder> (e.g. a saved timm model or a run\'s final/), '
                         f'or --teacher {name[:100]} --teacher-pretrained-path <weights file>') from None
    _check_classes(model, student, repr(name))
    return model


def _file_classes(path: str, name: str) -> Optional[int]:
    """Rows of the classifier weight in a safetensors weights file (header only), or None when unknown."""
    classifier = getattr(timm.models.get_pretrained_cfg(name.split('.')[0], allow_unregistered=True) or {},
                         'classifier', None)
    if not isinstance(classifier, str) or not path.endswith('.safetensors'):
        return None
    try:
        shapes = check_safetensors(path)
    except (OSError, ValueError):
        return None
    shape = shapes.get(f'{classifier}.weight', (None, ()))[1]
    return shape[0] if shape else None


def student_normalization(student: nn.Module, device: Optional[torch.device] = None,
                          dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The student's input mean and std (from its `pretrained_cfg`, ImageNet's by default) as [1, C, 1, 1] tensors."""
    return tuple(torch.tensor(v, device=device, dtype=dtype).view(1, -1, 1, 1)
                 for v in mean_std_of(unwrap_model(student)))


class TeacherOutputError(ValueError):
    """The frozen teacher gave logits no KD loss can use (NaN, +inf, or a row without a finite logit)."""


@torch.no_grad()
def teacher_logits(teacher: DistillationTeacher, input: torch.Tensor, student_mean: torch.Tensor,
                   student_std: torch.Tensor, check: bool = True) -> torch.Tensor:
    """The teacher's logits, without gradient, for a batch normalised with the student's mean/std.

    Raises:
        TeacherOutputError: with `check`, a row holds NaN or +inf, or no finite logit (all -inf); the message names
            the rows. The check reads the device once; a caller that must not wait on it (the training loop) passes
            ``check=False`` and checks `unusable_teacher_rows` where it reads the device anyway.
    """
    logits = teacher(teacher.normalize_input(input, student_mean, student_std), return_features=False)
    if check:
        check_teacher_logits(logits)
    return logits


def unusable_teacher_rows(logits: torch.Tensor) -> torch.Tensor:
    """[N] bool on the logits' device, no host read: rows with NaN or +inf, or without a finite logit (all -inf).

    The KD losses take -inf as a masked class, but such a row has no distribution: its loss is NaN.
    """
    flat = logits.detach().reshape(-1, logits.shape[-1])
    return torch.isnan(flat).any(-1) | torch.isposinf(flat).any(-1) | torch.isneginf(flat).all(-1)


def check_teacher_logits(logits: Optional[torch.Tensor], unusable: Optional[torch.Tensor] = None) -> None:
    """Refuse teacher logits that make every KD loss NaN (`TeacherOutputError` naming the rows).

    The teacher is frozen, so that is not a divergence the training loop should skip as a bad step (it skips
    non-finite losses, up to --max-nonfinite in a row): the same images would give the same NaN in every epoch,
    silently. Refused at once instead, naming the rows, so the teacher (its weights, or an fp16 overflow:
    --mixed-precision bf16) can be fixed. `unusable`: the rows' mask if already computed (`unusable_teacher_rows`).
    """
    if unusable is None:
        if not logits.is_floating_point() or logits.numel() == 0:
            return
        unusable = unusable_teacher_rows(logits)
    if not bool(unusable.any()):
        return
    rows = torch.nonzero(unusable).flatten().tolist()
    shown = ', '.join(str(r) for r in rows[:10]) + (f' and {len(rows) - 10} more' if len(rows) > 10 else '')
    raise TeacherOutputError(
        f'the teacher gave unusable logits for {len(rows)} of {unusable.numel()} images in this batch (rows {shown}): '
        'NaN or +inf, or no finite logit (every class -inf), which makes the KD loss NaN. Check the teacher\'s '
        'weights; under --mixed-precision fp16 its logits may overflow (use bf16)')
