"""What a subnet costs: one walk over its layers (`ops`), analytic MACs/params (`flops`)."""
from .flops import count_macs_and_params, mflops, num_params
from .ops import BlockOp, Conv, HeadOp, StemOp, subnet_ops

__all__ = ['BlockOp', 'Conv', 'HeadOp', 'StemOp', 'count_macs_and_params', 'mflops', 'num_params', 'subnet_ops']
