"""timm_alphanet: AlphaNet supernets and alpha-divergence distillation as timm models.

Importing this package registers the ``alphanet_*`` models in timm's registry.
"""
from .archs import ALPHANET_ARCHS, ALPHANET_SPACE, ALPHANET_TOP1
from .config import SearchSpace, StageSpace, SubnetConfig
from .flops import count_macs_and_params, mflops, num_params
from .models import AlphaNet

__version__ = '0.1.0'
