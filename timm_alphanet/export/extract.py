"""Subnet extraction: a supernet's subnet as a static timm model.

Extraction is generic because the supernet's keys are the static model's keys: every tensor of the
static model is a crop of the supernet tensor of the same name (leading slice of channel dims, centre
crop of kernel dims).
"""
from typing import Any, Mapping, Optional, Union

import timm
import torch

from ..archs import ALPHANET_SPACE
from ..spaces import SubnetConfig
from ..models.alphanet import AlphaNet
from ..models.supernet import AlphaNetSupernet

__all__ = ['extract_subnet', 'crop_like']


def crop_like(src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Crop `src` to `shape`: leading slice of channel dims, centre crop of the two kernel dims of a 4D conv weight."""
    if src.ndim != len(shape):
        raise ValueError(f'cannot crop a {tuple(src.shape)} tensor to {tuple(shape)}')
    index = []
    for d, n in enumerate(shape):
        if n > src.shape[d]:
            raise ValueError(f'cannot crop a {tuple(src.shape)} tensor to {tuple(shape)}: dim {d} is too small')
        start = (src.shape[d] - n) // 2 if src.ndim == 4 and d >= 2 else 0
        index.append(slice(start, start + n))
    return src[tuple(index)]


@torch.no_grad()
def extract_subnet(supernet: AlphaNetSupernet, arch: Optional[Union[SubnetConfig, Mapping[str, Any]]] = None,
                   **kwargs) -> AlphaNet:
    """The static timm model for `arch` (default: the active subnet) with cropped weights: `alphanet_custom`, or what
    the supernet's `static_model_for(arch)` names (a slimmable MobileNet: timm's model of that width).

    Running statistics are cropped too, so calibrate the supernet's subnet first (see `calibrate_bn`) or
    the extracted model afterwards. `kwargs` go to `timm.create_model` (e.g. drop_rate).
    """
    arch = supernet.active_subnet if arch is None else supernet.space.validate(arch)
    if hasattr(supernet, 'static_model_for'):  # a supernet that names its static timm model (slimmable MobileNets)
        model = supernet.static_model_for(arch, **kwargs)
    else:
        space = None if supernet.space == ALPHANET_SPACE else supernet.space.to_dict()
        ref = supernet.conv_stem.weight
        model = timm.create_model('alphanet_custom', arch=arch.to_dict(), space=space,
                                  num_classes=supernet.num_classes, in_chans=supernet.in_chans, device=ref.device,
                                  dtype=ref.dtype, **kwargs)
    shared = supernet.state_dict()
    target = model.state_dict()
    missing = [k for k in target if k not in shared]
    if missing:
        raise KeyError(f'supernet has no tensors for {missing}; is it from a different space?')
    for name, tensor in target.items():
        tensor.copy_(crop_like(shared[name], tensor.shape))
    model.train(supernet.training)
    return model
