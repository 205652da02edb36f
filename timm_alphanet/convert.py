"""Moved to `timm_alphanet.original.convert` (library) and `timm_alphanet.cli.convert` (``alphanet-convert``)."""
from .cli.convert import build_parser, main  # noqa: F401
from .original.convert import (  # noqa: F401
    SUBNET_NAMES, ConvertedPaths, convert_checkpoint, make_calibration_loader, resolve_subnets)

__all__ = ['convert_checkpoint', 'resolve_subnets', 'make_calibration_loader', 'ConvertedPaths', 'SUBNET_NAMES',
           'build_parser', 'main']
