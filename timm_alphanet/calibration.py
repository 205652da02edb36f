"""BatchNorm calibration: recompute every BN's running statistics for the model as it is now configured.

A supernet trained with BN momentum 0 (as AlphaNet is) has no usable running statistics, and a subnet's
statistics differ from the max subnet's, so each subnet is calibrated before evaluation: reset the
statistics, then take the cumulative average of the batch statistics over `num_batches` training
batches in train mode, without gradients.
"""
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ['calibrate_bn', 'resize_to', 'INTERPOLATIONS']

INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'nearest-exact', 'area')


def resize_to(x: torch.Tensor, resolution: int, mode: str = 'bicubic') -> torch.Tensor:
    """`x` resized to `resolution` x `resolution` (`x` itself when it already is), as the original resizes a batch
    for each subnet: `F.interpolate`, align_corners False, no antialiasing."""
    if tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    align_corners = False if mode in ('bicubic', 'bilinear') else None
    return F.interpolate(x, size=(resolution, resolution), mode=mode, align_corners=align_corners, antialias=False)


def _first_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict) and isinstance(batch.get('pixel_values', batch.get('image')), torch.Tensor):
        return batch.get('pixel_values', batch.get('image'))
    raise TypeError(f'calibrate_bn: cannot find the input images in a batch of type {type(batch).__name__}; '
                    'expected a tensor, an (images, ...) tuple, or a dict with "image"/"pixel_values"')


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
    """
    if num_batches < 1:
        raise ValueError(f'num_batches must be >= 1, got {num_batches}')
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        raise ValueError('calibrate_bn: the model has no BatchNorm layer that tracks running statistics')
    if resolution is None and hasattr(model, 'active_subnet'):
        resolution = model.active_subnet.resolution
    device = next(model.parameters()).device
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    used = 0
    try:
        for batch in tqdm(loader, total=num_batches, desc='BN calibration', disable=not progress, leave=False):
            x = _first_tensor(batch).to(device, non_blocking=True)
            if resolution is not None:
                x = resize_to(x, resolution)
            model(x)
            used += 1
            if used >= num_batches:
                break
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    if used == 0:
        raise ValueError('calibrate_bn: the loader yielded no batch')
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        # every process averaged the same number of batches, so the mean of the means is the global average
        for bn in bns:
            for buf in (bn.running_mean, bn.running_var):
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(dist.get_world_size())
    return used
