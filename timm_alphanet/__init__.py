"""timm_alphanet: AlphaNet supernets and alpha-divergence distillation as timm models.

Importing this package registers the ``alphanet_*`` models in timm's registry.
"""
from .archs import ALPHANET_ARCHS, ALPHANET_SPACE, ALPHANET_TOP1
from .calibration import calibrate_bn
from .cost import count_macs_and_params, mflops, num_params
from .export import extract_subnet, save_pretrained
from .loss import AdaptiveAlphaDivergence, AlphaDivergenceOutput, KLDivergence, alpha_divergence
from .models import AlphaNet, AlphaNetSupernet
from .original import load_original_checkpoint
from .spaces import SearchSpace, StageSpace, SubnetConfig
from .task import AlphaDistillationTask, SandwichTask, sandwich_subnets

__all__ = [
    'ALPHANET_ARCHS', 'ALPHANET_SPACE', 'ALPHANET_TOP1', 'SearchSpace', 'StageSpace', 'SubnetConfig',
    'AlphaNet', 'AlphaNetSupernet', 'mflops', 'num_params', 'count_macs_and_params',
    'extract_subnet', 'save_pretrained', 'calibrate_bn', 'load_original_checkpoint',
    'alpha_divergence', 'AlphaDivergenceOutput', 'AdaptiveAlphaDivergence', 'KLDivergence',
    'AlphaDistillationTask', 'SandwichTask', 'sandwich_subnets',
]
__version__ = '0.1.0'
