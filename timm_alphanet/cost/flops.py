"""Analytic MACs ("FLOPs" in the paper) and parameter counts of a subnet, without building a model.

Convention of the original counter: a conv costs `in_chs * out_elements * k * k / groups`, a linear layer
`in * out`; BN, activations, pooling and element-wise ops are free. SE convs count; a 1x1 shortcut conv
counts only where it runs (in != out). Batch 1, at the subnet's resolution.
"""
from typing import Tuple

from ..archs import ArchSpec, SpaceSpec
from .ops import subnet_ops

__all__ = ['count_macs_and_params', 'mflops', 'num_params']


def count_macs_and_params(arch: ArchSpec, space: SpaceSpec = None, num_classes: int = 1000,
                          in_chans: int = 3) -> Tuple[int, int]:
    """(MACs, parameters) of the modules that run in `arch` (see `subnet_ops` for what `arch` and `space` may be)."""
    convs = [c for op in subnet_ops(arch, space, num_classes, in_chans) for c in op.convs()]
    return sum(c.macs for c in convs), sum(c.params for c in convs)


def mflops(arch: ArchSpec, space: SpaceSpec = None, num_classes: int = 1000, in_chans: int = 3) -> float:
    """Millions of MACs of `arch` by the original counter's convention (the paper's "MFLOPs"), with a
    `num_classes` classifier (a 10-class demo supernet's subnets: pass 10, as search records them)."""
    return count_macs_and_params(arch, space, num_classes=num_classes, in_chans=in_chans)[0] / 1e6


def num_params(arch: ArchSpec, space: SpaceSpec = None, num_classes: int = 1000, in_chans: int = 3) -> int:
    """Parameters of the modules that run in `arch` (unused shortcut convs are not counted)."""
    return count_macs_and_params(arch, space, num_classes=num_classes, in_chans=in_chans)[1]
