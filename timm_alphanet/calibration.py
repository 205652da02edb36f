"""BatchNorm calibration: recompute every BN's running statistics for the model as it is now configured.

A supernet trained with BN momentum 0 (as AlphaNet is) has no usable running statistics, and a subnet's
statistics differ from the max subnet's, so each subnet is calibrated before evaluation: reset the
statistics, then take the cumulative average of the batch statistics over `num_batches` training
batches in train mode, without gradients.
"""
import math
import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm.auto import tqdm

from .utils import as_int

__all__ = ['calibrate_bn', 'resize_to', 'INTERPOLATIONS', 'CalibrationRecipe', 'disjoint_subsets', 'load_images',
           'mean_std_of', 'recipe_for', 'calibration_images', 'calibrate_with_recipe', 'fit_recipe']

INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'nearest-exact', 'area')


def resize_to(x: torch.Tensor, resolution: int, mode: str = 'bicubic') -> torch.Tensor:
    """`x` resized to `resolution` x `resolution` (`x` itself when it already is), as the original resizes a batch
    for each subnet: `F.interpolate`, align_corners False, no antialiasing."""
    if tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    align_corners = False if mode in ('bicubic', 'bilinear') else None
    return F.interpolate(x, size=(resolution, resolution), mode=mode, align_corners=align_corners, antialias=False)


@dataclass(frozen=True)
class CalibrationRecipe:
    """Deterministic, recorded BN calibration: which images, in which batches, transformed how.

    The images are `num_images` indices of the `split`, drawn by `disjoint_subsets` with `seed` (the same on every
    process and every run, so one arch always gets the same statistics); they are transformed with the eval
    transform (resize shorter side to ``image_size / crop_pct``, centre crop `image_size`, `mean`/`std`) and fed in
    order, `batch_size` at a time, each batch resized to the subnet's resolution with `resize_to`. The statistics are
    the cumulative average of the per-batch statistics (`calibrate_bn`). Written into pareto.json and model cards.
    """
    split: str = 'train'
    num_images: int = 2048
    batch_size: int = 256
    seed: int = 0
    image_size: int = 224
    interpolation: str = 'bicubic'
    crop_pct: float = 0.875
    mean: Tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: Tuple[float, ...] = IMAGENET_DEFAULT_STD

    def __post_init__(self) -> None:
        for name in ('num_images', 'batch_size', 'image_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'calibration {name} must be a positive integer, got {value!r:.40}')
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f'calibration seed must be an integer, got {self.seed!r:.40}')
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            raise ValueError(f'calibration crop_pct must be in (0, 1], got {self.crop_pct!r:.40}')
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f'calibration interpolation {self.interpolation!r:.40} not allowed; allowed: '
                             f'{list(INTERPOLATIONS)}')
        object.__setattr__(self, 'mean', tuple(float(v) for v in self.mean))
        object.__setattr__(self, 'std', tuple(float(v) for v in self.std))

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def transform(self) -> Any:
        """timm's eval transform this recipe names (resize to ``image_size / crop_pct``, centre crop, normalise)."""
        from timm.data import create_transform
        return create_transform((3, self.image_size, self.image_size), is_training=False,
                                interpolation=self.interpolation, crop_pct=self.crop_pct, mean=self.mean, std=self.std)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'CalibrationRecipe':
        """Inverse of `to_dict`; unknown keys are an error (a typo would silently change the recipe)."""
        if not isinstance(d, Mapping):
            raise ValueError(f'a calibration recipe must be a mapping, got {type(d).__name__}')
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(str(k)[:40] for k in d if k not in allowed)
        if unknown:
            raise ValueError(f'unknown calibration recipe keys {unknown[:10]}; allowed: {allowed}')
        return cls(**d)


