"""A tiny AlphaNet-style space (16/24 px, two stages) and a supernet of it with non-trivial BN statistics."""
import timm
import torch

from . import randomize_bn_stats

__all__ = ['TINY_SPACE', 'tiny_supernet']

TINY_SPACE = {
    'resolutions': [16, 24],
    'first_conv': {'c': [8], 's': 2},
    'mb1': {'c': [8], 'd': [1, 2], 'k': [3], 't': [1], 's': 1},
    'mb2': {'c': [8, 16], 'd': [1, 2], 'k': [3, 5], 't': [2, 3], 's': 2, 'se': True},
    'last_conv': {'c': [24, 32]},
    'head_expand_ratio': 2,
}


def tiny_supernet(num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """`alphanet_supernet` of `TINY_SPACE` with seeded weights and randomised BN statistics, in eval mode."""
    from .. import models  # noqa: F401  (registers alphanet_supernet)

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = timm.create_model('alphanet_supernet', space=TINY_SPACE, num_classes=num_classes)
    randomize_bn_stats(model, torch.Generator().manual_seed(seed))
    return model.eval()
