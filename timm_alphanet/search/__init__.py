"""Supernet search: evolution over a search space (pure), Pareto fronts, and the sharded, resumable runner.

`pareto_front` and the evolution need no torch; `SearchConfig` and `run_search` (torch, Accelerate) load on
first use, so ``timm_alphanet.search.evolution`` stays importable without them.
"""
from .evolution import EvolutionConfig, Limits, evolve
from .pareto import hypervolume, pareto_front

__all__ = ['EvolutionConfig', 'Limits', 'SearchConfig', 'evolve', 'hypervolume', 'pareto_front', 'run_search']


def __getattr__(name: str):
    if name in ('SearchConfig', 'run_search'):
        from . import runner
        return getattr(runner, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
