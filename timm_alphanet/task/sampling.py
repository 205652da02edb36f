"""Rank-consistent sandwich sampling: the subnets one supernet training step trains.

The sandwich rule (BigNAS/AttentiveNAS/AlphaNet) trains, each step, the largest subnet, some random ones and the
smallest. The random ones come from a `random.Random` keyed by ``(seed, step)`` and nothing else, so every
process of a distributed run picks the same subnets without communicating, the global RNG is never touched, and a
run resumed at step ``n`` continues exactly the sequence it would have trained.
"""
import random
from typing import List

from ..spaces import SearchSpace, SubnetConfig
from ..utils import as_int

__all__ = ['sandwich_subnets']


def sandwich_subnets(space: SearchSpace, num_subnets: int, seed: int, step: int) -> List[SubnetConfig]:
    """The subnets of one sandwich step: ``[max, (num_subnets - 2) random, min]``.

    Args:
        space: The search space to sample from.
        num_subnets: Subnets per step, at least 2 (max and min).
        seed: Run seed; the same on every process.
        step: Step index (any int that every process agrees on, e.g. the global batch index).

    Returns:
        `num_subnets` configs; the first is ``space.max_config()``, the last ``space.min_config()``.
    """
    num_subnets = as_int('num_subnets', num_subnets, 2)  # the max and the min subnet at least
    seed, step = as_int('seed', seed), as_int('step', step)  # numpy/torch integers too (their str differs)
    # a str seed is hashed with SHA-512 by random.Random: stable across processes, platforms and PYTHONHASHSEED
    rng = random.Random(f'{seed}:{step}')
    middle = [space.sample(rng) for _ in range(num_subnets - 2)]
    return [space.max_config(), *middle, space.min_config()]

