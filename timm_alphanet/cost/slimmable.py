"""MACs and parameters of a slimmable supernet's subnet (a width), in the original counter's convention.

The AlphaNet counter (`flops.py`) walks a space's block specs without torch; a width space has no block specs:
its layer shapes are timm's static model of that width. So here the model is built on the meta device (no memory,
no init) and its convs and linear layers are read in order as `Conv` records, tracking the spatial size from the
input resolution. A conv costs ``in_chs / groups * out_chs * k * k * out_h * out_w``, a linear layer ``in * out``;
BN, activations, pooling and element-wise ops are free. Parameters count every weight and bias plus BN's affine ones.
"""
from typing import Any, List, Optional, Tuple

import torch.nn as nn

from .ops import Conv

__all__ = ['chain_convs', 'width_macs_and_params']


def _conv_out(size: int, conv: nn.Conv2d) -> int:
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def chain_convs(model: nn.Module, resolution: int) -> List[Conv]:
    """The convs and linear layers of `model` (a chain: each layer's input is the previous one's output, as in
    MobileNet V1/V2) as `Conv` records at `resolution`.

    Raises:
        ValueError: when a layer's input width is not the previous layer's output (a branch, e.g. squeeze-excite),
            or the convs are not square: such models need their own walk.
    """
    out: List[Conv] = []
    size, chs = resolution, None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            c_in, c_out = m.in_channels, m.out_channels
        elif isinstance(m, nn.Linear):
            c_in, c_out = m.in_features, m.out_features
        else:
            continue
        if chs is not None and c_in != chs:
            raise ValueError(f'{name} takes {c_in} channels after a layer with {chs}: not a chain of layers')
        if isinstance(m, nn.Conv2d):
            if m.kernel_size[0] != m.kernel_size[1] or m.stride[0] != m.stride[1] or m.padding[0] != m.padding[1]:
                raise ValueError(f'{name}: only square kernels, strides and paddings are counted, got {m}')
            size = _conv_out(size, m)
            out.append(Conv(c_in, c_out, m.kernel_size[0], size, groups=m.groups, bias=m.bias is not None))
        else:
            out.append(Conv(c_in, c_out, 1, 1, bias=m.bias is not None))
        chs = c_out
    return out


def width_macs_and_params(supernet: Any, arch: Optional[Any] = None,
                          num_classes: Optional[int] = None) -> Tuple[int, int]:
    """(MACs, parameters) of subnet `arch` (default: the active one) of a slimmable supernet.

    Counted on the supernet's `static_model_for(arch)` built on the meta device, so with the supernet's classes
    (or `num_classes`) and input channels, at the subnet's resolution, batch 1.
    """
    arch = supernet.active_subnet if arch is None else supernet.space.validate(arch)
    extra = {} if num_classes is None else {'num_classes': num_classes}
    model = supernet.static_model_for(arch, device='meta', **extra)
    convs = chain_convs(model, arch.resolution)
    bn_params = sum(2 * m.num_features for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine)
    return sum(c.macs for c in convs), sum(c.params for c in convs) + bn_params
