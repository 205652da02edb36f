"""Moved to `timm_alphanet.task`; this import path keeps working."""
from .task.distillation import AlphaDistillationTask  # noqa: F401

__all__ = ['AlphaDistillationTask']
