"""Model folders for `local-dir:` / `hf-hub:`: safetensors weights, timm's config.json and a model card."""
import os
from typing import Any, Dict, Optional, Union

from timm.models import save_for_hf

from ..archs import ALPHANET_SPACE
from ..cost.flops import count_macs_and_params
from ..models.alphanet import AlphaNet
from ..models.supernet import AlphaNetSupernet

__all__ = ['save_pretrained']


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
