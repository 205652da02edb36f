"""timm training tasks: sandwich-rule supernet training and alpha-divergence distillation from a teacher."""
from ._teacher import TeacherOutputError, check_teacher_logits
from .distillation import AlphaDistillationTask
from .sampling import sandwich_subnets
from .sandwich import SandwichTask

__all__ = ['AlphaDistillationTask', 'SandwichTask', 'TeacherOutputError', 'check_teacher_logits', 'sandwich_subnets']
