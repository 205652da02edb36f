"""Converting an original AlphaNet/AttentiveNAS checkpoint to timm model folders (behind ``alphanet-convert``).

Writes ``OUT/supernet/`` (the whole supernet, ``timm.create_model('local-dir:OUT/supernet',
pretrained=True)``) and ``OUT/alphanet_<name>/`` for each requested subnet (a static ``alphanet_custom``
model with cropped weights, loadable the same way), plus ``OUT/conversion.json`` recording what was done.

BatchNorm statistics: the original trains with BN momentum 0, so the running statistics stored in its
checkpoints are meaningless until each subnet is calibrated. With ``--calib-data`` every exported subnet
is calibrated (reset, then the cumulative average over ``--calib-batches`` batches in train mode, as the
original does) on images of that folder, transformed as the original's training loader does for
calibration, simplified: random-resized-crop to the subnet's resolution (bicubic) + horizontal flip +
ImageNet mean/std, with a fixed seed (the same images and crops for every subnet). Without it the subnets
are written uncalibrated, and their model cards and the output say so. The supernet is always written with
the checkpoint's statistics (calibrate per subnet after ``set_subnet``).

Example::

    alphanet-convert alphanet.pth.tar --out converted --subnets all --calib-data /data/imagenet/train
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..archs import ALPHANET_ARCHS, read_arch_file
from ..processes import check_device
from ..spaces import SearchSpace, SubnetConfig
from ..utils import bounded_repr, regular_file_size

__all__ = ['convert_checkpoint', 'resolve_subnets', 'make_calibration_loader', 'ConvertedPaths', 'SUBNET_NAMES']

_logger = logging.getLogger(__name__)

# names accepted by --subnets besides arch files: the searched archs plus the space's extremes
SUBNET_NAMES: Tuple[str, ...] = (*ALPHANET_ARCHS, 'max', 'min')
_ARCH_FILE_EXTS = ('.json', '.yaml', '.yml')

UNCALIBRATED_NOTE = (
    'BatchNorm statistics: UNCALIBRATED. The running statistics are the checkpoint\'s, cropped to this '
    'subnet; the original trains with BN momentum 0, so they are meaningless until calibrated. Calibrate '
    'before evaluating: `timm_alphanet.calibrate_bn(model, train_loader, num_batches=64)` (64 batches x 256 '
    'training images in the original), or convert again with `alphanet-convert --calib-data`.')


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
        elif entry.lower().endswith(_ARCH_FILE_EXTS) or os.path.isfile(entry):
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


def make_calibration_loader(
        root: Union[str, os.PathLike],
        resolution: int,
        batch_size: int = 256,
        workers: int = 4,
        seed: int = 0,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
) -> torch.utils.data.DataLoader:
    """Training-style images for BN calibration: random-resized-crop (bicubic) + flip, normalised.

    ``root`` is an image folder (class sub-folders or flat; a ``train`` sub-folder is used if present) or
    anything else timm's ``create_dataset('', root)`` reads. Shuffling and worker seeds come from ``seed``;
    the loader drops a last partial batch when there is at least one full batch.
    """
    from timm.data import create_dataset
    from torchvision import transforms

    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f'calibration data not found: {root}')
    try:
        dataset = create_dataset('', root=root, split='train', is_training=True)
    except RuntimeError as e:  # timm: 'Found 0 images in subfolders of ...'
        raise ValueError(f'no images found for calibration in {root}: {e}') from e
    if len(dataset) == 0:
        raise ValueError(f'no images found for calibration in {root}')
    dataset.transform = transforms.Compose([
        transforms.RandomResizedCrop(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
        generator=torch.Generator().manual_seed(seed), drop_last=len(dataset) >= batch_size,
        persistent_workers=False, pin_memory=False)


def _calibrate(model: torch.nn.Module, arch: SubnetConfig, calib_data: str, num_batches: int, batch_size: int,
               workers: int, seed: int, device: torch.device, progress: bool) -> int:
    from ..calibration import calibrate_bn

    cfg = getattr(model, 'pretrained_cfg', None) or {}
    loader = make_calibration_loader(calib_data, arch.resolution, batch_size=batch_size, workers=workers, seed=seed,
                                     mean=cfg.get('mean', (0.485, 0.456, 0.406)),
                                     std=cfg.get('std', (0.229, 0.224, 0.225)))
    with torch.random.fork_rng(devices=[]):  # main-process transforms draw from the global RNG
        torch.manual_seed(seed)
        model.to(device)
        try:
            return calibrate_bn(model, loader, num_batches=num_batches, resolution=arch.resolution,
                                distributed=False, progress=progress)
        finally:
            model.to('cpu')


def convert_checkpoint(
        checkpoint: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        config: Optional[Union[str, os.PathLike, SearchSpace]] = None,
        subnets: Union[None, str, Sequence[str]] = None,
        calib_data: Optional[Union[str, os.PathLike]] = None,
        calib_batches: int = 64,
        calib_batch_size: int = 256,
        workers: int = 4,
        seed: int = 0,
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
        calib_data: image folder for BN calibration of each subnet; None writes them uncalibrated.
        calib_batches: batches per subnet (the original: 64).
        calib_batch_size: images per batch (the original: 256).
        workers: data loader processes.
        seed: seed of the calibration data order and augmentation (the same for every subnet).
        device: where calibration runs.
        progress: show progress bars.
        log: called with each progress message (default: this module's logger at INFO level).

    Returns:
        The directories written.
    """
    from ..export import extract_subnet, save_pretrained
    from .checkpoint import load_original_checkpoint

    say = log or _logger.info
    regular_file_size(checkpoint, 'checkpoint')  # a missing file or a directory fails before anything is done
    checkpoint = os.fspath(checkpoint)
    if isinstance(config, (str, os.PathLike)):
        regular_file_size(config, 'config file')
    for arg, value in (('calib_batches', calib_batches), ('calib_batch_size', calib_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{arg} must be a positive integer, got {value!r}')
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f'workers must be a non-negative integer, got {workers!r}')
    if calib_data is not None and not os.path.exists(calib_data):
        raise FileNotFoundError(f'calibration data not found: {os.fspath(calib_data)}')
    requested = resolve_subnets(subnets)
    device = check_device(device)

    say(f'reading {checkpoint}')
    supernet = load_original_checkpoint(checkpoint, config)
    space = supernet.space
    archs = [(name, _arch_for(name, arch, space)) for name, arch in requested]  # all checked before writing
    say(f'loaded the supernet: {len(space.stages)} stages, {supernet.num_classes} classes, '
        f'{sum(p.numel() for p in supernet.parameters()):,} parameters')

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    source = os.path.basename(checkpoint)
    supernet_dir = save_pretrained(
        supernet, os.path.join(out_dir, 'supernet'), name='alphanet_supernet', overwrite=True,
        notes=f'Converted from the original checkpoint `{source}` by `alphanet-convert`. BatchNorm statistics '
              'are the checkpoint\'s (the original trains with BN momentum 0, so they are meaningless): '
              'after `set_subnet(arch)`, calibrate with `timm_alphanet.calibrate_bn` before evaluating.')
    say(f'wrote {supernet_dir}')
    result = ConvertedPaths(supernet=supernet_dir)

    if archs and calib_data is None:
        say('BN statistics: UNCALIBRATED (no --calib-data given). The subnets are written with the '
            "checkpoint's running statistics, which are meaningless until calibrated.")
    records = []
    for name, arch in tqdm(archs, desc='subnets', disable=not progress or not archs):
        model = extract_subnet(supernet, arch).eval()
        if calib_data is None:
            notes = UNCALIBRATED_NOTE
            calibration = None
        else:
            used = _calibrate(model, arch, os.fspath(calib_data), calib_batches, calib_batch_size, workers, seed,
                              device, progress)
            model.eval()
            if used < calib_batches:
                say(f'warning: {name}: the calibration data gave only {used} of {calib_batches} batches')
            calibration = {'data': os.fspath(calib_data), 'batches': used, 'batch_size': calib_batch_size,
                           'seed': seed, 'resolution': arch.resolution,
                           'transform': 'RandomResizedCrop(bicubic) + RandomHorizontalFlip + ImageNet mean/std'}
            notes = (f'BatchNorm statistics: calibrated on {used} batches of up to {calib_batch_size} images '
                     f'from `{os.path.basename(os.path.normpath(calib_data))}` (random-resized-crop to '
                     f'{arch.resolution} px, bicubic, + horizontal flip, ImageNet mean/std; seed {seed}), '
                     'as a cumulative average in train mode like the original\'s post-training calibration.')
        notes += f'\n\nConverted from the original checkpoint `{source}` by `alphanet-convert`.'
        path = save_pretrained(model, os.path.join(out_dir, f'alphanet_{name}'), name=f'alphanet_{name}', notes=notes,
                               overwrite=True)
        say(f'wrote {path} ({"calibrated" if calibration else "UNCALIBRATED"} BN statistics)')
        result.subnets[name] = path
        records.append({'name': name, 'dir': os.path.basename(path), 'arch': arch.to_dict(),
                        'calibration': calibration})

    meta = {
        'source': os.path.abspath(checkpoint),
        'config': os.path.abspath(config) if isinstance(config, (str, os.PathLike)) else None,
        'space': space.to_dict(),
        'num_classes': supernet.num_classes,
        'supernet': os.path.basename(supernet_dir),
        'subnets': records,
    }
    result.metadata = os.path.join(out_dir, 'conversion.json')
    with open(result.metadata, 'w') as f:
        json.dump(meta, f, indent=1)
    return result
