"""Optional accuracy predictor: pre-rank a generation's children so fewer of them are evaluated.

A scikit-learn regressor on a one-hot encoding of the arch (one block of columns per gene, one column per allowed
choice), trained on every score measured so far. Children are ranked by where their *predicted* top-1 (with their
exact costs) would fall among the measured subnets: lower non-dominated front first, then larger crowding
distance. Only the best-ranked fraction is evaluated, so every Pareto point is still measured, never predicted.
"""
import random
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from ..spaces import SearchSpace, SubnetConfig
from ..utils import import_optional
from .evolution import Record, arch_key
from .pareto import crowding_distance, non_dominated_sort, objective_vector

__all__ = ['encode', 'AccuracyPredictor', 'rank_children', 'make_prerank', 'MIN_TRAIN']

MIN_TRAIN = 20  # below this many scores the predictor is not trusted: children keep their order


def encode(space: SearchSpace, archs: Sequence[SubnetConfig]) -> np.ndarray:
    """One-hot matrix (len(archs) x total choices): per gene, a 1 in the column of its value."""
    width = sum(len(choices) for _, choices in space._genes(space.min_config()))
    out = np.zeros((len(archs), width), dtype=np.float32)
    for row, arch in enumerate(archs):
        col = 0
        for value, choices in space._genes(arch):
            out[row, col + choices.index(value)] = 1.0
            col += len(choices)
    return out


class AccuracyPredictor:
    """Top-1 from the arch: scikit-learn's GradientBoostingRegressor on the one-hot encoding (deterministic for a
    seed; a small MLP ranked held-out archs no better in our trials and is slower to fit)."""

    def __init__(self, space: SearchSpace, seed: int = 0):
        ensemble = import_optional('sklearn.ensemble', 'the accuracy predictor (--predictor)')
        self.space = space
        self.model = ensemble.GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8,
                                               random_state=seed)

    def fit(self, archs: Sequence[SubnetConfig], top1: Sequence[float]) -> 'AccuracyPredictor':
        self.model.fit(encode(self.space, archs), np.asarray(top1, dtype=np.float64))
        return self

    def predict(self, archs: Sequence[SubnetConfig]) -> List[float]:
        return [float(v) for v in self.model.predict(encode(self.space, archs))]


def rank_children(children: List[SubnetConfig], predicted: Sequence[float], records: Sequence[Record],
                  objectives: Sequence[str], costs: Callable[[SubnetConfig], Dict[str, Any]]) -> List[SubnetConfig]:
    """`children` best first: by the non-dominated front their predicted records reach among the measured ones,
    then by crowding distance, then by arch order."""
    pool = [*({**costs(a), 'top1': p, 'arch': a} for a, p in zip(children, predicted)), *records]
    vectors = [objective_vector(r, objectives) for r in pool]
    rank, crowd = {}, {}
    for level, front in enumerate(non_dominated_sort(vectors)):
        crowd.update(crowding_distance(vectors, front))
        rank.update((i, level) for i in front)
    order = sorted(range(len(children)), key=lambda i: (rank[i], -crowd[i], arch_key(children[i])))
    return [children[i] for i in order]


def make_prerank(space: SearchSpace, objectives: Sequence[str], costs: Callable[[SubnetConfig], Dict[str, Any]],
                 seed: int = 0, main: bool = True, world: int = 1
                 ) -> Callable[[List[SubnetConfig], List[Record]], List[SubnetConfig]]:
    """The `evolve` pre-ranking hook. With several processes the main process fits and ranks, and broadcasts the
    order, so every process continues the evolution with the same children."""

    def prerank(children: List[SubnetConfig], records: List[Record]) -> List[SubnetConfig]:
        if len(records) < MIN_TRAIN:
            return children
        order: List[Any] = [None]
        if main:
            # shuffle with a seed so the booster's row subsampling does not depend on the archive's order
            train = sorted(records, key=lambda r: arch_key(r['arch']))
            random.Random(seed).shuffle(train)
            model = AccuracyPredictor(space, seed).fit([r['arch'] for r in train], [r['top1'] for r in train])
            ranked = rank_children(children, model.predict(children), records, objectives, costs)
            order[0] = [children.index(a) for a in ranked]
        if world > 1:
            from accelerate.utils import broadcast_object_list
            broadcast_object_list(order)
        return [children[i] for i in order[0]]
    return prerank
