"""timm training tasks: sandwich-rule supernet training and alpha-divergence distillation from a teacher."""
from .distillation import AlphaDistillationTask
from .sampling import sandwich_subnets
from .sandwich import SandwichTask

__all__ = ['AlphaDistillationTask', 'SandwichTask', 'sandwich_subnets']
