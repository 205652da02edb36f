"""What a subnet costs: one walk over its layers (`ops`), analytic MACs/params (`flops`; `slimmable` for width
spaces)."""
from .flops import count_macs_and_params, mflops, num_params
from .ops import BlockOp, Conv, HeadOp, StemOp, subnet_ops
from .slimmable import width_macs_and_params

__all__ = ['BlockOp', 'Conv', 'HeadOp', 'StemOp', 'count_macs_and_params', 'mflops', 'num_params', 'subnet_ops',
           'width_macs_and_params']
