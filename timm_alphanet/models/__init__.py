from .alphanet import AlphaNet, HF_HUB_ORG, WEIGHTS_HELP
