"""The AlphaNet search space and the eight searched architectures of the paper (arXiv:2102.07954)."""
from typing import Dict

from .spaces import SearchSpace, StageSpace, SubnetConfig

__all__ = ['ALPHANET_SPACE', 'ALPHANET_ARCHS', 'ALPHANET_TOP1']


def _stage(name, widths, depths, ks, ts, stride, se):
    return StageSpace(name, widths, depths, ks, ts, stride=stride, se=se, act='swish')


# `supernet_config` of the original configs/train_alphanet_models.yml
ALPHANET_SPACE = SearchSpace(
    resolutions=(192, 224, 256, 288),
    stem_widths=(16, 24),
    stages=(
        _stage('mb1', (16, 24), (1, 2), (3, 5), (1,), 1, False),
        _stage('mb2', (24, 32), (3, 4, 5), (3, 5), (4, 5, 6), 2, False),
        _stage('mb3', (32, 40), (3, 4, 5, 6), (3, 5), (4, 5, 6), 2, True),
        _stage('mb4', (64, 72), (3, 4, 5, 6), (3, 5), (4, 5, 6), 2, False),
        _stage('mb5', (112, 120, 128), (3, 4, 5, 6, 7, 8), (3, 5), (4, 5, 6), 1, True),
        _stage('mb6', (192, 200, 208, 216), (3, 4, 5, 6, 7, 8), (3, 5), (6,), 2, True),
        _stage('mb7', (216, 224), (1, 2), (3, 5), (6,), 1, True),
    ),
    head_widths=(1792, 1984),
)


def _arch(res, widths, depths, ks, ts) -> SubnetConfig:
    return SubnetConfig(res, widths, depths, ks, ts)


# name -> searched arch (the original configs/eval_alphanet_models.yml)
ALPHANET_ARCHS: Dict[str, SubnetConfig] = {
    'a0': _arch(192, (16, 16, 24, 32, 64, 112, 192, 216, 1792), (1, 3, 3, 3, 3, 3, 1), (3, 3, 3, 3, 3, 3, 3), (1, 4, 4, 4, 4, 6, 6)),
    'a1': _arch(224, (16, 16, 24, 32, 64, 112, 192, 216, 1984), (1, 3, 3, 3, 3, 3, 1), (3, 3, 3, 5, 3, 5, 3), (1, 4, 4, 4, 4, 6, 6)),
    'a2': _arch(224, (16, 16, 24, 32, 64, 112, 200, 224, 1984), (1, 3, 3, 3, 3, 4, 1), (3, 3, 3, 3, 3, 5, 3), (1, 4, 5, 4, 4, 6, 6)),
    'a3': _arch(224, (16, 16, 24, 32, 64, 112, 208, 224, 1984), (2, 3, 3, 4, 3, 5, 1), (3, 3, 3, 5, 3, 3, 3), (1, 4, 4, 4, 4, 6, 6)),
    'a4': _arch(256, (16, 16, 24, 32, 64, 112, 192, 216, 1984), (1, 3, 3, 4, 3, 5, 1), (3, 3, 3, 5, 3, 5, 3), (1, 4, 4, 5, 4, 6, 6)),
    'a5_small': _arch(256, (16, 16, 24, 32, 64, 112, 208, 216, 1984), (1, 3, 3, 4, 4, 5, 1), (3, 3, 3, 3, 3, 5, 3), (1, 4, 4, 5, 4, 6, 6)),
    'a5_base': _arch(288, (16, 16, 24, 32, 64, 112, 200, 216, 1984), (2, 3, 4, 3, 3, 5, 1), (3, 3, 5, 5, 3, 3, 3), (1, 4, 4, 4, 5, 6, 6)),
    'a6': _arch(288, (16, 16, 24, 32, 64, 112, 216, 224, 1984), (1, 3, 3, 4, 4, 6, 1), (3, 3, 3, 3, 3, 5, 3), (1, 4, 6, 5, 4, 6, 6)),
}

# ImageNet top-1 (%) reported in the paper
ALPHANET_TOP1: Dict[str, float] = {
    'a0': 77.87, 'a1': 78.94, 'a2': 79.20, 'a3': 79.41, 'a4': 80.01, 'a5_small': 80.29, 'a5_base': 80.62, 'a6': 80.78,
}
