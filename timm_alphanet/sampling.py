"""Moved to `timm_alphanet.task`; this import path keeps working."""
from .task.sampling import sandwich_subnets  # noqa: F401

__all__ = ['sandwich_subnets']
