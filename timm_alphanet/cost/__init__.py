"""What a subnet costs: one walk over its layers (`ops`), analytic MACs/params (`flops`; `slimmable` for width
spaces), measured latency (`latency.LatencyTable`, loaded on first use: the models import `flops`, and `latency`
imports the models)."""
from .flops import count_macs_and_params, mflops, num_params
from .ops import BlockOp, Conv, HeadOp, StemOp, subnet_ops
from .slimmable import width_macs_and_params

__all__ = ['BlockOp', 'Conv', 'HeadOp', 'LatencyTable', 'StemOp', 'count_macs_and_params', 'mflops', 'num_params',
           'subnet_ops', 'width_macs_and_params']


def __getattr__(name: str):
    if name == 'LatencyTable':
        from .latency import LatencyTable
        return LatencyTable
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
