from ._supernet import SUBNET_KINDS, Supernet, is_supernet
from .alphanet import AlphaNet, HF_HUB_ORG, WEIGHTS_HELP
from .slimmable_mobilenet import SLIMMABLE_FAMILIES, SlimmableMobileNet
from .supernet import AlphaNetSupernet

__all__ = ['AlphaNet', 'AlphaNetSupernet', 'HF_HUB_ORG', 'SLIMMABLE_FAMILIES', 'SUBNET_KINDS', 'SlimmableMobileNet',
           'Supernet', 'WEIGHTS_HELP', 'is_supernet']
