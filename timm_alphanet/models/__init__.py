from ._supernet import Supernet, is_supernet
from .alphanet import AlphaNet, HF_HUB_ORG, WEIGHTS_HELP
from .supernet import AlphaNetSupernet, SUBNET_KINDS

__all__ = ['AlphaNet', 'AlphaNetSupernet', 'HF_HUB_ORG', 'SUBNET_KINDS', 'Supernet', 'WEIGHTS_HELP', 'is_supernet']
