"""Synchronised batch statistics for the supernet's dynamic BatchNorm (CPU/gloo as well as GPU).

torch's SyncBatchNorm needs a GPU and would drop the dynamic slicing, so `convert_sync_dynamic_bn` switches
each `DynamicBatchNormAct2d` to a subclass (same parameters and buffers, same state-dict keys) whose
training forward takes the mean and variance over the whole global batch, so N processes x batch b compute what one
process computes on the N*b batch, up to float rounding. Without an initialised process group of more than one
process (and in eval mode) it is `DynamicBatchNormAct2d`.

One all-reduce per layer and forward, one in backward (torch's SyncBatchNorm does the same):

- forward: each process sums its slice around its own mean m (exact centring, no communication), shifts the two
  sums to a per-channel K in float64, ``[sum(x-K), sum((x-K)**2)]``, and all-reduces them with the count in ONE
  tensor. K must be the same on every process without communicating: the layer's ``running_mean`` (updated only from
  all-reduced means, and broadcast by DDP; it stays 0 under the paper's BN momentum 0), 0 without running statistics.
  The variance ``E[(x-K)**2] - E[x-K]**2`` then cancels only ``(mean - K)**2``, in float64: exact to float32
  rounding unless the mean is more than about 1e4 standard deviations from K (at 1e6, a fresh layer on a channel
  like 1e4 +- 1e-2, about 1e-4 relative; torch's own float32 BN is 5e-2 off in the normalised output there). The
  output is ``(x - m) - (mean - m)``, two small terms, so a large mean costs no float32 precision either.
  Statistics are float32 at least, float64 inputs stay float64.
- backward: the two per-channel sums of the gradient (``sum(g)``, ``sum(g * (x - mean))``) are all-reduced, which is
  what makes the gradient that of the global loss on every process (the sum over the processes of their losses).
  This is a hand-written backward rather than autograd through ``torch.distributed.nn.functional.all_reduce``: the
  same single backward all-reduce, but autograd of the ~20 per-channel ops around it doubled the layer's local CPU
  time; the float64 tests check it against autograd of one process on the global batch to 1e-12.

Process group: the default one (``process_group=None``), as torch's SyncBatchNorm does under DDP. DDP's gradient
all-reduces and these are then issued on one communicator, in the same program order on every process (the same
subnet builds the same graph everywhere); a second group (``dist.new_group()``) adds a second NCCL communicator whose
kernels run concurrently with DDP's and can deadlock when processes reach them in different interleavings.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .dynamic import DynamicBatchNormAct2d

__all__ = ['SyncDynamicBatchNormAct2d', 'convert_sync_dynamic_bn']


class _SyncBatchNorm(torch.autograd.Function):
    """Batch normalisation over the global batch: one all-reduce in forward (shifted sums), one in backward (the
    gradient's two per-channel sums, summed back to every process)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                shift: torch.Tensor, eps: float, group: Optional['dist.ProcessGroup']) -> Tuple[torch.Tensor, ...]:
        """Returns the normalised output, and (not differentiable) the global mean, variance and count."""
        c = x.shape[1]
        n = x.numel() // c
        f64 = torch.float64
        m = x.mean((0, 2, 3)) if n else x.new_zeros(c)  # the local shift: exact centring, whatever the mean
        xc = x - m.view(1, c, 1, 1)
        s1, s2 = xc.sum((0, 2, 3)).to(f64), (xc * xc).sum((0, 2, 3)).to(f64)
        u = m.to(f64) - shift  # m - K
        # shifted to K in float64: sum(x-K) = s1 + n*u, sum((x-K)**2) = s2 + 2*u*s1 + n*u**2
        stats = torch.cat([s1 + n * u, s2 + u * (2 * s1 + n * u), u.new_full((1,), float(n))])
        dist.all_reduce(stats, group=group)
        total = stats[-1]
        d = stats[:c] / total  # global mean - K
        var = (stats[c:2 * c] / total - d * d).clamp_min(0)  # cancels only ~(mean-K)**2, in float64
        delta = (d - u).to(x.dtype)  # global mean - m: small, so (x - m) - delta keeps float32 precision
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        scale = invstd if weight is None else invstd * weight
        offset = -delta * scale if bias is None else torch.addcmul(bias, delta, scale, value=-1)
        y = (xc * scale.view(1, c, 1, 1)).add_(offset.view(1, c, 1, 1))  # on CPU 2x faster than a broadcast addcmul
        ctx.save_for_backward(xc, weight, delta, invstd, total)
        ctx.group = group
        mean = shift + d
        ctx.mark_non_differentiable(mean, var, total)
        return y, mean, var, total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor, *_) -> Tuple[Optional[torch.Tensor], ...]:
        xc, weight, delta, invstd, total = ctx.saved_tensors
        c = xc.shape[1]
        sum_g = grad.sum((0, 2, 3))
        sum_gc = (grad * xc).sum((0, 2, 3)) - delta * sum_g  # local sum of grad * (x - global mean)
        gx = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_g, sum_gc])
            dist.all_reduce(sums, group=ctx.group)  # the loss is the sum over the processes
            n = total.to(xc.dtype)
            mean_g, mean_gc = sums[:c] / n, sums[c:] / n
            a = invstd if weight is None else invstd * weight
            k = invstd * invstd * mean_gc
            # a * (grad - mean_g - (xc - delta) * k)
            gx = (grad * a.view(1, c, 1, 1)).add_(xc * (-k * a).view(1, c, 1, 1))
            gx.add_(((delta * k - mean_g) * a).view(1, c, 1, 1))
        gw = sum_gc * invstd if weight is not None and ctx.needs_input_grad[1] else None
        gb = sum_g if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None


class SyncDynamicBatchNormAct2d(DynamicBatchNormAct2d):
    """`DynamicBatchNormAct2d` whose training statistics are those of the global batch (one all-reduce each way)."""
    process_group: Optional['dist.ProcessGroup'] = None  # None: the default group

    def _synced(self) -> bool:
        return (self.enabled and self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._synced():
            return super().forward(x)
        c = x.shape[1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        weight = self.weight[:c] if self.weight is not None else None
        bias = self.bias[:c] if self.bias is not None else None
        y, mean, var, total = _SyncBatchNorm.apply(xf, weight, bias, self._shift(c, xf.device), self.eps,
                                                   self.process_group)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                mom = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp_min(1))
                self.running_mean[:c].mul_(1 - mom).add_(mean.to(self.running_mean.dtype), alpha=mom)
                self.running_var[:c].mul_(1 - mom).add_(unbiased.to(self.running_var.dtype), alpha=mom)
        return self.act(self.drop(y.to(x.dtype)))

    def _shift(self, c: int, device: torch.device) -> torch.Tensor:
        """K in float64: the same on every process without communicating (the synced running mean; 0 without)."""
        if not self.track_running_stats or self.running_mean is None:
            return torch.zeros(c, dtype=torch.float64, device=device)
        k = self.running_mean[:c].detach().to(torch.float64)
        return torch.where(torch.isfinite(k), k, torch.zeros_like(k))  # a diverged buffer must not poison the batch


def convert_sync_dynamic_bn(model: nn.Module, process_group: Optional['dist.ProcessGroup'] = None) -> int:
    """Switch every DynamicBatchNormAct2d of `model` to `SyncDynamicBatchNormAct2d` in place; returns the count.

    Statistics go over `process_group` (default: the default group, which DDP uses too; see the module docstring).
    """
    n = 0
    for m in model.modules():
        if type(m) is DynamicBatchNormAct2d:
            m.__class__ = SyncDynamicBatchNormAct2d
            m.process_group = process_group
            n += 1
    return n
