"""Model folders for `local-dir:` / `hf-hub:`: safetensors weights, timm's config.json with our metadata, a model card.

A folder is written whole or not at all: everything goes into a hidden temporary folder beside the target, which is
renamed into place at the end, so a crash or a full disk never leaves a half-written model folder, and an existing
folder is replaced only when the caller says so (`overwrite=True`).

Our metadata lives in config.json under the key ``timm_alphanet`` (timm ignores keys it does not know); the model
card is rendered from config.json alone (`card.render_card`), so it can be regenerated on every push or after a new
evaluation without the model.
"""
import contextlib
import json
import os
from importlib import metadata as _pkg_metadata
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import save_for_hf

from ..archs import ALPHANET_ARCHS, ALPHANET_SPACE
from ..cost.flops import count_macs_and_params
from ..utils import (
    LOCK_FILE, MAX_CONFIG_BYTES, check_writable_folder, display_path, parse_json, read_bounded_bytes, staged_directory,
    write_atomic,
)
from ..models import is_supernet
from ..models.alphanet import AlphaNet
from .card import META_KEY, render_card

__all__ = ['OutputExistsError', 'META_KEY', 'MAX_CONFIG_BYTES', 'save_pretrained', 'staged_folder', 'write_model_files',
           'write_model_folder', 'check_output_folder', 'read_config', 'update_metadata', 'write_card',
           'package_version', 'model_metadata', 'record_evaluation']


class OutputExistsError(FileExistsError, ValueError):
    """The output folder exists and is not empty (pass ``overwrite=True`` / ``--overwrite`` to replace it).

    A ValueError too, so command-line tools report it as a user error.
    """


def package_version() -> str:
    """The installed timm_alphanet version (recorded in every folder we write)."""
    try:
        return _pkg_metadata.version('timm_alphanet')
    except _pkg_metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return 'unknown (not installed)'


def check_output_folder(directory: Union[str, os.PathLike], overwrite: bool = False,
                        flag: str = 'overwrite=True') -> Path:
    """`directory` as a Path; raises OutputExistsError when it exists non-empty (or is a file) and not `overwrite`
    (a `claim_folder` lock file alone does not count). `flag` is how the caller's user asks to overwrite
    (``--overwrite`` on a command line), named in the message."""
    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        if not directory.is_dir():
            raise OutputExistsError(f'{str(directory)[:300]} exists and is not a folder')
        if not overwrite and any(p.name != LOCK_FILE for p in directory.iterdir()):  # a claim's lock is not content
            raise OutputExistsError(f'output folder {str(directory)[:300]} exists and is not empty; choose another '
                                    f'folder or pass {flag} to replace it')
    check_writable_folder(directory, 'output folder')  # here, before calibration, not when the first file is written
    return directory


