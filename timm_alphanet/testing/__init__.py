"""Helpers shared by the tests and the benchmarks: independent references, original-format checkpoints, BN noise.

Nothing in the library imports this package.
"""
import torch

__all__ = ['randomize_bn_stats']


def randomize_bn_stats(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every BN non-trivial statistics and affine params, so slicing/ordering bugs cannot hide."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
