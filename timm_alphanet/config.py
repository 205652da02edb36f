"""Moved to `timm_alphanet.spaces`; this import path keeps working."""
from .spaces import ACTIVATIONS, BlockSpec, SearchSpace, StageSpace, SubnetConfig, make_divisible  # noqa: F401

__all__ = ['SubnetConfig', 'StageSpace', 'SearchSpace', 'BlockSpec', 'make_divisible', 'ACTIVATIONS']
