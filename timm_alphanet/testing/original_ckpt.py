"""Test helper: writes checkpoints in the original AlphaNet/AttentiveNAS layout (no original code needed).

``original_manifest(supernet_config)`` lists the original supernet's state-dict keys, shapes and dtypes
in the original module order, derived from the original YAML schema (``supernet_config``). For the
AlphaNet space it equals the manifest taken from the original model (tests check this).
``write_original_checkpoint`` fills that layout with deterministic random tensors and saves it the way the
original training script does, with ``args`` pickled as a ``utils.config.Config``.

NOTE: tests/data/original_reference.json holds logits that the original code computed from the checkpoint
``write_original_checkpoint(seed=0)`` writes. Changing how values are drawn here invalidates that file.
"""
import copy
import hashlib
import json
import os
import sys
import types
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    'ALPHANET_SUPERNET_CONFIG', 'SMALL_SUPERNET_CONFIG', 'original_manifest', 'load_manifest',
    'random_original_state_dict', 'state_dict_digest', 'default_args', 'write_original_checkpoint',
    'write_malicious_checkpoint',
]

ManifestEntry = Tuple[str, Tuple[int, ...], torch.dtype]

# The AlphaNet supernet in the original YAML schema (`supernet_config`; the paper's Table of the search space).
ALPHANET_SUPERNET_CONFIG: Dict[str, Any] = {
    'use_v3_head': True,
    'resolutions': [192, 224, 256, 288],
    'first_conv': {'c': [16, 24], 'act_func': 'swish', 's': 2},
    'mb1': {'c': [16, 24], 'd': [1, 2], 'k': [3, 5], 't': [1], 's': 1, 'act_func': 'swish', 'se': False},
    'mb2': {'c': [24, 32], 'd': [3, 4, 5], 'k': [3, 5], 't': [4, 5, 6], 's': 2, 'act_func': 'swish', 'se': False},
    'mb3': {'c': [32, 40], 'd': [3, 4, 5, 6], 'k': [3, 5], 't': [4, 5, 6], 's': 2, 'act_func': 'swish', 'se': True},
    'mb4': {'c': [64, 72], 'd': [3, 4, 5, 6], 'k': [3, 5], 't': [4, 5, 6], 's': 2, 'act_func': 'swish', 'se': False},
    'mb5': {'c': [112, 120, 128], 'd': [3, 4, 5, 6, 7, 8], 'k': [3, 5], 't': [4, 5, 6], 's': 1,
            'act_func': 'swish', 'se': True},
    'mb6': {'c': [192, 200, 208, 216], 'd': [3, 4, 5, 6, 7, 8], 'k': [3, 5], 't': [6], 's': 2,
            'act_func': 'swish', 'se': True},
    'mb7': {'c': [216, 224], 'd': [1, 2], 'k': [3, 5], 't': [6], 's': 1, 'act_func': 'swish', 'se': True},
    'last_conv': {'c': [1792, 1984], 'act_func': 'swish'},
}

