"""Moved to `timm_alphanet.calibration`; this import path keeps working."""
from .calibration import calibrate_bn  # noqa: F401

__all__ = ['calibrate_bn']
