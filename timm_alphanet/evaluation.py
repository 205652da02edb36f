"""Validation on Accelerate: top-1/top-5/loss over the whole (sharded) validation set via `gather_for_metrics`."""
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import accuracy
from tqdm.auto import tqdm

from .calibration import calibrate_bn, resize_to

__all__ = ['evaluate', 'validate_subnets', 'format_table']


@torch.no_grad()
def evaluate(accelerator, model: Callable[[torch.Tensor], torch.Tensor], loader: Iterable,
             resolution: Optional[int] = None, desc: str = 'eval', progress: bool = False) -> Dict[str, float]:
    """Top-1, top-5 (in %) and mean cross-entropy of `model` on `loader` (inputs resized to `resolution`)."""
    if isinstance(model, nn.Module):
        model.eval()
    correct1 = correct5 = loss_sum = 0.0
    count = 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not (progress and accelerator.is_main_process)):
        if resolution is not None:
            x = resize_to(x, resolution)
        with accelerator.autocast():
            out = model(x)
        out, y = accelerator.gather_for_metrics((out.float(), y))
        k = min(5, out.shape[-1])
        top1, top5 = accuracy(out, y, topk=(1, k))
        n = y.shape[0]
        correct1 += top1.item() * n / 100.0
        correct5 += top5.item() * n / 100.0
        loss_sum += F.cross_entropy(out, y, reduction='sum').item()
        count += n
    count = max(count, 1)
    return {'top1': 100.0 * correct1 / count, 'top5': 100.0 * correct5 / count, 'loss': loss_sum / count}


def validate_subnets(accelerator, supernet: nn.Module, archs: List[Tuple[str, object]], calib_loader: Iterable,
                     val_loader: Iterable, calib_batches: int, progress: bool = False) -> Dict[str, Dict[str, float]]:
    """BN-calibrate then evaluate each (name, arch) of the supernet; the active subnet is restored."""
    previous = supernet.active_subnet
    results = {}
    try:
        for name, arch in archs:
            supernet.set_subnet(arch)
            calibrate_bn(supernet, calib_loader, calib_batches, progress=False)
            results[name] = evaluate(accelerator, supernet, val_loader, supernet.active_subnet.resolution,
                                     desc=f'eval {name}', progress=progress)
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
