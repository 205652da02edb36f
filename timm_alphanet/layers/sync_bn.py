"""Synchronised batch statistics for the supernet's dynamic BatchNorm (CPU/gloo as well as GPU).

torch's SyncBatchNorm needs a GPU and would drop the dynamic slicing, so `convert_sync_dynamic_bn` switches
each `DynamicBatchNormAct2d` to a subclass (same parameters and buffers, same state-dict keys) whose
training forward takes the mean and variance over the whole global batch. The statistics are all-reduced
with autograd (``torch.distributed.nn.functional.all_reduce``) on a process group of their own, in two passes
(the mean, then the squared deviations from it) like torch's own BN, so N processes x batch b compute what one
process computes on the N*b batch, up to float rounding.
"""
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn

from .dynamic import DynamicBatchNormAct2d

__all__ = ['SyncDynamicBatchNormAct2d', 'convert_sync_dynamic_bn']


class SyncDynamicBatchNormAct2d(DynamicBatchNormAct2d):
    """`DynamicBatchNormAct2d` whose training statistics are those of the global batch."""
    process_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.enabled and self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32 at least (float64 stays)
        count = torch.full((1,), xf.numel() // c, dtype=xf.dtype, device=xf.device)
        stats = self._all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        # two passes, as torch's BN: E[x^2] - E[x]^2 loses the variance to cancellation when the mean is large next to
        # the spread (a near-constant channel), and the normalised output (and the gradient) with it
        centred = xf - mean.view(1, c, 1, 1)
        var = self._all_reduce((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean[:c].mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var[:c].mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.weight is not None:
            y = y * self.weight[:c].view(1, c, 1, 1) + self.bias[:c].view(1, c, 1, 1)
        return self.act(self.drop(y.to(x.dtype)))

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over the processes, with autograd (the gradient is summed back to every process)."""
        from torch.distributed.nn.functional import all_reduce
        with warnings.catch_warnings():  # deprecated for a private replacement; still the autograd all-reduce
            warnings.simplefilter('ignore', FutureWarning)
            return all_reduce(t, group=self.process_group)


def convert_sync_dynamic_bn(model: nn.Module) -> int:
    """Switch every DynamicBatchNormAct2d of `model` to `SyncDynamicBatchNormAct2d` in place; returns the count.

    Call on every process (it creates a process group when torch.distributed is initialised).
    """
    group = dist.new_group() if dist.is_available() and dist.is_initialized() else None
    n = 0
    for m in model.modules():
        if type(m) is DynamicBatchNormAct2d:
            m.__class__ = SyncDynamicBatchNormAct2d
            m.process_group = group
            n += 1
    return n
