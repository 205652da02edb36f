"""torch.hub entry points: `torch.hub.load('<this repo>', 'alphanet_a3', pretrained=True)`.

Only the AlphaNet and slimmable MobileNet models are exposed, not timm's whole registry.
"""
dependencies = ['torch', 'timm']

from timm_alphanet.models.alphanet import (  # noqa: E402  (torch.hub reads `dependencies` first)
    alphanet_a0,
    alphanet_a1,
    alphanet_a2,
    alphanet_a3,
    alphanet_a4,
    alphanet_a5_base,
    alphanet_a5_small,
    alphanet_a6,
    alphanet_custom,
)
from timm_alphanet.models.supernet import alphanet_supernet  # noqa: E402
from timm_alphanet.models.slimmable_mobilenet import (  # noqa: E402
    slimmable_mobilenetv1_100,
    slimmable_mobilenetv2_100,
)
