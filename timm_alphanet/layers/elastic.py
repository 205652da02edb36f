"""`make_elastic`: a static timm CNN made width-elastic in place, with every parameter, buffer and key unchanged.

Each Conv2d, BatchNormAct2d and Linear becomes its dynamic subclass (layers/dynamic.py) holding the very same
Parameter and buffer objects, so the state dict keeps timm's keys and shapes, pretrained weights load as they are,
and a narrower subnet is a leading slice of every tensor. The dynamic layers read their input width from the
input; only a dense conv's output width is a setting (`active_out_channels`), written by the owning supernet.
"""
from typing import Dict

import torch.nn as nn
from timm.layers import BatchNormAct2d

from .dynamic import DynamicBatchNormAct2d, DynamicConv2d, DynamicLinear

__all__ = ['make_elastic', 'elastic_convs']


def _elastic_conv(conv: nn.Conv2d, name: str) -> DynamicConv2d:
    k = conv.kernel_size[0]
    # DynamicConv2d pads k // 2 on both sides; a layer padded otherwise would silently change its output
    if (conv.kernel_size != (k, k) or conv.padding != (k // 2, k // 2) or conv.dilation != (1, 1)
            or conv.padding_mode != 'zeros'):
        raise ValueError(f'make_elastic: {name} ({conv}) is not a square conv with zero padding kernel // 2 and '
                         'dilation 1; only such convs can be made elastic')
    if conv.bias is not None:
        raise ValueError(f'make_elastic: {name} ({conv}) has a bias; elastic convs have none')
    new = DynamicConv2d(conv.in_channels, conv.out_channels, k, stride=conv.stride, padding=conv.padding,
                        groups=conv.groups, bias=False, device='meta')
    new.weight = conv.weight  # the same Parameter: optimizer state, keys and pretrained values stay
    return new


def _elastic_linear(linear: nn.Linear) -> DynamicLinear:
    new = DynamicLinear(linear.in_features, linear.out_features, bias=linear.bias is not None, device='meta')
    new.weight = linear.weight
    if linear.bias is not None:
        new.bias = linear.bias
    return new


def make_elastic(model: nn.Module) -> nn.Module:
    """Swap `model`'s Conv2d / BatchNormAct2d / Linear layers for the dynamic ones, in place; returns `model`.

    Raises:
        ValueError: for a conv that is padded other than ``kernel // 2``, dilated, biased or grouped but not
            depthwise (it would compute something else once sliced), naming it.
        TypeError: for any other module that holds parameters (e.g. squeeze-excite, a plain BatchNorm2d), naming it:
            nothing in the model may keep a fixed width.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, (DynamicConv2d, DynamicBatchNormAct2d, DynamicLinear)):
            continue
        if type(module) is nn.Conv2d:
            new = _elastic_conv(module, name)
        elif type(module) is BatchNormAct2d:
            DynamicBatchNormAct2d.convert(module)  # a subclass that only slices in forward: same tensors
            continue
        elif isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            new = _elastic_linear(module)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f'make_elastic: cannot make {name or "the model"} ({type(module).__name__}) elastic; '
                            'supported: nn.Conv2d, timm BatchNormAct2d, nn.Linear')
        else:
            continue
        if not name:
            raise TypeError(f'make_elastic: the model itself is a {type(module).__name__}; pass a network')
        parent, _, child = name.rpartition('.')
        new.train(module.training)
        setattr(model.get_submodule(parent), child, new)
    return model


def elastic_convs(model: nn.Module) -> Dict[str, DynamicConv2d]:
    """The dense (not depthwise) dynamic convs of `model` by name: the layers whose output width a subnet sets."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicConv2d) and not m.depthwise}
