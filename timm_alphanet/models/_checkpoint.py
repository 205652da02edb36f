"""The one pretrained-weights filter of every model here: accept our and timm's checkpoint layouts, and say clearly
when a checkpoint is not this model's (or holds NaN/inf) instead of failing deep inside `load_state_dict`."""
import warnings
from typing import Any, Dict, List, Mapping

import torch
import torch.nn as nn

from ..utils import bounded_repr

__all__ = ['checkpoint_filter_fn']


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """`state_dict` for `model`: our and timm's checkpoints, optionally wrapped (`state_dict`/`model`) or DDP-prefixed
    (`module.`).

    Raises:
        ValueError: the checkpoint's keys or shapes are not `model`'s (the first few of each are named).

    Warns (RuntimeWarning) when a tensor holds NaN or inf: the model would compute garbage from it.
    """
    for key in ('state_dict', 'model'):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
    state_dict = {k[len('module.'):] if isinstance(k, str) and k.startswith('module.') else k: v
                  for k, v in state_dict.items()}
    _check_checkpoint_fits(state_dict, model)
    non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        warnings.warn(f'{len(non_finite)} checkpoint tensors hold NaN or inf values: {_first_keys(non_finite)}; '
                      f'the model will compute NaN/inf from them', RuntimeWarning, stacklevel=2)
    return state_dict


def _check_checkpoint_fits(state_dict: Mapping[str, Any], model: nn.Module) -> None:
    """Raise if `state_dict` is not a state dict of `model`'s architecture.

    timm adapts the first conv (other `in_chans`) and drops the classifier (other `num_classes`) after this filter
    runs, so those two may differ here.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    adapted = tuple(f'{cfg.get(k, default)}.' for k, default in (('first_conv', 'conv_stem'),
                                                                  ('classifier', 'classifier')))
    classifier = adapted[1]
    target = model.state_dict()
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in target if k not in state_dict and not k.startswith(classifier)]
    unexpected = [k for k in state_dict if k not in target and not (isinstance(k, str) and k.startswith(classifier))]
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}'
                  for k, v in state_dict.items() if k in target and isinstance(v, torch.Tensor)
                  and not k.startswith(adapted) and v.shape != target[k].shape]
    problems = [f'{what} ({len(keys)}) {_first_keys(keys)}' for what, keys in (
        ('entries that are not tensors', not_tensors), ('missing keys', missing), ('unexpected keys', unexpected),
        ('shape mismatches', mismatched)) if keys]
    if problems:
        name = cfg.get('architecture') or type(model).__name__
        raise ValueError(f'the checkpoint does not fit {name}: {"; ".join(problems)}. Is it from a different model '
                         f'or search space?')


def _first_keys(keys: List[Any], n: int = 8) -> str:
    shown = ', '.join(k[:120] if isinstance(k, str) else bounded_repr(k) for k in keys[:n])
    return shown + (f', ... and {len(keys) - n} more' if len(keys) > n else '')
