"""Moved to `timm_alphanet.cost`; this import path keeps working."""
from .cost.flops import count_macs_and_params, mflops, num_params  # noqa: F401

__all__ = ['count_macs_and_params', 'mflops', 'num_params']
