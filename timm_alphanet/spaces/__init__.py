"""Search spaces and architectures: frozen, hashable, JSON/YAML round trips, explicit RNGs; no torch."""
from .search_space import ACTIVATIONS, BlockSpec, SearchSpace, StageSpace, make_divisible
from .subnet import SubnetConfig

__all__ = ['ACTIVATIONS', 'BlockSpec', 'SearchSpace', 'StageSpace', 'SubnetConfig', 'make_divisible']