@contextlib.contextmanager
def staged_folder(directory: Union[str, os.PathLike], overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `directory` when the block ends without an exception.

    On any exception (a full disk, Ctrl-C) the temporary folder is removed and `directory` is left as it was.
    """
    directory = check_output_folder(directory, overwrite)
    # it may have appeared while we wrote
    with staged_directory(directory, before_replace=lambda: check_output_folder(directory, overwrite)) as tmp:
        yield tmp


def _named_alphanet(model: AlphaNet) -> Optional[str]:
    """'alphanet_<name>' when `model` is one of the registered searched archs of AlphaNet's space, else None."""
    if model.space != ALPHANET_SPACE:
        return None
    for name, arch in ALPHANET_ARCHS.items():
        if model.arch == arch:
            return f'alphanet_{name}'
    return None


def _export_args(model: nn.Module) -> Dict[str, Any]:
    """(model_config, model_args, drop) for timm's `save_for_hf` so that the folder rebuilds `model`.

    A named `alphanet_aX` entrypoint fixes its own arch and refuses another one, so its folder records no arch
    (`drop`: model_args keys timm recorded at creation that must not be written); any other AlphaNet subnet is
    written as `alphanet_custom` with its arch (and space when not AlphaNet's).
    """
    model_config: Dict[str, Any] = {}
    model_args: Dict[str, Any] = {}
    drop: Tuple[str, ...] = ()
    if is_supernet(model):
        space = getattr(model, 'space', None)
        if hasattr(space, 'to_dict'):
            model_args['space'] = space.to_dict()
    elif isinstance(model, AlphaNet):
        named = _named_alphanet(model)
        if named is not None:
            model_config['pretrained_cfg'] = {'architecture': named}
            drop = ('arch', 'space')
        else:
            model_config['pretrained_cfg'] = {'architecture': 'alphanet_custom'}
            model_args['arch'] = model.arch.to_dict()
            if model.space != ALPHANET_SPACE:
                model_args['space'] = model.space.to_dict()
            else:
                drop = ('space',)
    return {'model_config': model_config, 'model_args': model_args, 'drop': drop}


def model_metadata(model: nn.Module) -> Dict[str, Any]:
    """What we record about any model: kind, arch and space (AlphaNet), MFLOPs and params, license, version."""
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    meta: Dict[str, Any] = {'version': package_version(), 'license': cfg.get('license') or 'unknown'}
    if is_supernet(model):
        meta['kind'] = 'supernet'
        meta['params_m'] = sum(p.numel() for p in model.parameters()) / 1e6
    elif isinstance(model, AlphaNet):
        macs, params = count_macs_and_params(model.arch, model.space, num_classes=model.num_classes,
                                             in_chans=model.in_chans)
        meta.update(kind='alphanet', arch=model.arch.to_dict(), mflops=macs / 1e6, params_m=params / 1e6)
        if model.space != ALPHANET_SPACE:
            meta['space'] = model.space.to_dict()
    else:
        meta['kind'] = 'model'
        meta['params_m'] = sum(p.numel() for p in model.parameters()) / 1e6
    return meta


def write_model_files(model: nn.Module, folder: Path, metadata: Mapping[str, Any]) -> None:
    """`model.safetensors` and config.json (timm's keys plus ``timm_alphanet``: `metadata`) into `folder`."""
    args = _export_args(model)
    args['model_config'][META_KEY] = dict(metadata)
    drop = args.pop('drop')
    save_for_hf(model, str(folder), safe_serialization=True, **args)
    if drop:  # timm records creation kwargs (e.g. alphanet_custom's arch) that the named entrypoint refuses
        config = read_config(folder)
        config['model_args'] = {k: v for k, v in config.get('model_args', {}).items() if k not in drop}
        write_atomic(folder / 'config.json', json.dumps(config, indent=2))


def write_model_folder(model: nn.Module, folder: Path, metadata: Mapping[str, Any], final: Path) -> None:
    """Weights, config.json and the card into `folder` (a staging folder that will become `final`)."""
    write_model_files(model, folder, metadata)
    card = render_card(read_config(folder), folder_name=Path(final).resolve().name)
    write_atomic(folder / 'README.md', str(card))


def read_config(folder: Union[str, os.PathLike]) -> Dict[str, Any]:
    """config.json of a model folder (bounded read; ValueError naming the file when it is not a timm config)."""
    path = Path(folder) / 'config.json'
    if not path.is_file():
        raise FileNotFoundError(f'{str(folder)[:300]} is not a model folder: no config.json')
    config = parse_json(read_bounded_bytes(path, MAX_CONFIG_BYTES, what='config.json'), display_path(path))
    if not isinstance(config, dict) or not isinstance(config.get('architecture'), str):
        raise ValueError(f'{str(path)[:300]}: not a timm config.json (no "architecture")')
    if not isinstance(config.get(META_KEY, {}), dict):
        raise ValueError(f'{str(path)[:300]}: "{META_KEY}" must be a mapping')
    return config


def write_card(folder: Union[str, os.PathLike], repo_id: Optional[str] = None,
               config: Optional[Mapping[str, Any]] = None, folder_name: Optional[str] = None) -> str:
    """(Re)render README.md of `folder` from its config.json; `repo_id` gives `hf-hub:` usage lines, else they load
    the folder by `folder_name` (default: its own name; a staging folder passes the name it will get)."""
    folder = Path(folder)
    config = read_config(folder) if config is None else config
    repo_id = repo_id or config.get(META_KEY, {}).get('hub_repo')  # a pushed folder keeps hf-hub: usage lines
    text = str(render_card(config, repo_id=repo_id, folder_name=folder_name or folder.resolve().name))
    write_atomic(folder / 'README.md', text)
    return text


def update_metadata(folder: Union[str, os.PathLike], changes: Mapping[str, Any],
                    repo_id: Optional[str] = None) -> Dict[str, Any]:
    """Merge `changes` into config.json's ``timm_alphanet`` metadata and regenerate the card; returns the config."""
    folder = Path(folder)
    config = read_config(folder)
    config[META_KEY] = {**config.get(META_KEY, {}), **changes}
    write_atomic(folder / 'config.json', json.dumps(config, indent=2))
    write_card(folder, repo_id=repo_id, config=config)
    return config


def _check_same_weights(folder: Path, model: nn.Module) -> None:
    from safetensors import safe_open

    path = folder / 'model.safetensors'
    if not path.is_file():
        raise FileNotFoundError(f'{str(folder)[:300]} has no model.safetensors')
    state = model.state_dict()
    with safe_open(str(path), framework='pt') as f:
        keys = set(f.keys())
        same = keys == set(state) and all(torch.equal(f.get_tensor(k), state[k].detach().cpu()) for k in keys)
    if not same:
        raise ValueError(f'{str(folder)[:300]} holds other weights than the model that was evaluated; record results '
                         'only into the folder of the evaluated model')


def record_evaluation(folder: Union[str, os.PathLike], result: Mapping[str, Any],
                      model: Optional[nn.Module] = None, source: str = 'alphanet-validate') -> Dict[str, Any]:
    """Add an evaluation `result` (top1, top5, loss, dataset, split, pipeline, num_images) to a model folder.

    It replaces an earlier result on the same dataset, split and pipeline; config.json and the card are rewritten.
    With `model`, the folder's weights must be the model's (ValueError otherwise). `source` names the tool that
    measured it. Returns the new config.
    """
    folder = Path(folder)
    config = read_config(folder)
    if model is not None:
        _check_same_weights(folder, model)
    keys = ('top1', 'top5', 'loss', 'dataset', 'split', 'pipeline', 'num_images')
    entry = {k: result[k] for k in keys if k in result}
    entry.update(source=str(source)[:100], version=package_version())
    same = ('dataset', 'split', 'pipeline')
    results = [r for r in config.get(META_KEY, {}).get('results') or []
               if not isinstance(r, Mapping) or any(r.get(k) != entry.get(k) for k in same)]
    return update_metadata(folder, {'results': [*results, entry]})


def save_pretrained(model: nn.Module, directory: Union[str, os.PathLike], name: Optional[str] = None,
                    notes: Optional[str] = None, overwrite: bool = False,
                    metadata: Optional[Mapping[str, Any]] = None) -> str:
    """Write `model.safetensors`, config.json and a model card describing `model` into `directory`.

    The folder loads with ``timm.create_model('local-dir:<directory>', pretrained=True)`` (after ``import
    timm_alphanet`` for AlphaNet models) and, once uploaded (`push_to_hub`), with ``hf-hub:<org>/<name>``.

    Args:
        model: any timm model; AlphaNet subnets and supernets also record their arch / space, MFLOPs and params.
        directory: the model folder; written whole via a temporary folder, never half.
        name: the model's name in the card (default: the folder's name).
        notes: free text for the card (kept in config.json, so regenerated cards keep it).
        overwrite: replace an existing non-empty folder (otherwise OutputExistsError).
        metadata: more metadata for config.json / the card (e.g. results, calibration, source).

    Returns:
        The folder's path.
    """
    directory = Path(directory)
    meta = model_metadata(model)
    meta['name'] = name or directory.resolve().name
    if notes:
        meta['notes'] = notes
    meta.update(metadata or {})
    with staged_folder(directory, overwrite) as tmp:
        write_model_folder(model, tmp, meta, directory)
    return os.fspath(directory)
