"""timm_alphanet: AlphaNet supernets and alpha-divergence distillation as timm models.

Importing this package registers the ``alphanet_*`` models in timm's registry.
"""
from .archs import ALPHANET_ARCHS, ALPHANET_SPACE, ALPHANET_TOP1
from .bn_calibration import calibrate_bn
from .config import SearchSpace, StageSpace, SubnetConfig
from .distillation import AlphaDistillationTask
from .export import extract_subnet, save_pretrained
from .flops import count_macs_and_params, mflops, num_params
from .loss import AdaptiveAlphaDivergence, AlphaDivergenceOutput, KLDivergence, alpha_divergence
from .models import AlphaNet, AlphaNetSupernet
from .original import load_original_checkpoint
from .sampling import sandwich_subnets
from .sandwich import SandwichTask

__all__ = [
    'ALPHANET_ARCHS', 'ALPHANET_SPACE', 'ALPHANET_TOP1', 'SearchSpace', 'StageSpace', 'SubnetConfig',
    'AlphaNet', 'AlphaNetSupernet', 'mflops', 'num_params', 'count_macs_and_params',
    'extract_subnet', 'save_pretrained', 'calibrate_bn', 'load_original_checkpoint',
    'alpha_divergence', 'AlphaDivergenceOutput', 'AdaptiveAlphaDivergence', 'KLDivergence',
    'AlphaDistillationTask', 'SandwichTask', 'sandwich_subnets',
]
__version__ = '0.1.0'
