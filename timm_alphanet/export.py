"""Subnet extraction and export: a supernet's subnet as a static timm model, saved for `hf-hub:` / `local-dir:`.

Extraction is generic because the supernet's keys are the static model's keys: every tensor of the
static model is a crop of the supernet tensor of the same name (leading slice of channel dims, centre
crop of kernel dims).
"""
import os
from typing import Any, Dict, Mapping, Optional, Union

import timm
import torch
from timm.models import save_for_hf

from .archs import ALPHANET_SPACE
from .config import SubnetConfig
from .flops import count_macs_and_params
from .models.alphanet import AlphaNet
from .models.supernet import AlphaNetSupernet

__all__ = ['extract_subnet', 'crop_like', 'save_pretrained']


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
    """The static timm model (`alphanet_custom`) for `arch` (default: the active subnet) with cropped weights.

    Running statistics are cropped too, so calibrate the supernet's subnet first (see `calibrate_bn`) or
    the extracted model afterwards. `kwargs` go to `timm.create_model` (e.g. drop_rate).
    """
    arch = supernet.active_subnet if arch is None else supernet.space.validate(arch)
    space = None if supernet.space == ALPHANET_SPACE else supernet.space.to_dict()
    ref = supernet.conv_stem.weight
    model = timm.create_model('alphanet_custom', arch=arch.to_dict(), space=space, num_classes=supernet.num_classes,
                              in_chans=supernet.in_chans, device=ref.device, dtype=ref.dtype, **kwargs)
    shared = supernet.state_dict()
    target = model.state_dict()
    missing = [k for k in target if k not in shared]
    if missing:
        raise KeyError(f'supernet has no tensors for {missing}; is it from a different space?')
    for name, tensor in target.items():
        tensor.copy_(crop_like(shared[name], tensor.shape))
    model.train(supernet.training)
    return model


def _model_card(model: AlphaNet, name: str, extra: Optional[str] = None) -> str:
    macs, params = count_macs_and_params(model.arch, model.space, num_classes=model.num_classes,
                                         in_chans=model.in_chans)
    arch = model.arch.to_dict()
    lines = [
        '---', 'tags: [image-classification, timm, alphanet]', 'library_name: timm', 'license: cc-by-nc-4.0', '---',
        f'# {name}', '',
        'An AlphaNet subnet ([AlphaNet: Improved Training of Supernets with Alpha-Divergence]'
        '(https://arxiv.org/abs/2102.07954)) as a timm model, exported by timm_alphanet.', '',
        '| | |', '|---|---|',
        f'| resolution | {arch["resolution"]} |', f'| MFLOPs (MACs) | {macs / 1e6:.2f} |',
        f'| params (M) | {params / 1e6:.2f} |', f'| classes | {model.num_classes} |',
        *(f'| {k} | {v} |' for k, v in arch.items() if k != 'resolution'), '',
        '```python', 'import timm, timm_alphanet  # the import registers the AlphaNet models',
        f"model = timm.create_model('hf-hub:<org>/{name}', pretrained=True)", '```', '',
        'The architecture and weights derive from work released under CC-BY-NC-4.0 (non-commercial).',
    ]
    if extra:
        lines += ['', extra]
    return '\n'.join(lines) + '\n'


def save_pretrained(model: AlphaNet, directory: Union[str, os.PathLike], name: Optional[str] = None,
                    notes: Optional[str] = None) -> str:
    """Write `model.safetensors`, `config.json` (with the arch in `model_args`) and a model card README.md.

    The directory loads with `timm.create_model('local-dir:<directory>', pretrained=True)`, and once
    uploaded, with `hf-hub:<org>/<name>`.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    model_args: Dict[str, Any] = {}
    if isinstance(model, AlphaNetSupernet):
        model_args['space'] = model.space.to_dict()
    elif isinstance(model, AlphaNet):
        model_args['arch'] = model.arch.to_dict()
        if model.space != ALPHANET_SPACE:
            model_args['space'] = model.space.to_dict()
    save_for_hf(model, directory, model_args=model_args, safe_serialization=True)
    name = name or os.path.basename(os.path.normpath(directory))
    if isinstance(model, AlphaNet) and not isinstance(model, AlphaNetSupernet):
        card = _model_card(model, name, notes)
    else:
        card = f'# {name}\n\nAn AlphaNet weight-sharing supernet for timm_alphanet (CC-BY-NC-4.0).\n' + \
            (f'\n{notes}\n' if notes else '')
    with open(os.path.join(directory, 'README.md'), 'w') as f:
        f.write(card)
    return directory
