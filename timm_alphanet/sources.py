"""Where a trained supernet comes from: a training run folder, a `local-dir:` / `hf-hub:` model, or an original
AlphaNet/AttentiveNAS checkpoint. `load_supernet` is how search, export and validation open one.

The returned `SupernetSource` records the sha256 of the weights that were loaded, so outputs (pareto.json, model
cards) say exactly which weights they came from and a resumed search can refuse a different supernet.
"""
import itertools
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import Any, Dict, Optional, Tuple, Union

import torch.nn as nn

from .archs import SpaceSpec
from .utils import check_model_dir, sha256_file
from .models import is_supernet

__all__ = ['SupernetSource', 'load_supernet', 'training_data', 'training_recipe', 'source_name',
           'ORIGINAL_SUFFIXES']

ORIGINAL_SUFFIXES = ('.pth', '.pth.tar', '.pt', '.tar')
_ACCEPTED = ('a training run folder (with final/ or checkpoints/), a model folder with config.json, '
             "'local-dir:<folder>', 'hf-hub:<org>/<name>', or an original checkpoint (" + ', '.join(ORIGINAL_SUFFIXES) + ')')


@dataclass(frozen=True)
class SupernetSource:
    """What `load_supernet` opened: the user's spec, its kind, the concrete path (or hub id), the weights' sha256."""
    spec: str
    kind: str  # 'run' | 'local-dir' | 'hf-hub' | 'original'
    path: str
    sha256: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def source_name(source: Dict[str, Any]) -> str:
    """How model cards and config.json name a supernet source (`SupernetSource.to_dict()`) without this machine's
    paths: an ``hf-hub:`` spec as given, a checkpoint by its file name, a run's supernet as
    ``<run folder name>/final/supernet``, another model folder by its name. The sha256 says which weights."""
    if source.get('kind') == 'hf-hub':
        return str(source.get('spec') or '')[:200]
    path = PurePath(str(source.get('path') or source.get('spec') or ''))
    if path.name == 'supernet' and path.parent.name == 'final':  # a run's final/supernet: the run names it
        parts = path.parts[-3:]
    elif path.name == 'final':
        parts = path.parts[-2:]
    else:
        parts = (path.name,)
    return '/'.join(p for p in parts if p not in ('', '/'))[:200] or 'supernet'


def load_supernet(spec: str, space: SpaceSpec = None) -> Tuple[nn.Module, SupernetSource]:
    """Open the supernet `spec` names, in eval mode; raises ValueError / FileNotFoundError naming what is accepted.

    Args:
        spec: a training run folder (its ``final/`` supernet model, else its latest checkpoint), a model folder or
            ``local-dir:<folder>``, ``hf-hub:<org>/<name>``, or an original ``.pth.tar`` checkpoint.
        space: only for original checkpoints: the original YAML / SearchSpace they were trained with (default: the
            one stored in the checkpoint, else AlphaNet's).
    """
    import timm

    from . import models  # noqa: F401  (registers the models timm must build)

    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f'a supernet must be named by a string or path, got {type(spec).__name__}')
    text = os.fspath(spec)
    if text.startswith('hf-hub:'):
        snapshot = _hub_snapshot(text)
        check_model_dir(snapshot)  # timm reads config.json and the weights unbounded; these are the cached files
        model = timm.create_model(text, pretrained=True)
        return _checked(model, text), SupernetSource(text, 'hf-hub', text[len('hf-hub:'):],
                                                     sha256_file(snapshot / 'model.safetensors'))
    path = Path(text[len('local-dir:'):] if text.startswith('local-dir:') else text)
    if os.path.realpath(path) != os.path.abspath(path):  # via output/train/latest: record the run it points at now
        path = Path(os.path.realpath(path))
    if not path.exists():
        raise FileNotFoundError(f'supernet not found: {text[:300]}; expected {_ACCEPTED}')
    if path.is_file():
        if not path.name.lower().endswith(ORIGINAL_SUFFIXES):
            raise ValueError(f'{text[:300]}: not a supernet source; expected {_ACCEPTED}')
        from .original import load_original_checkpoint
        model = load_original_checkpoint(path, space)
        return _checked(model, text), SupernetSource(text, 'original', str(path), sha256_file(path))
    folder = _model_folder(path)
    if folder is not None:
        kind = 'run' if folder != path else 'local-dir'
        check_model_dir(folder)
        model = timm.create_model(f'local-dir:{folder}', pretrained=True)
        return _checked(model, text), SupernetSource(text, kind, str(folder),
                                                     sha256_file(folder / 'model.safetensors'))
    raise ValueError(f'{text[:300]}: no supernet in this folder; expected {_ACCEPTED}')


