"""Scoring subnets on the supernet itself (no extraction): costs, top-1 on the selection images, and top-1 of the
final front on the validation split.

A candidate's BN statistics are recalibrated on a fixed, seeded subset of the *training* split (the same images on
every process), then top-1 is counted on a disjoint, seeded held-out subset of the training split. Images are
decoded once and kept as tensors at the largest resolution; a candidate's resolution is reached with `resize_to`,
as in training. Every score is an exact count, so it is the same float on every process and for any world size.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration import calibrate_bn, load_images, resize_to
from ..spaces import SubnetConfig
from .pareto_file import arch_json

__all__ = ['Scorer', 'SubnetCosts', 'validation_top1']


class SubnetCosts:
    """``costs(arch)`` -> ``{'mflops', 'params_m', 'latency_ms'}``: counted once per arch, latency predicted from
    the table (None without one)."""

    def __init__(self, supernet: nn.Module, latency_table: Any = None):
        self.supernet, self.space, self.latency_table = supernet, supernet.space, latency_table
        self._macs_params: Dict[Any, Tuple[int, int]] = {}

    def __call__(self, arch: Any) -> Dict[str, Optional[float]]:
        if arch not in self._macs_params:  # the supernet counts its own head and input channels
            self._macs_params[arch] = self.supernet.macs_and_params(arch)
        macs, params = self._macs_params[arch]
        latency = self.latency_table.predict(arch, self.space) if self.latency_table is not None else None
        return {'mflops': macs / 1e6, 'params_m': params / 1e6, 'latency_ms': latency}


class Scorer:
    """BN-calibrate the supernet for an arch on the calibration images, then count top-1 on the selection images.

    The images stay at the largest resolution; the resized copies of the current resolution are kept, so a process
    that scores its candidates grouped by resolution resizes each set once per group.
    """

    def __init__(self, supernet: nn.Module, calib: torch.Tensor, images: torch.Tensor, targets: torch.Tensor,
                 calib_batch: int, batch_size: int):
        self.supernet, self.calib, self.images, self.targets = supernet, calib, images, targets
        self.calib_batch, self.batch_size = calib_batch, batch_size
        self._resolution, self._calib_at, self._images_at = None, None, None

    @classmethod
    def from_data(cls, supernet: nn.Module, data: Any, calib_idx: Sequence[int], selection_idx: Sequence[int],
                  calib_batch: int, batch_size: int, device: Any, workers: int = 0, progress: bool = False
                  ) -> 'Scorer':
        """Decode the calibration and selection images of `data` (same indices on every process) onto `device`."""
        calib, _ = load_images(data, calib_idx, calib_batch, workers, progress=progress, desc='calibration images')
        images, targets = load_images(data, selection_idx, batch_size, workers, progress=progress,
                                      desc='selection images')
        return cls(supernet, calib.to(device), images.to(device), targets.to(device), calib_batch, batch_size)

    def _images_at_resolution(self, resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if resolution != self._resolution:
            self._calib_at = self._images_at = None  # free the previous resolution first
            self._calib_at, self._images_at = resize_to(self.calib, resolution), resize_to(self.images, resolution)
            self._resolution = resolution
        return self._calib_at, self._images_at

    def calibrate(self, arch: SubnetConfig) -> None:
        """Set the supernet to `arch` with BN statistics of the calibration images."""
        calib, _ = self._images_at_resolution(arch.resolution)
        self.supernet.set_subnet(arch)
        batches = list(calib.split(self.calib_batch))
        # distributed=False: each process calibrates its own candidate; all use the same images
        calibrate_bn(self.supernet, batches, num_batches=len(batches), distributed=False, progress=False)

    @torch.no_grad()
    def top1(self, arch: SubnetConfig) -> float:
        """Top-1 (%) of `arch` on the selection images, after `calibrate`."""
        self.calibrate(arch)
        _, images = self._images_at_resolution(arch.resolution)
        self.supernet.eval()
        correct = 0
        for x, y in zip(images.split(self.batch_size), self.targets.split(self.batch_size)):
            correct += int((self.supernet(x).argmax(-1) == y).sum())
        return 100.0 * correct / len(self.targets)  # an exact count: the same float on every process


def _batchnorms(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def validation_top1(scorer: Scorer, archs: Sequence[SubnetConfig], data: Any, batch_size: int, rank: int = 0,
                    world: int = 1, workers: int = 0, progress: bool = False) -> Dict[SubnetConfig, float]:
    """Top-1 (%) of each arch on the whole of `data`: one pass over the data (sharded by process), every arch with
    its own calibrated BN statistics; integer counts are summed over processes (all must call this)."""
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader, Subset

    model, device, n = scorer.supernet, scorer.images.device, len(data)
    states = {}
    for arch in archs:  # every process calibrates every arch: same images, same statistics
        scorer.calibrate(arch)
        states[arch] = [(m.running_mean.clone(), m.running_var.clone()) for m in _batchnorms(model)]
    model.eval()
    correct = {a: 0 for a in archs}
    loader = DataLoader(Subset(data, range(rank, n, world)), batch_size=batch_size, shuffle=False, num_workers=workers)
    with torch.no_grad():
        for x, y in tqdm(loader, desc='validating the front', leave=False, disable=not progress):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            for arch in archs:
                model.set_subnet(arch)
                for m, (mean, var) in zip(_batchnorms(model), states[arch]):
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
                correct[arch] += int((model(resize_to(x, arch.resolution)).argmax(-1) == y).sum())
    counts = [[arch_json(a), correct[a]] for a in archs]
    totals: Dict[SubnetConfig, int] = {}
    for arch_dict, c in (gather_object(counts) if world > 1 else counts):
        arch = model.space.validate(arch_dict)
        totals[arch] = totals.get(arch, 0) + c
    return {arch: 100.0 * totals[arch] / n for arch in archs}
