"""Converting an original AlphaNet/AttentiveNAS checkpoint to timm model folders (behind ``alphanet-convert``).

Writes ``OUT/supernet/`` (the whole supernet, ``timm.create_model('local-dir:OUT/supernet',
pretrained=True)``) and ``OUT/alphanet_<name>/`` for each requested subnet (a static ``alphanet_custom``
model with cropped weights, loadable the same way), plus ``OUT/conversion.json`` recording what was done.

BatchNorm statistics: the original trains with BN momentum 0, so the running statistics stored in its
checkpoints are meaningless until each subnet is calibrated. With ``--calib-data`` every exported subnet
is calibrated with a `CalibrationRecipe` exactly as ``alphanet-export`` calibrates (the same images, order,
eval transform and batches; `recipe_for` fills what is not given from the supernet), and the recipe is recorded
in each folder's config.json and card and in conversion.json. Without it the subnets are written uncalibrated,
and their model cards and the output say so. The supernet is always written with the checkpoint's statistics
(calibrate per subnet after ``set_subnet``).

Example::

    alphanet-convert alphanet.pth.tar --out converted --subnets all --calib-data /data/imagenet/train
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..archs import ALPHANET_ARCHS, read_arch_file
from ..calibration import CalibrationRecipe, calibrate_with_recipe, calibration_images, fit_recipe, recipe_for
from ..data import data_name, dataset_and_root, open_image_dataset
from ..processes import check_device
from ..spaces import SearchSpace, SubnetConfig
from ..spaces.protocol import is_arch_file
from ..utils import bounded_repr, regular_file_size, sha256_file, write_atomic

__all__ = ['convert_checkpoint', 'resolve_subnets', 'ConvertedPaths', 'SUBNET_NAMES']

_logger = logging.getLogger(__name__)

# names accepted by --subnets besides arch files: the searched archs plus the space's extremes
SUBNET_NAMES: Tuple[str, ...] = (*ALPHANET_ARCHS, 'max', 'min')

UNCALIBRATED_NOTE = (
    'BatchNorm statistics: UNCALIBRATED. The running statistics are the checkpoint\'s, cropped to this '
    'subnet; the original trains with BN momentum 0, so they are meaningless until calibrated. Convert again '
    'with `alphanet-convert --calib-data` (the deterministic, recorded recipe export uses: 2048 training images '
    'by default; the original calibrated on 64 batches x 256).')


@dataclass
class ConvertedPaths:
    """Directories written by :func:`convert_checkpoint`."""
    supernet: str
    subnets: Dict[str, str] = field(default_factory=dict)  # name -> directory (alphanet_<name>)
    metadata: Optional[str] = None  # conversion.json


def _allowed_text() -> str:
    return ', '.join(SUBNET_NAMES) + ", 'all', or a path to a JSON/YAML arch file"


def resolve_subnets(spec: Union[None, str, Sequence[str]]) -> List[Tuple[str, Union[str, SubnetConfig]]]:
    """Parses ``--subnets``: names (``a0`` ... ``a6``, ``max``, ``min``), ``all`` or arch file paths.

    Args:
        spec: comma-separated string or a sequence of entries; None or empty means none.

    Returns:
        ``[(name, arch)]`` where ``arch`` is a SubnetConfig read from a file, or a name ('a0', 'max', ...)
        resolved against the search space later. ``all`` expands to every name of ``ALPHANET_ARCHS``.

    Raises:
        ValueError: an unknown name (the allowed ones are listed), an unreadable arch file, or a duplicate.
    """
    if spec is None:
        return []
    entries = [e.strip() for e in spec.split(',')] if isinstance(spec, str) else [str(e).strip() for e in spec]
    entries = [e for e in entries if e]
    out: List[Tuple[str, Union[str, SubnetConfig]]] = []
    for entry in entries:
        if entry == 'all':
            out += [(n, n) for n in ALPHANET_ARCHS]
        elif entry in SUBNET_NAMES:
            out.append((entry, entry))
        elif is_arch_file(entry):
            out.append((os.path.splitext(os.path.basename(entry))[0], read_arch_file(entry)))
        else:
            raise ValueError(f'unknown subnet {bounded_repr(entry)}; allowed: {_allowed_text()}')
    seen, unique = set(), []
    for name, arch in out:
        if name in seen:
            if isinstance(arch, str):
                continue  # 'all,a0' is fine
            raise ValueError(f'two subnets would be written to alphanet_{name}: rename one arch file')
        seen.add(name)
        unique.append((name, arch))
    return unique


def _arch_for(name: str, arch: Union[str, SubnetConfig], space: SearchSpace) -> SubnetConfig:
    if arch == 'max':
        return space.max_config()
    if arch == 'min':
        return space.min_config()
    cfg = ALPHANET_ARCHS[arch] if isinstance(arch, str) else arch
    try:
        return space.validate(cfg)
    except ValueError as e:
        raise ValueError(f'subnet {name!r} is not in the checkpoint\'s search space: {e}') from e


def _calibrate(model: torch.nn.Module, images: torch.Tensor, recipe: CalibrationRecipe, resolution: int,
               device: torch.device) -> int:
    model.to(device)
    try:
        return calibrate_with_recipe(model, images, recipe, resolution)
    finally:
        model.to('cpu')


def convert_checkpoint(
        checkpoint: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        config: Optional[Union[str, os.PathLike, SearchSpace]] = None,
        subnets: Union[None, str, Sequence[str]] = None,
        calib_data: Optional[Union[str, os.PathLike]] = None,
        recipe: Union[None, CalibrationRecipe, Mapping[str, Any]] = None,
        workers: int = 4,
        device: Union[str, torch.device] = 'cpu',
        progress: bool = True,
        log: Optional[Callable[[str], None]] = None,
) -> ConvertedPaths:
    """Converts an original checkpoint: the supernet and the requested subnets as timm model directories.

    Args:
        checkpoint: the original checkpoint file.
        out_dir: output directory; ``supernet/`` and ``alphanet_<name>/`` are (over)written inside it.
        config: the original YAML the checkpoint was trained with, or a SearchSpace (see
            :func:`timm_alphanet.load_original_checkpoint`; None: the space stored in the checkpoint, else
            AlphaNet's).
        subnets: see :func:`resolve_subnets` (e.g. ``'a0,a3'``, ``'all'``, ``['max', 'my_arch.yaml']``).
        calib_data: image folder (holding the recipe's split as a sub-folder, or itself the class folders) or
            ``sklearn/digits`` for BN calibration of each subnet; None writes them uncalibrated.
        recipe: the calibration recipe; a mapping gives some of its fields (e.g. ``{'num_images': 512}``) and
            `recipe_for` the rest from the supernet, as for None (all of them).
        workers: data loader processes.
        device: where calibration runs.
        progress: show progress bars.
        log: called with each progress message (default: this module's logger at INFO level).

    Returns:
        The directories written.

    Raises:
        FileNotFoundError: a missing checkpoint, config file or calibration folder.
        ValueError: a bad subnet, recipe or worker count, a split without (enough) images; nothing is written then.
    """
    from ..export import extract_subnet, save_pretrained
    from .checkpoint import load_original_checkpoint

    say = log or _logger.info
    regular_file_size(checkpoint, 'checkpoint')  # a missing file or a directory fails before anything is done
    checkpoint = os.fspath(checkpoint)
    if isinstance(config, (str, os.PathLike)):
        regular_file_size(config, 'config file')
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f'workers must be a non-negative integer, got {workers!r}')
    recipe = {} if recipe is None else recipe
    if isinstance(recipe, Mapping):
        split = recipe_for(None, **recipe).split  # a bad field fails before the (slow) checkpoint read
    elif isinstance(recipe, CalibrationRecipe):
        split = recipe.split
    else:
        raise ValueError(f'recipe must be a CalibrationRecipe or a mapping of its fields, got {type(recipe).__name__}')
    dataset = None
    if calib_data is not None:  # opened now: a missing folder or an empty split fails before anything is written
        calib_data = os.fspath(calib_data)
        dataset = open_image_dataset(*dataset_and_root(calib_data), split, what='calibration data')
    requested = resolve_subnets(subnets)
    device = check_device(device)

    say(f'reading {checkpoint}')
    supernet = load_original_checkpoint(checkpoint, config)
    space = supernet.space
    archs = [(name, _arch_for(name, arch, space)) for name, arch in requested]  # all checked before writing
    say(f'loaded the supernet: {len(space.stages)} stages, {supernet.num_classes} classes, '
        f'{sum(p.numel() for p in supernet.parameters()):,} parameters')
    images = None
    if dataset is not None and archs:

        if not isinstance(recipe, CalibrationRecipe):
            # a default image count larger than the split uses all of it, as alphanet-export does
            recipe = recipe_for(supernet, **recipe) if recipe.get('num_images') is not None else \
                fit_recipe(recipe_for(supernet, **recipe), len(dataset))
        images = calibration_images(dataset, recipe, workers=workers, progress=progress)
        say(f'calibration: {recipe.num_images} images of {calib_data} (split {recipe.split!r}, seed {recipe.seed}), '
            f'batches of {recipe.batch_size}, {recipe.image_size} px eval transform')

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    source = os.path.basename(checkpoint)
    # the checkpoint by name and sha256, never by this machine's path: the folders' cards get published
    origin = {'name': source, 'kind': 'original', 'sha256': sha256_file(checkpoint)}
    supernet_dir = save_pretrained(
        supernet, os.path.join(out_dir, 'supernet'), name='alphanet_supernet', overwrite=True,
        notes=f'Converted from the original checkpoint `{source}` by `alphanet-convert`. BatchNorm statistics '
              'are the checkpoint\'s (the original trains with BN momentum 0, so they are meaningless): '
              'after `set_subnet(arch)`, calibrate with `timm_alphanet.calibrate_bn` before evaluating.')
    say(f'wrote {supernet_dir}')
    result = ConvertedPaths(supernet=supernet_dir)

    if archs and images is None:
        say('BN statistics: UNCALIBRATED (no --calib-data given). The subnets are written with the '
            "checkpoint's running statistics, which are meaningless until calibrated.")
    records = []
    for name, arch in tqdm(archs, desc='subnets', disable=not progress or not archs):
        model = extract_subnet(supernet, arch).eval()
        if images is None:
            notes = UNCALIBRATED_NOTE + '\n\n'
            calibration = None
        else:
            used = _calibrate(model, images, recipe, arch.resolution, device)
            model.eval()
            # recorded as alphanet-export records it, so the two tools' folders say the same about the same recipe
            calibration = {'recipe': recipe.to_dict(), 'data': data_name(calib_data), 'batches': used}
            notes = ''
        notes += f'Converted from the original checkpoint `{source}` by `alphanet-convert`.'
        path = save_pretrained(model, os.path.join(out_dir, f'alphanet_{name}'), name=f'alphanet_{name}', notes=notes,
                               overwrite=True, metadata={'calibration': calibration, 'supernet': origin})
        say(f'wrote {path} ({"calibrated" if calibration else "UNCALIBRATED"} BN statistics)')
        result.subnets[name] = path
        records.append({'name': name, 'dir': os.path.basename(path), 'arch': arch.to_dict(),
                        'calibration': calibration})

    meta = {
        'source': origin,
        'config': os.path.basename(os.fspath(config)) if isinstance(config, (str, os.PathLike)) else None,
        'space': space.to_dict(),
        'num_classes': supernet.num_classes,
        'supernet': os.path.basename(supernet_dir),
        'subnets': records,
    }
    result.metadata = os.path.join(out_dir, 'conversion.json')
    write_atomic(result.metadata, json.dumps(meta, indent=1))
    return result