def mean_std_of(model: Optional[nn.Module]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The normalisation `model` expects: its pretrained_cfg's mean and std, else timm's ImageNet defaults."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean = cfg.get('mean') or IMAGENET_DEFAULT_MEAN
    std = cfg.get('std') or IMAGENET_DEFAULT_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def recipe_for(model: nn.Module, **fields: Any) -> CalibrationRecipe:
    """The `CalibrationRecipe` with `fields` (None values count as not given) for `model`, the rest from the model.

    Unset, the preprocessing is the model's own eval preprocessing (its pretrained_cfg's interpolation, crop_pct and
    `mean_std_of`; the recipe's defaults where it names none) and the image size is a supernet's largest resolution,
    else the model's input size. Every command that calibrates (export, convert, search) starts from here, so the
    same model and flags give the same recipe.

    Raises:
        ValueError: an unknown field, or a value the recipe refuses (naming it and what is allowed).
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    resolutions = getattr(getattr(model, 'space', None), 'resolutions', None)
    if resolutions:
        image_size = max(resolutions)
    elif cfg.get('input_size'):
        image_size = int(cfg['input_size'][-1])
    else:
        image_size = CalibrationRecipe.image_size
    mean, std = mean_std_of(model)
    defaults = {'image_size': image_size, 'interpolation': cfg.get('interpolation') or CalibrationRecipe.interpolation,
                'crop_pct': cfg.get('crop_pct') or CalibrationRecipe.crop_pct, 'mean': mean, 'std': std}
    return CalibrationRecipe.from_dict({**defaults, **{k: v for k, v in fields.items() if v is not None}})


def disjoint_subsets(num_items: int, counts: Sequence[int], seed: int) -> List[List[int]]:
    """Disjoint index lists of the given sizes from ``range(num_items)``, drawn with `random.Random(seed)`.

    Subset ``i`` is the next ``counts[i]`` entries of one seeded permutation, so the subsets never overlap, and a
    subset depends only on (num_items, seed, the counts before it): never on the process or the run.
    """
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError(f'subset sizes must be >= 0, got {counts}')
    if sum(counts) > num_items:
        # one count reads as "too few for 2048 images", several as their sum ("8 + 5 = 13 disjoint images")
        wanted = f'{counts[0]} images' if len(counts) == 1 else \
            f'{" + ".join(map(str, counts))} = {sum(counts)} disjoint images'
        raise ValueError(f'the split has {num_items} images, too few for {wanted}; ask for at most {num_items} '
                         'in all or use a larger split')
    order = list(range(num_items))
    random.Random(seed).shuffle(order)
    out, start = [], 0
    for c in counts:
        out.append(order[start:start + c])
        start += c
    return out


def load_images(dataset: Any, indices: Sequence[int], batch_size: int = 256, workers: int = 0,
                progress: bool = True, desc: str = 'loading images') -> Tuple[torch.Tensor, torch.Tensor]:
    """Decode and transform ``dataset[i]`` for `indices` once; returns (images, targets) stacked, in index order.

    `dataset` yields (image tensor, target) with its transform set; keeping the result as tensors lets every
    candidate of a search (or every subnet of an export) reuse the same decoded images.
    """
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=workers)
    xs, ys = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    if not xs:
        raise ValueError('load_images: no indices given')
    return torch.cat(xs), torch.cat(ys)


def _first_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict) and isinstance(batch.get('pixel_values', batch.get('image')), torch.Tensor):
        return batch.get('pixel_values', batch.get('image'))
    raise TypeError(f'calibrate_bn: cannot find the input images in a batch of type {type(batch).__name__}; '
                    'expected a tensor, an (images, ...) tuple, or a dict with "image"/"pixel_values"')


def _images(batch: Any, in_chans: Optional[int]) -> torch.Tensor:
    """The batch's images, checked to be a float (batch, in_chans, H, W) tensor."""
    x = _first_tensor(batch)
    if not x.is_floating_point() or x.dim() != 4 or (in_chans is not None and x.shape[1] != in_chans):
        channels = 'C' if in_chans is None else in_chans
        raise ValueError(f'calibrate_bn: expected float images of shape (batch, {channels}, H, W), got a '
                         f'{x.dtype} tensor of shape {tuple(x.shape)}')
    return x


_BN_STATE = ('running_mean', 'running_var', 'num_batches_tracked')
_END = object()


@torch.no_grad()
def calibrate_bn(
        model: nn.Module,
        loader: Iterable[Any],
        num_batches: int = 64,
        resolution: Optional[int] = None,
        distributed: Optional[bool] = None,
        progress: bool = True,
) -> int:
    """Recompute the running statistics of every BatchNorm in `model` from `num_batches` batches of `loader`.

    All or nothing: the arguments and the first batch are checked before any statistic is touched, and if anything
    fails later (a bad batch, a loader error, an interrupt, NaN/inf statistics) the previous statistics are put
    back before the error propagates.

    Args:
        model: a static model, or a supernet configured for one subnet (its active slices are calibrated).
        loader: yields image tensors, (images, targets) tuples or dicts with 'image'/'pixel_values'.
        num_batches: batches to average (fewer if the loader runs out).
        resolution: resize inputs (bicubic) to this size; default: a supernet's active subnet resolution,
            otherwise the inputs as they come.
        distributed: average the statistics across processes; default: when torch.distributed is initialised.
        progress: show a progress bar.

    Returns:
        The number of batches used. The model's train/eval mode is restored.

    Raises:
        ValueError: `num_batches` < 1, a model without BatchNorm, an empty loader, images of the wrong shape or
            dtype, or statistics that came out NaN/inf.
        TypeError: a batch without recognisable images.
    """
    num_batches = as_int('num_batches', num_batches, 1)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        raise ValueError('calibrate_bn: the model has no BatchNorm layer that tracks running statistics')
    if resolution is None and hasattr(model, 'active_subnet'):
        resolution = model.active_subnet.resolution
    in_chans = getattr(model, 'in_chans', None)
    device = next(model.parameters()).device
    batches = iter(loader)
    try:
        first = _images(next(batches), in_chans)
    except StopIteration:
        raise ValueError('calibrate_bn: the loader yielded no batch') from None
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    saved = [{name: getattr(bn, name).clone() for name in _BN_STATE} for bn in bns]
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    total = min(num_batches, len(loader)) if hasattr(loader, '__len__') else num_batches
    used = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
        model.train()
        with tqdm(total=total, desc='BN calibration', disable=not progress, leave=False) as bar:
            x = first
            while True:
                x = x.to(device, non_blocking=True)
                for bn in bns:
                    # the cumulative average over the batches: what momentum=None computes, but BN would read its
                    # batch counter from the device for that (a host sync per layer per batch)
                    bn.momentum = 1.0 / (used + 1)
                model(resize_to(x, resolution) if resolution is not None else x)
                used += 1
                bar.update(1)
                batch = next(batches, _END) if used < num_batches else _END
                if batch is _END:  # enough batches, or the loader ran out: average what it gave
                    break
                x = _images(batch, in_chans)
    except BaseException:
        _restore(bns, saved)
        raise
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    try:
        buffers = [buf for bn in bns for buf in (bn.running_mean, bn.running_var)]
        if distributed:
            # every process averaged the same number of batches, so the mean of the means is the global average;
            # one all-reduce of all the statistics, not two per layer
            flat = torch.cat([buf.reshape(-1) for buf in buffers])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(dist.get_world_size())
            torch._foreach_copy_(buffers, list(flat.split([buf.numel() for buf in buffers])))
        finite = torch.stack([torch.isfinite(buf).all() for buf in buffers]).view(len(bns), 2).all(1)
        bad = [] if bool(finite.all()) else [i for i, ok in enumerate(finite.tolist()) if not ok]
        if bad:
            raise ValueError(f'calibrate_bn: {len(bad)} of {len(bns)} BatchNorm layers got NaN/inf statistics (do '
                             f'the images hold NaN/inf?); the previous statistics are kept')
    except BaseException:
        _restore(bns, saved)
        raise
    return used


def _restore(bns: List[nn.modules.batchnorm._BatchNorm], saved: List[Dict[str, torch.Tensor]]) -> None:
    for bn, state in zip(bns, saved):
        for name, value in state.items():
            getattr(bn, name).copy_(value)


def calibration_images(dataset: Any, recipe: CalibrationRecipe, workers: int = 0, progress: bool = True
                       ) -> torch.Tensor:
    """The recipe's calibration images of `dataset` (the recipe's split), decoded once, in the recipe's order.

    The indices are the first of `disjoint_subsets(len(dataset), [num_images, ...], seed)`, so they are the images
    the search calibrated with; the dataset's transform is set to `recipe.transform()`.
    """
    available = len(dataset)
    if recipe.num_images > available:
        raise ValueError(f'the calibration recipe asks for {recipe.num_images} images of split {recipe.split!r}, '
                         f'which has only {available}; ask for {available} or fewer (--calib-images {available})')
    dataset.transform = recipe.transform()
    indices = disjoint_subsets(available, [recipe.num_images], recipe.seed)[0]
    images, _ = load_images(dataset, indices, batch_size=recipe.batch_size, workers=workers, progress=progress,
                            desc='calibration images')
    return images


def fit_recipe(recipe: CalibrationRecipe, num_available: int) -> CalibrationRecipe:
    """`recipe` with at most `num_available` images: a default image count larger than a small split (the demo's
    1442 training images) becomes the whole split, so the default recipe fits the data it is given.

    Only for counts nobody asked for: an explicit count that does not fit is refused by `calibration_images`.
    """
    num_available = as_int('num_available', num_available, 1)
    return recipe if recipe.num_images <= num_available else replace(recipe, num_images=num_available)


def calibrate_with_recipe(model: torch.nn.Module, images: torch.Tensor, recipe: CalibrationRecipe,
                          resolution: int) -> int:
    """Calibrate `model`'s BN on `images` in the recipe's batches, each resized to `resolution`; returns batches."""
    device = next(model.parameters()).device
    batches = [b.to(device) for b in images.split(recipe.batch_size)]
    return calibrate_bn(model, batches, num_batches=len(batches), resolution=resolution, distributed=False,
                        progress=False)
