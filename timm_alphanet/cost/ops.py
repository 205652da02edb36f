"""The one walk over a subnet's layers, shared by the FLOPs counter and the latency table.

`subnet_ops(arch, space)` lists the subnet as a sequence of ops (stem, one per MBConv block, head), each a
frozen, hashable record of everything that determines its cost: the same op in two subnets is the same key.
Each op lists its convs and linear layers (`Conv`) in the original counter's terms. No torch here.
"""
from dataclasses import dataclass
from typing import List, Tuple, Union

from ..archs import ArchSpec, SpaceSpec, resolve_arch, resolve_space
from ..spaces import BlockSpec

__all__ = ['Conv', 'StemOp', 'BlockOp', 'HeadOp', 'Op', 'subnet_ops', 'conv_out_size']


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Output side of a conv with symmetric padding `kernel // 2` (every conv here)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class Conv:
    """A conv (or a linear layer: kernel 1, out_hw 1) as the original counter sees it."""
    in_chs: int
    out_chs: int
    kernel: int
    out_hw: int
    groups: int = 1
    bias: bool = False
    bn: bool = False

    @property
    def macs(self) -> int:
        return self.weights * self.out_hw * self.out_hw

    @property
    def weights(self) -> int:
        return self.out_chs * (self.in_chs // self.groups) * self.kernel * self.kernel

    @property
    def params(self) -> int:
        return self.weights + (self.out_chs if self.bias else 0) + (2 * self.out_chs if self.bn else 0)


@dataclass(frozen=True)
class StemOp:
    """3x3 conv + BN + act at the input resolution."""
    in_chs: int
    out_chs: int
    in_hw: int
    stride: int
    act: str

    @property
    def out_hw(self) -> int:
        return conv_out_size(self.in_hw, 3, self.stride)

    def convs(self) -> List[Conv]:
        return [Conv(self.in_chs, self.out_chs, 3, self.out_hw, bn=True)]


@dataclass(frozen=True)
class BlockOp:
    """One MBConv block of the given shape on an `in_hw` x `in_hw` input."""
    block: BlockSpec
    in_hw: int

    @property
    def out_hw(self) -> int:
        return conv_out_size(self.in_hw, self.block.kernel_size, self.block.stride)

    def convs(self) -> List[Conv]:
        b, hw = self.block, self.out_hw
        out = []
        if b.expand_ratio != 1:
            out.append(Conv(b.in_chs, b.mid_chs, 1, self.in_hw, bn=True))
        out.append(Conv(b.mid_chs, b.mid_chs, b.kernel_size, hw, groups=b.mid_chs, bn=True))
        if b.se_chs:
            out += [Conv(b.mid_chs, b.se_chs, 1, 1, bias=True), Conv(b.se_chs, b.mid_chs, 1, 1, bias=True)]
        out.append(Conv(b.mid_chs, b.out_chs, 1, hw, bn=True))
        if b.has_shortcut_conv:
            out.append(Conv(b.in_chs, b.out_chs, 1, hw))
        return out


@dataclass(frozen=True)
class HeadOp:
    """1x1 expansion conv + BN + act, global pool, 1x1 conv + act, linear classifier."""
    in_chs: int
    expand_chs: int
    hidden_chs: int
    num_classes: int
    in_hw: int
    act: str

    @property
    def out_hw(self) -> int:
        return 1

    def convs(self) -> List[Conv]:
        out = [Conv(self.in_chs, self.expand_chs, 1, self.in_hw, bn=True),
               Conv(self.expand_chs, self.hidden_chs, 1, 1)]
        if self.num_classes > 0:
            out.append(Conv(self.hidden_chs, self.num_classes, 1, 1, bias=True))
        return out


Op = Union[StemOp, BlockOp, HeadOp]


def subnet_ops(arch: ArchSpec, space: SpaceSpec = None, num_classes: int = 1000, in_chans: int = 3) -> Tuple[Op, ...]:
    """The ops `arch` runs, in order.

    Args:
        arch: anything `resolve_arch` takes (a SubnetConfig, a dict, a name such as 'a3', a JSON/YAML file).
        space: anything `resolve_space` takes (None = the AlphaNet space, a SearchSpace, its dict, a YAML path).
    """
    space = resolve_space(space)
    arch = resolve_arch(arch, space)
    stem = StemOp(in_chans, arch.widths[0], arch.resolution, space.stem_stride, space.stem_act)
    ops: List[Op] = [stem]
    hw = stem.out_hw
    for blocks in space.block_specs(arch):
        for b in blocks:
            ops.append(BlockOp(b, hw))
            hw = ops[-1].out_hw
    last = arch.widths[-2]
    ops.append(HeadOp(last, last * space.head_expand_ratio, arch.widths[-1], num_classes, hw, space.head_act))
    return tuple(ops)
