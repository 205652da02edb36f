from .alphanet import AlphaNet, HF_HUB_ORG, WEIGHTS_HELP
from .supernet import AlphaNetSupernet, SUBNET_KINDS
