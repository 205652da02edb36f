"""Search spaces and architectures: frozen, hashable, JSON/YAML round trips, explicit RNGs; no torch."""
from .protocol import Space
from .search_space import ACTIVATIONS, BlockSpec, SearchSpace, StageSpace, make_divisible
from .subnet import SubnetConfig
from .width import WidthConfig, WidthSpace, check_width, width_range

__all__ = ['ACTIVATIONS', 'BlockSpec', 'SearchSpace', 'Space', 'StageSpace', 'SubnetConfig', 'WidthConfig',
           'WidthSpace', 'check_width', 'make_divisible', 'width_range']
