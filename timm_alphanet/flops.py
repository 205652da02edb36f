"""Analytic MACs ("FLOPs" in the paper) and parameter counts of a subnet, without building a model.

Convention of the original counter: a conv costs `in_chs * out_elements * k * k / groups`, a linear layer
`in * out`; BN, activations, pooling and element-wise ops are free. SE convs count; a 1x1 shortcut conv
counts only where it runs (in != out). Batch 1, at the subnet's resolution.
"""
from typing import Optional, Tuple, Union, Mapping, Any

from .config import SearchSpace, SubnetConfig

__all__ = ['count_macs_and_params', 'mflops', 'num_params']


def _conv_out(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1


def count_macs_and_params(
        arch: Union[SubnetConfig, Mapping[str, Any]],
        space: Optional[SearchSpace] = None,
        num_classes: int = 1000,
        in_chans: int = 3,
) -> Tuple[int, int]:
    """(MACs, parameters) of the modules that run in `arch`; `space` defaults to the AlphaNet space."""
    if space is None:
        from .archs import ALPHANET_SPACE
        space = ALPHANET_SPACE
    arch = space.validate(arch)
    macs = params = 0

    def conv(cin: int, cout: int, k: int, out_hw: int, groups: int = 1, bias: bool = False, bn: bool = False):
        nonlocal macs, params
        w = cout * (cin // groups) * k * k
        macs += w * out_hw * out_hw
        params += w + (cout if bias else 0) + (2 * cout if bn else 0)

    hw = _conv_out(arch.resolution, 3, space.stem_stride)
    conv(in_chans, arch.widths[0], 3, hw, bn=True)
    for blocks in space.block_specs(arch):
        for b in blocks:
            if b.expand_ratio != 1:
                conv(b.in_chs, b.mid_chs, 1, hw, bn=True)
            hw = _conv_out(hw, b.kernel_size, b.stride)
            conv(b.mid_chs, b.mid_chs, b.kernel_size, hw, groups=b.mid_chs, bn=True)
            if b.se_chs:
                conv(b.mid_chs, b.se_chs, 1, 1, bias=True)
                conv(b.se_chs, b.mid_chs, 1, 1, bias=True)
            conv(b.mid_chs, b.out_chs, 1, hw, bn=True)
            if b.has_shortcut_conv:
                conv(b.in_chs, b.out_chs, 1, hw)
    last = arch.widths[-2]
    expand = last * space.head_expand_ratio
    conv(last, expand, 1, hw, bn=True)
    conv(expand, arch.widths[-1], 1, 1)
    macs += arch.widths[-1] * num_classes
    params += arch.widths[-1] * num_classes + num_classes
    return macs, params


def mflops(arch: Union[SubnetConfig, Mapping[str, Any]], space: Optional[SearchSpace] = None) -> float:
    """Millions of MACs of `arch` by the original counter's convention (the paper's "MFLOPs")."""
    return count_macs_and_params(arch, space)[0] / 1e6


def num_params(arch: Union[SubnetConfig, Mapping[str, Any]], space: Optional[SearchSpace] = None,
               num_classes: int = 1000) -> int:
    """Parameters of the modules that run in `arch` (unused shortcut convs are not counted)."""
    return count_macs_and_params(arch, space, num_classes=num_classes)[1]
