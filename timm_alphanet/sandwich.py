"""Moved to `timm_alphanet.task`; this import path keeps working."""
from .task.sandwich import SandwichTask  # noqa: F401

__all__ = ['SandwichTask']
