"""Elastic layers of the supernet: static layers stored at max size, sliced to the active size in forward.

Each subclasses the static layer it generalises (nn.Conv2d, timm's BatchNormAct2d / SEModule / Linear),
so its state-dict keys and shapes are those of the largest static layer, and extracting a subnet is a
generic crop of tensors. Input width comes from `x.shape[1]`; output width and kernel size are plain
attributes written only by the supernet's `set_subnet`. A conv or BN whose `enabled` is False passes its input
through unchanged: that is how a block's optional layers (the expansion conv at expand ratio 1, a shortcut conv
when the active widths agree) switch off without a second block forward.
"""

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, Linear, SEModule

__all__ = ['DynamicConv2d', 'DynamicBatchNormAct2d', 'DynamicSqueezeExcite', 'DynamicLinear', 'compile_norm_act']


class DynamicConv2d(nn.Conv2d):
    """Conv2d (dense or depthwise) whose out-width and (centre-cropped) kernel are chosen per subnet.

    Takes nn.Conv2d's arguments; a depthwise conv is one built with `groups == in_channels == out_channels`.
    Padding is always `k // 2` of the active kernel, as in the original. A dense conv takes the input's width
    from the input (a leading slice of its weight) unless `elastic_in` is False (the stem: its input is the image,
    whose channel count is fixed, so a wrong one must fail rather than silently use a slice).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.bias is not None:
            raise ValueError('DynamicConv2d has no bias (no AlphaNet conv has one); pass bias=False')
        self.depthwise = self.groups > 1
        if self.depthwise and not (self.groups == self.in_channels == self.out_channels):
            raise ValueError('DynamicConv2d supports dense or depthwise convs only, got '
                             f'groups={self.groups}, in={self.in_channels}, out={self.out_channels}')
        self.active_out_channels = self.out_channels
        self.active_kernel_size = self.kernel_size[0]
        self.elastic_in = True
        self.enabled = True

    def active_weight(self, in_chs: int) -> torch.Tensor:
        """The weight slice used for an input of `in_chs` channels (also the weight of the extracted layer)."""
        k = self.active_kernel_size
        s = (self.kernel_size[0] - k) // 2  # centre crop of the largest kernel
        if self.depthwise:
            return self.weight[:in_chs, :, s:s + k, s:s + k]
        return self.weight[:self.active_out_channels, :in_chs, s:s + k, s:s + k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        in_chs = x.shape[1] if self.elastic_in else self.in_channels
        k = self.active_kernel_size
        return F.conv2d(x, self.active_weight(in_chs), None, self.stride, k // 2, self.dilation,
                        in_chs if self.depthwise else 1)


class DynamicBatchNormAct2d(BatchNormAct2d):
    """BatchNormAct2d whose statistics and affine parameters are sliced to the input width.

    The slices are views, so running-stat updates in train mode write through to the stored buffers.
    `momentum=None` gives a cumulative average, as used by BN calibration. `enabled=False` passes the input through.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.enabled = True
        self.compiled = ''  # the key of `compile_norm_act`'s shared function ('': eager)

    @classmethod
    def convert(cls, bn: BatchNormAct2d) -> 'DynamicBatchNormAct2d':
        """`bn` made this class in place: the very same parameters and buffers (so keys and values stay), plus the
        plain attributes this class adds."""
        bn.__class__ = cls
        bn.enabled = True
        bn.compiled = ''
        return bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        c = x.shape[1]
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        # locals: torchscript refines Optional types of locals only
        mean, var, weight, bias = self.running_mean, self.running_var, self.weight, self.bias
        use_batch_stats = self.training or mean is None
        track = not self.training or self.track_running_stats
        mean = mean[:c] if track and mean is not None else None
        var = var[:c] if track and var is not None else None
        weight = weight[:c] if weight is not None else None
        bias = bias[:c] if bias is not None else None
        # compiled: training steps only (calibration sets a new momentum per batch, a graph each; evaluation has no
        # backward to fuse)
        if self.compiled and torch.is_grad_enabled() and self.momentum is not None and not torch.jit.is_scripting():
            return self._compiled_forward(x, mean, var, weight, bias, use_batch_stats, momentum)
        x = F.batch_norm(x, mean, var, weight, bias, use_batch_stats, momentum, self.eps)
        x = self.drop(x)
        return self.act(x)

    @torch.jit.unused
    def _compiled_forward(self, x: torch.Tensor, mean: Optional[torch.Tensor], var: Optional[torch.Tensor],
                          weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], use_batch_stats: bool,
                          momentum: float) -> torch.Tensor:
        return _COMPILED[self.compiled](x, mean, var, weight, bias, use_batch_stats, momentum, self.eps, self.drop,
                                        self.act)


class DynamicSqueezeExcite(SEModule):
    """SEModule whose channel width follows the input and whose reduction width is set per subnet."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.active_rd_channels = self.fc1.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, rd = x.shape[1], self.active_rd_channels
        b1, b2 = self.fc1.bias, self.fc2.bias
        x_se = x.mean((2, 3), keepdim=True)
        x_se = F.conv2d(x_se, self.fc1.weight[:rd, :c], b1[:rd] if b1 is not None else None)
        x_se = self.act(self.bn(x_se))
        x_se = F.conv2d(x_se, self.fc2.weight[:c, :rd], b2[:c] if b2 is not None else None)
        return x * self.gate(x_se)


class DynamicLinear(Linear):
    """Linear layer whose input width follows the input (the classifier after an elastic head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, :x.shape[-1]], self.bias)


def _norm_act(x: torch.Tensor, mean: Optional[torch.Tensor], var: Optional[torch.Tensor],
              weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], use_batch_stats: bool, momentum: float,
              eps: float, drop: nn.Module, act: nn.Module) -> torch.Tensor:
    return act(drop(F.batch_norm(x, mean, var, weight, bias, use_batch_stats, momentum, eps)))


# one compiled function per (backend, mode), shared by every layer: dynamo keys its graphs by code and guards, not by
# layer, so all layers of a kind share them
_COMPILED: Dict[str, Callable] = {}


def compile_norm_act(model: nn.Module, backend: str = 'inductor', mode: Optional[str] = None) -> int:
    """Compile the BN + activation of every `DynamicBatchNormAct2d` in `model` (in place); returns how many.

    A supernet cannot be compiled whole: every subnet has other widths, kernels, depths and resolution, so dynamo
    compiles a graph per subnet (hours for a space). BN + activation are what compiling fuses (the convolutions
    stay library calls), and as one function of sliced tensors with dynamic shapes they compile to a bounded set of
    graphs for the whole space: one per (activation, dropout, train/eval, momentum) kind, whatever the widths and
    resolution. Forwards without gradient (BN calibration, whose momentum changes every batch, and evaluation) and
    a cumulative average (momentum None) run eagerly.
    """
    key = f'{backend}/{mode}'
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_norm_act, backend=backend, mode=mode, dynamic=True)
    count = 0
    for m in model.modules():
        # a subclass with a forward of its own (sync BN: its all-reduces) stays eager
        if isinstance(m, DynamicBatchNormAct2d) and type(m).forward is DynamicBatchNormAct2d.forward:
            m.compiled = key
            count += 1
    return count