# A small custom space (3 stages) for fast tests; it has a stage whose first block never changes width
# (mb2: 16 -> 16), so its shortcut conv is never used.
SMALL_SUPERNET_CONFIG: Dict[str, Any] = {
    'use_v3_head': True,
    'resolutions': [32, 64],
    'first_conv': {'c': [8, 16], 'act_func': 'swish', 's': 2},
    'mb1': {'c': [16], 'd': [1, 2], 'k': [3, 5], 't': [1], 's': 1, 'act_func': 'swish', 'se': False},
    'mb2': {'c': [16], 'd': [1, 2], 'k': [3], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': True},
    'mb3': {'c': [24, 32], 'd': [2, 3], 'k': [3, 5], 't': [4, 6], 's': 2, 'act_func': 'swish', 'se': True},
    'last_conv': {'c': [64, 96], 'act_func': 'swish'},
}

_BN_STATS = ('running_mean', 'running_var', 'num_batches_tracked')


def _as_list(v: Any) -> List[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _make_divisible(v: float, divisor: int = 8, min_value: int = 1) -> int:
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _dynamic_bn(prefix: str, c: int) -> List[ManifestEntry]:
    # DynamicBatchNorm2d: an affine BatchNorm2d plus two unused affine=False trackers
    entries: List[ManifestEntry] = [(f'{prefix}.bn.weight', (c,), torch.float32),
                                    (f'{prefix}.bn.bias', (c,), torch.float32)]
    for owner in (f'{prefix}.bn', f'{prefix}.bn_tracking.0', f'{prefix}.bn_tracking.1'):
        entries += [(f'{owner}.running_mean', (c,), torch.float32), (f'{owner}.running_var', (c,), torch.float32),
                    (f'{owner}.num_batches_tracked', (), torch.int64)]
    return entries


def original_manifest(supernet_config: Optional[Mapping[str, Any]] = None, n_classes: int = 1000,
                      prefix: str = 'module.') -> List[ManifestEntry]:
    """(key, shape, dtype) of every state-dict entry of the original supernet, in its module order."""
    cfg = ALPHANET_SUPERNET_CONFIG if supernet_config is None else supernet_config
    if not cfg.get('use_v3_head', False):
        raise ValueError('only the MobileNetV3-style head (use_v3_head: True) is supported')
    f32 = torch.float32
    out: List[ManifestEntry] = []
    c_stem = max(_as_list(cfg['first_conv']['c']))
    out.append(('first_conv.conv.conv.weight', (c_stem, 3, 3, 3), f32))
    out += _dynamic_bn('first_conv.bn', c_stem)

    stage_names = [f'mb{i}' for i in range(1, 100) if f'mb{i}' in cfg]
    n, c_in = 0, c_stem
    for name in stage_names:
        st = cfg[name]
        c_out, k, t = max(_as_list(st['c'])), max(_as_list(st['k'])), max(_as_list(st['t']))
        for _ in range(max(_as_list(st['d']))):
            p = f'blocks.{n}.mobile_inverted_conv'
            mid = round(c_in * t)  # the original allocates round(), not make_divisible()
            if t != 1:
                out.append((f'{p}.inverted_bottleneck.conv.conv.weight', (mid, c_in, 1, 1), f32))
                out += _dynamic_bn(f'{p}.inverted_bottleneck.bn', mid)
            out.append((f'{p}.depth_conv.conv.conv.weight', (mid, 1, k, k), f32))
            out += _dynamic_bn(f'{p}.depth_conv.bn', mid)
            if st.get('se', False):
                se_mid = _make_divisible(mid // 4, 8)
                out += [(f'{p}.depth_conv.se.fc.reduce.weight', (se_mid, mid, 1, 1), f32),
                        (f'{p}.depth_conv.se.fc.reduce.bias', (se_mid,), f32),
                        (f'{p}.depth_conv.se.fc.expand.weight', (mid, se_mid, 1, 1), f32),
                        (f'{p}.depth_conv.se.fc.expand.bias', (mid,), f32)]
            out.append((f'{p}.point_linear.conv.conv.weight', (c_out, mid, 1, 1), f32))
            out += _dynamic_bn(f'{p}.point_linear.bn', c_out)
            out.append((f'blocks.{n}.shortcut.conv.conv.weight', (c_out, c_in, 1, 1), f32))
            n, c_in = n + 1, c_out

    c_expand, c_head = 6 * c_in, max(_as_list(cfg['last_conv']['c']))
    out.append(('last_conv.final_expand_layer.conv.conv.weight', (c_expand, c_in, 1, 1), f32))
    out += _dynamic_bn('last_conv.final_expand_layer.bn', c_expand)
    out.append(('last_conv.feature_mix_layer.conv.conv.weight', (c_head, c_expand, 1, 1), f32))
    out += [('classifier.linear.linear.weight', (n_classes, c_head), f32),
            ('classifier.linear.linear.bias', (n_classes,), f32)]
    return [(prefix + key, shape, dtype) for key, shape, dtype in out]


def load_manifest(path: Union[str, os.PathLike]) -> List[ManifestEntry]:
    """Reads a key manifest JSON (key, shape, dtype per entry, as dumped from the original model)."""
    with open(path) as f:
        data = json.load(f)
    return [(e['key'], tuple(e['shape']), getattr(torch, e['dtype'])) for e in data['keys']]


def random_original_state_dict(manifest: Sequence[ManifestEntry], seed: int) -> 'Dict[str, torch.Tensor]':
    """Deterministic random tensors for `manifest`, drawn in manifest order from one seeded Generator.

    Recipe (keep stable, see module docstring): conv/linear weights N(0, 1) / sqrt(fan_in); 1-D biases
    0.1 * N(0, 1); BN weight 1 + 0.1 * N(0, 1), BN bias 0.1 * N(0, 1), running_mean 0.1 * N(0, 1),
    running_var 0.5 + U[0, 1), num_batches_tracked randint(0, 1000).
    """
    g = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for key, shape, dtype in manifest:
        leaf = key.rsplit('.', 1)[-1]
        if leaf == 'num_batches_tracked':
            t = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        elif leaf == 'running_var':
            t = 0.5 + torch.rand(shape, generator=g)
        elif leaf == 'running_mean' or (leaf == 'bias' and len(shape) == 1):
            t = 0.1 * torch.randn(shape, generator=g)
        elif leaf == 'weight' and len(shape) == 1:  # BN affine weight
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif leaf == 'weight':
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            t = torch.randn(shape, generator=g) / fan_in ** 0.5
        else:
            raise ValueError(f'no recipe for {key}')
        out[key] = t.to(dtype)
    return out


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over keys and raw tensor bytes, in order: pins down the generated weights exactly."""
    h = hashlib.sha256()
    for key, t in state_dict.items():
        h.update(key.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _original_config_classes() -> Tuple[type, type]:
    """Classes shaped like the original utils.config.AttrDict / Config (pickled by reference)."""

    class AttrDict(dict):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.__dict__ = self  # as the original: attributes and items are one dict
            for key in self.__dict__:
                value = self.__dict__[key]
                if isinstance(value, dict):
                    self.__dict__[key] = AttrDict(value)
                elif isinstance(value, list) and value and isinstance(value[0], dict):
                    self.__dict__[key] = [AttrDict(item) for item in value]

    class Config(AttrDict):
        pass

    for cls in (AttrDict, Config):
        cls.__module__ = 'utils.config'
        cls.__qualname__ = cls.__name__
    return AttrDict, Config


def _save_with_fake_utils_config(obj_factory: Any, path: Union[str, os.PathLike], legacy: bool) -> None:
    """torch.save with importable fake `utils` / `utils.config` modules, removed again afterwards."""
    attr_dict, config = _original_config_classes()
    pkg, mod = types.ModuleType('utils'), types.ModuleType('utils.config')
    pkg.__path__ = []  # a package, so 'utils.config' resolves
    mod.AttrDict, mod.Config, pkg.config = attr_dict, config, mod
    saved = {name: sys.modules.get(name) for name in ('utils', 'utils.config')}
    sys.modules['utils'], sys.modules['utils.config'] = pkg, mod
    try:
        torch.save(obj_factory(config), path, _use_new_zipfile_serialization=not legacy)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def default_args(supernet_config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Training args like the original's Config (a subset of the AlphaNet YAML plus runtime fields)."""
    return {
        'arch': 'attentive_nas_dynamic_model', 'exp_name': 'alphanet', 'batch_size_per_gpu': 32,
        'sandwich_rule': True, 'alpha_min': -1.0, 'alpha_max': 1.0, 'iw_clip': 5.0, 'grad_clip_value': 1.0,
        'augment': 'auto_augment_tf', 'warmup_epochs': 5, 'epochs': 360, 'label_smoothing': 0.1,
        'inplace_distill': True, 'bn_momentum': 0, 'bn_eps': 1e-5, 'post_bn_calibration_batch_num': 64,
        'num_arch_training': 4, 'dropout': 0.2, 'drop_connect': 0.2, 'drop_connect_only_last_two_stages': True,
        'weight_decay_weight': 1e-5, 'weight_decay_bn_bias': 0.0,
        'optimizer': {'method': 'sgd', 'momentum': 0.9, 'nesterov': True},
        'lr_scheduler': {'method': 'warmup_cosine_lr', 'base_lr': 0.1, 'clamp_lr_percent': 0.0},
        'n_classes': 1000, 'seed': 0, 'resume': '', 'distributed': True, 'world_size': 64, 'gpu': 0, 'rank': 0,
        'supernet_config': copy.deepcopy(dict(supernet_config or ALPHANET_SUPERNET_CONFIG)),
    }


def write_original_checkpoint(
        path: Union[str, os.PathLike],
        seed: int = 0,
        legacy: bool = True,
        manifest: Optional[Sequence[ManifestEntry]] = None,
        supernet_config: Optional[Mapping[str, Any]] = None,
        epoch: int = 360,
) -> Dict[str, torch.Tensor]:
    """Writes a checkpoint shaped like the original AlphaNet training checkpoint.

    Args:
        path: output file.
        seed: seed of the torch.Generator that draws every tensor (see `random_original_state_dict`).
        legacy: the original's `_use_new_zipfile_serialization=False` format; False writes the zip format.
        manifest: keys/shapes/dtypes to write (with the `module.` prefix); default: the layout of
            `supernet_config` (the AlphaNet supernet if that is None, 1468 keys, ~24M values).
        supernet_config: stored in `args['supernet_config']`, and the default manifest's source.
        epoch: stored as `epoch`.

    Returns:
        The state dict written (keys with the `module.` prefix).
    """
    if manifest is None:
        manifest = original_manifest(supernet_config)
    state_dict = random_original_state_dict(manifest, seed)
    params = [k for k, _, dtype in manifest if dtype.is_floating_point and 'running_' not in k]
    first = state_dict[params[0]]
    optimizer = {
        'state': {0: {'momentum_buffer': torch.full_like(first, 0.5)}},
        'param_groups': [{'lr': 0.1, 'momentum': 0.9, 'dampening': 0, 'weight_decay': 1e-5, 'nesterov': True,
                          'params': list(range(len(params)))}],
    }
    lr_scheduler = {'max_iters': 1000, 'warmup_factor': 0.001, 'warmup_iters': 10, 'warmup_method': 'linear',
                    'clamp_lr': 0.0, 'base_lrs': [0.1], 'last_epoch': 1000, '_step_count': 1001,
                    'verbose': False, '_get_lr_called_within_step': False, '_last_lr': [0.0]}
    args = default_args(supernet_config)

    def build(config_cls: type) -> Dict[str, Any]:
        return {'epoch': epoch, 'args': config_cls(args), 'state_dict': state_dict,
                'optimizer': optimizer, 'lr_scheduler': lr_scheduler}

    _save_with_fake_utils_config(build, path, legacy)
    return state_dict


class _RunsCode:
    """Unpickles to a call of `builtins.exec` that creates `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        import builtins
        return builtins.exec, (f'open({self.marker!r}, "w").close()',)


def write_malicious_checkpoint(path: Union[str, os.PathLike], marker: Union[str, os.PathLike],
                               legacy: bool = False) -> None:
    """Writes an otherwise valid checkpoint whose full unpickling runs code that creates `marker`."""
    state_dict = {'module.classifier.linear.linear.bias': torch.zeros(3)}
    payload = {'epoch': 1, 'args': {'note': _RunsCode(os.fspath(marker))}, 'state_dict': state_dict}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