def _model_folder(path: Path) -> Optional[Path]:
    """The timm model folder of a supernet under `path` (itself, a run's final/supernet/ or final/), or None."""
    for candidate in (path, path / 'final' / 'supernet', path / 'final'):
        if (candidate / 'config.json').is_file() and (candidate / 'model.safetensors').is_file():
            return candidate
    return None


def _checked(model: nn.Module, spec: str) -> nn.Module:
    if not is_supernet(model):
        raise ValueError(f'{spec[:300]}: {type(model).__name__} is not a supernet (it has no search space); '
                         'search and export need the weight-sharing supernet, e.g. a run\'s final/supernet')
    return model.eval()


def _hub_snapshot(spec: str) -> Path:
    """The cached snapshot folder of an ``hf-hub:`` model's config.json and model.safetensors (downloaded if needed).

    Raises:
        FileNotFoundError: not in the cache while offline, or no such file in the repository.
        ValueError: the Hub refused or could not be reached (the message names the spec).
    """
    from huggingface_hub import hf_hub_download
    from timm.models._hub import hf_split

    from .export.hub import HUB_ERRORS
    from .utils import short_message

    repo, revision = hf_split(spec[len('hf-hub:'):])
    try:
        folders = {Path(hf_hub_download(repo, name, revision=revision)).parent
                   for name in ('config.json', 'model.safetensors')}
    except FileNotFoundError as e:
        raise FileNotFoundError(f'{spec[:300]}: {short_message(e)}') from None
    except HUB_ERRORS as e:
        raise ValueError(f'{spec[:300]}: cannot download it from the Hugging Face Hub ({short_message(e)})') from None
    if len(folders) != 1:  # the repository moved on between the two downloads
        raise ValueError(f'{spec[:300]}: config.json and model.safetensors came from different revisions; retry')
    return folders.pop()


RUN_DATA_KEYS = ('dataset', 'data_dir', 'train_split', 'val_split', 'class_map')


def training_data(spec: Union[str, os.PathLike]) -> Dict[str, str]:
    """The data settings a training run recorded in its args.yaml (dataset, data_dir, splits, class_map; the ones
    set), for a run folder or a model folder inside one (``final/supernet``, ``final/<subnet>``, ``final``), also
    named as ``local-dir:<folder>``; {} when there is none (an ``hf-hub:`` model, a checkpoint file, no run).

    Raises:
        ValueError: an args.yaml that is unreadable, too large or not a mapping (naming the file).
    """
    from .utils import read_yaml_file

    run = _run_folder(spec)
    if run is None:
        return {}
    args = run / 'args.yaml'
    data = read_yaml_file(args, what='training run args.yaml')
    if not isinstance(data, dict):
        raise ValueError(f'{str(args)[:300]}: not a training run config (a mapping of option values)')
    return {k: data[k] for k in RUN_DATA_KEYS if isinstance(data.get(k), str)}


def _run_folder(spec: Union[str, os.PathLike]) -> Optional[Path]:
    """The training run folder `spec` is or lies in (see `training_data`), or None."""
    text = os.fspath(spec)
    if text.startswith('hf-hub:'):
        return None
    path = Path(os.path.realpath(text[len('local-dir:'):] if text.startswith('local-dir:') else text))
    if not path.is_dir():
        return None
    for run in (path, path.parent, path.parent.parent):
        if (run / 'args.yaml').is_file() and ((run / 'final').is_dir() or (run / 'checkpoints').is_dir()):
            return run
    return None


def training_recipe(spec: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The BN calibration recipe (`CalibrationRecipe.to_dict()`) a training run recorded in its calibrated
    ``final/<name>/config.json`` models, for a run folder or a folder inside one; None when there is none (no run,
    no calibrated final models, or models that disagree about it).

    Exporting with it calibrates a subnet exactly as the run did, so ``alphanet-export RUN --arch max`` gives the
    run's own ``final/max``.
    """
    from .utils import MAX_CONFIG_BYTES, parse_json, read_bounded_bytes

    run = _run_folder(spec)
    final = None if run is None else run / 'final'
    if final is None or not final.is_dir():
        return None
    recipes = []
    # a run writes a few models: a folder of thousands is not read whole
    for folder in sorted(itertools.islice(final.iterdir(), 64)):
        path = folder / 'config.json'
        if folder.name == 'supernet' or folder.is_symlink() or not path.is_file():
            continue
        try:
            config = parse_json(read_bounded_bytes(path, MAX_CONFIG_BYTES, what='config.json'), str(path))
        except (ValueError, OSError):  # a damaged model records nothing; the default recipe is used instead
            continue
        meta = config.get('timm_alphanet') if isinstance(config, dict) else None
        calibration = meta.get('calibration') if isinstance(meta, dict) else None  # a forged file: no recipe
        if isinstance(calibration, dict) and isinstance(calibration.get('recipe'), dict):
            recipes.append(calibration['recipe'])
    return recipes[0] if recipes and all(r == recipes[0] for r in recipes) else None
