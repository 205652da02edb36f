"""Validation on Accelerate: top-1/top-5/loss over the whole (sharded) validation set via `gather_for_metrics`.

Two eval pipelines: timm's (the model's `pretrained_cfg`: resize to ``input_size / crop_pct``, centre crop
``input_size``) and the paper's (resize 256 bicubic, centre crop 224, then the 224 crop resized bicubically to the
model's resolution, as the published AlphaNet numbers were measured).
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm.auto import tqdm

from .calibration import calibrate_bn, resize_to

__all__ = ['evaluate', 'validate_subnets', 'format_table', 'PIPELINES', 'paper_transform', 'eval_pipeline',
           'validate_model']

PIPELINES = ('timm', 'paper')


@torch.no_grad()
def evaluate(accelerator, model: Callable[[torch.Tensor], torch.Tensor], loader: Iterable,
             resolution: Optional[int] = None, desc: str = 'eval', progress: bool = False) -> Dict[str, float]:
    """Top-1, top-5 (in %) and mean cross-entropy of `model` on `loader` (inputs resized to `resolution`)."""
    if isinstance(model, nn.Module):
        model.eval()
    # correct top-1, correct top-k and summed loss, kept on the device: read once at the end, not per batch
    totals = None
    count = 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not (progress and accelerator.is_main_process)):
        if resolution is not None:
            x = resize_to(x, resolution)
        with accelerator.autocast():
            out = model(x)
        out, y = accelerator.gather_for_metrics((out.float(), y))
        k = min(5, out.shape[-1])
        hits = out.topk(k, dim=1).indices.eq(y.reshape(-1, 1))
        batch = torch.stack([hits[:, 0].sum().double(), hits.sum().double(),
                             F.cross_entropy(out, y, reduction='sum').double()])
        totals = batch if totals is None else totals + batch
        count += y.shape[0]
    correct1, correct5, loss_sum = totals.tolist() if totals is not None else (0.0, 0.0, 0.0)
    count = max(count, 1)
    return {'top1': 100.0 * correct1 / count, 'top5': 100.0 * correct5 / count, 'loss': loss_sum / count}


def validate_subnets(accelerator, supernet: nn.Module, archs: List[Tuple[str, object]], calib_loader: Iterable,
                     val_loader: Iterable, calib_batches: int, progress: bool = False) -> Dict[str, Dict[str, float]]:
    """BN-calibrate then evaluate each (name, arch) of the supernet; the active subnet is restored.

    An arch listed under several names (e.g. ``min`` and the width it is) is calibrated and evaluated once.
    """
    previous = supernet.active_subnet
    results: Dict[str, Dict[str, float]] = {}
    done: Dict[Any, Dict[str, float]] = {}
    try:
        for name, arch in archs:
            supernet.set_subnet(arch)
            key = supernet.active_subnet  # the validated arch: a hashable frozen config
            if key not in done:
                calibrate_bn(supernet, calib_loader, calib_batches, progress=False)
                done[key] = evaluate(accelerator, supernet, val_loader, key.resolution, desc=f'eval {name}',
                                     progress=progress)
            results[name] = dict(done[key])
    finally:
        supernet.set_subnet(previous)
        supernet.train()
    return results


def format_table(results: Dict[str, Dict[str, float]], extra: Optional[Dict[str, Dict[str, object]]] = None) -> str:
    """A markdown table of per-model results (extra: more columns per row, e.g. MFLOPs)."""
    extra = extra or {}
    extra_cols = sorted({k for v in extra.values() for k in v})
    header = ['model', *extra_cols, 'top1', 'top5', 'loss']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name, r in results.items():
        cols = [str(extra.get(name, {}).get(c, '')) for c in extra_cols]
        lines.append(f"| {name} | " + ''.join(f'{c} | ' for c in cols)
                     + f"{r['top1']:.2f} | {r['top5']:.2f} | {r['loss']:.4f} |")
    return '\n'.join(lines)


def paper_transform(mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                    resize: int = 256, crop: int = 224) -> Callable[[Any], torch.Tensor]:
    """The paper's eval preprocessing of a PIL image: shorter side to `resize` (bicubic), centre crop `crop`, tensor,
    normalise. The resize to the model's resolution happens on the batch (`evaluate(..., resolution=)`)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def eval_pipeline(model: nn.Module, pipeline: str = 'timm') -> Tuple[Callable[[Any], torch.Tensor], Optional[int]]:
    """(image transform, resolution batches are resized to or None) of `pipeline` for `model`.

    ``timm``: timm's eval transform from the model's `pretrained_cfg` (what ``train.py`` validates with);
    ``paper``: `paper_transform` with the model's mean/std, then batches resized to its input size.
    """
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    if pipeline == 'timm':
        return create_transform(**cfg), None
    if pipeline == 'paper':
        return paper_transform(cfg['mean'], cfg['std']), int(cfg['input_size'][-1])
    raise ValueError(f'unknown eval pipeline {str(pipeline)[:40]!r}; allowed: {list(PIPELINES)}')


def validate_model(accelerator, model: nn.Module, dataset: Any, pipeline: str = 'timm', batch_size: int = 64,
                   workers: int = 0, progress: bool = False) -> Dict[str, Any]:
    """Top-1/top-5 (%), mean loss and image count of `model` on `dataset` (its transform is set by `pipeline`).

    The data is sharded over the Accelerator's processes; every process gets the same totals.
    """
    from torch.utils.data import DataLoader

    transform, resolution = eval_pipeline(model, pipeline)
    dataset.transform = transform
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=accelerator.device.type == 'cuda')
    # only the loader is prepared (sharded): an evaluated model needs no DDP wrapper, and `prepare` would keep a
    # reference to it in the Accelerator for the rest of the run
    model = model.to(accelerator.device)
    loader = accelerator.prepare_data_loader(loader)
    result: Dict[str, Any] = evaluate(accelerator, model, loader, resolution=resolution, desc='validate',
                                      progress=progress)
    result['num_images'] = len(dataset)
    result['pipeline'] = pipeline
    return result
