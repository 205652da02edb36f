"""Multi-objective evolutionary search over a `SearchSpace`: pure Python, the evaluation is injected.

Any space with the `SearchSpace` interface works (validate, min/max_config, sample, mutate, crossover, archs with
`to_dict`): the AlphaNet space and slimmable width spaces. The population is ranked as NSGA-II ranks it (non-dominated fronts, then crowding distance), so the parents
cover the whole accuracy/cost trade-off instead of the best model per FLOPs bin. Children are half uniform
crossovers of random parents and half mutations (`SearchSpace.mutate`), drawn only within the hard limits; an arch
is never evaluated twice. Everything random comes from ``random.Random(config.seed)``, so equal seeds and equal
scores give identical searches, and a resumed search that replays cached scores retraces the same steps.
"""
import logging
import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..spaces import SearchSpace, SubnetConfig
from .pareto import check_objectives, crowding_distance, non_dominated_sort, objective_vector, pareto_front

__all__ = ['Limits', 'EvolutionConfig', 'EvolutionResult', 'Generation', 'arch_key', 'check_limits',
           'check_search_size', 'evolve', 'MAX_POPULATION', 'MAX_GENERATIONS', 'MAX_EVALUATIONS']

# Bounds on the size of a search, so that a mistyped --population (10**9) is refused at once instead of drawing
# sample_tries x population random archs and holding every one in memory. Every evaluated subnet stays in the
# archive (and its costs in a cache) for the whole search, about RECORD_BYTES each; the default search is
# 100 x 21 = 2100 evaluations, and each takes a forward of the selection images, so a million is days of GPU time.
MAX_POPULATION = 100_000
MAX_GENERATIONS = 100_000
MAX_EVALUATIONS = 1_000_000  # population x (generations + 1): at most ~2 GB of records
RECORD_BYTES = 2_000  # per evaluated subnet: tracemalloc shows ~1.1 KB for an AlphaNet arch (its SubnetConfig
# ~0.5 KB, its archive record and cost-cache entry ~0.6 KB), rounded up for the rest the search keeps

_log = logging.getLogger(__name__)

Costs = Dict[str, Optional[float]]  # mflops, params_m, latency_ms (None: not measured)
Record = Dict[str, Any]  # arch + top1 + costs + generation


def arch_key(arch: Any) -> Tuple[Any, ...]:
    """A total order on the archs of one space (ties in every objective are broken by it, so runs are
    reproducible): their fields in name order, lists as tuples. Works for any arch type with `to_dict`."""
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(arch.to_dict().items()))


def _number(name: str, value: Any, lo: float, hi: float = math.inf, integer: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi
    if not ok or (integer and not isinstance(value, int)):
        what = 'an integer' if integer else 'a number'
        upper = '' if hi == math.inf else f' and <= {hi}'
        raise ValueError(f'{name} must be {what} >= {lo}{upper}, got {value!r:.40}')


@dataclass(frozen=True)
class Limits:
    """Hard limits: a subnet outside them is never evaluated (None = no limit)."""
    mflops_min: Optional[float] = None
    mflops_max: Optional[float] = None
    max_params_m: Optional[float] = None
    max_latency_ms: Optional[float] = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                _number(f.name, value, 0.0)
        if self.mflops_min is not None and self.mflops_max is not None and self.mflops_min > self.mflops_max:
            raise ValueError(f'MFLOPs limits {self.mflops_min}:{self.mflops_max}: the minimum exceeds the maximum')

    def bounds(self) -> Dict[str, Tuple[float, float]]:
        """Cost key -> (low, high) for the limits that are set."""
        out = {}
        if self.mflops_min is not None or self.mflops_max is not None:
            out['mflops'] = (self.mflops_min or 0.0, math.inf if self.mflops_max is None else self.mflops_max)
        if self.max_params_m is not None:
            out['params_m'] = (0.0, self.max_params_m)
        if self.max_latency_ms is not None:
            out['latency_ms'] = (0.0, self.max_latency_ms)
        return out

    def admits(self, costs: Mapping[str, Optional[float]]) -> bool:
        for key, (lo, hi) in self.bounds().items():
            value = costs.get(key)
            if value is None:
                raise ValueError(f'a {key} limit is set but the cost model gives no {key}')
            if not lo <= value <= hi:
                return False
        return True

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvolutionConfig:
    """Search parameters; the defaults are once-for-all's (population 100, 25 % parents, half the children by
    mutation with p 0.1 per gene and 0.5 for the resolution, half by crossover) with 20 generations.

    Args:
        population: subnets per generation (generation 0 is the initial random population).
        parents: fraction of the population kept as parents (at least 2).
        mutate_prob: per-gene mutation probability.
        resolution_mutate_prob: mutation probability of the resolution gene.
        crossover: fraction of the children made by crossover (the rest by mutation).
        generations: generations of children after the initial population.
        seed: seed of the one `random.Random` every draw comes from.
        sample_tries: random draws allowed per wanted subnet before giving up (bounds every sampling loop).
        max_enumerate: a space of at most this many archs is listed in full when random draws find too few
            initial subnets within the limits (narrow limits in a small space).
        predictor_keep: fraction of the children evaluated when a pre-ranker is given (the best predicted).
    """
    population: int = 100
    parents: float = 0.25
    mutate_prob: float = 0.1
    resolution_mutate_prob: float = 0.5
    crossover: float = 0.5
    generations: int = 20
    seed: int = 0
    sample_tries: int = 100
    max_enumerate: int = 100_000
    predictor_keep: float = 1.0

    def __post_init__(self) -> None:
        _number('population', self.population, 3, integer=True)
        if self.population > MAX_POPULATION:
            raise ValueError(f'population {self.population} is over the limit of {MAX_POPULATION} (MAX_POPULATION)')
        _number('parents', self.parents, 0.0, 1.0)
        _number('mutate_prob', self.mutate_prob, 0.0, 1.0)
        _number('resolution_mutate_prob', self.resolution_mutate_prob, 0.0, 1.0)
        _number('crossover', self.crossover, 0.0, 1.0)
        _number('generations', self.generations, 0, integer=True)
        if self.generations > MAX_GENERATIONS:
            raise ValueError(f'generations {self.generations} is over the limit of {MAX_GENERATIONS} '
                             '(MAX_GENERATIONS)')
        evaluations = self.population * (self.generations + 1)
        if evaluations > MAX_EVALUATIONS:
            raise ValueError(f'population {self.population} x {self.generations + 1} generations (the initial one '
                             f'included) = {evaluations} subnets to evaluate, over the limit of {MAX_EVALUATIONS} '
                             f'(MAX_EVALUATIONS: ~{MAX_EVALUATIONS * RECORD_BYTES / 1e9:.0f} GB of records held '
                             'in memory, and a forward of the selection images each)')
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f'seed must be an integer, got {self.seed!r:.40}')
        _number('sample_tries', self.sample_tries, 1, integer=True)
        _number('max_enumerate', self.max_enumerate, 0, integer=True)
        _number('predictor_keep', self.predictor_keep, 0.0, 1.0)
        if self.predictor_keep == 0:
            raise ValueError('predictor_keep must be > 0 (some children must be evaluated)')
        if self.num_parents >= self.population:
            raise ValueError(f'parents {self.parents} of a population of {self.population} leaves no room for children')

    @property
    def num_parents(self) -> int:
        return max(2, round(self.population * self.parents))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    """What `on_generation` sees after each generation."""
    index: int
    evaluated: List[SubnetConfig]  # archs evaluated in this generation, in order
    population: List[Record]
    archive: Dict[SubnetConfig, Record]  # every evaluated arch
    front: List[Record]


@dataclass
class EvolutionResult:
    front: List[Record]
    archive: Dict[SubnetConfig, Record]
    generations: int

    @property
    def evaluations(self) -> int:
        return len(self.archive)


def check_search_size(space: Any, config: EvolutionConfig) -> None:
    """Refuse a population larger than the space: it can never be filled with distinct subnets, and drawing for it
    costs ``sample_tries`` draws per missing subnet. (`EvolutionConfig` bounds the population and the number of
    evaluations by themselves.)"""
    size = getattr(space, 'size', None)
    if isinstance(size, int) and config.population > size:
        raise ValueError(f'population {config.population} is over the limit of the space\'s size: it has only '
                         f'{size} distinct subnets')


def check_limits(space: SearchSpace, limits: Limits, costs: Callable[[SubnetConfig], Costs]) -> None:
    """Refuse limits that exclude even the space's extremes, naming the range the space spans."""
    low, high = costs(space.min_config()), costs(space.max_config())
    names = {'mflops': 'MFLOPs', 'params_m': 'M params', 'latency_ms': 'ms latency'}
    for key, (lo, hi) in limits.bounds().items():
        a, b = sorted((low[key], high[key]))
        if hi < a or lo > b:
            shown = f'[{lo:g}, {hi:g}]' if key == 'mflops' else f'<= {hi:g}'
            raise ValueError(f'{key} limit {shown} excludes every subnet: this space spans {a:.4g} (smallest subnet) '
                             f'to {b:.4g} (largest subnet) {names[key]}')


def evolve(
        space: SearchSpace,
        evaluate: Callable[[List[SubnetConfig], int], Sequence[float]],
        costs: Callable[[SubnetConfig], Costs],
        config: EvolutionConfig = EvolutionConfig(),
        limits: Limits = Limits(),
        objectives: Sequence[str] = ('top1', 'mflops'),
        on_generation: Optional[Callable[[Generation], None]] = None,
        prerank: Optional[Callable[[List[SubnetConfig], List[Record]], List[SubnetConfig]]] = None,
) -> EvolutionResult:
    """Evolve a Pareto front of `space` over `objectives` within `limits`.

    Args:
        space: the search space.
        evaluate: ``evaluate(archs, generation) -> top-1 per arch``; called once per generation with archs never
            passed before (a runner shards them across processes and caches them).
        costs: ``costs(arch) -> {'mflops', 'params_m', 'latency_ms'}`` (cheap, analytic or from a table).
        config: population, parents, mutation, crossover, generations, seed.
        limits: hard limits on the costs.
        objectives: ``top1`` plus one or more of ``mflops``, ``params``, ``latency``.
        on_generation: called after every generation (writing results, progress).
        prerank: optional ``prerank(children, archive records) -> children, best first``; only the first
            ``config.predictor_keep`` of each generation's children are then evaluated.

    Returns:
        The non-dominated front of every evaluated subnet, and the archive of all of them.

    Raises:
        ValueError: limits that no subnet of the space meets (naming the space's range), or no subnet found
            within the limits in the allowed number of random draws.
    """
    objectives = check_objectives(objectives)
    check_search_size(space, config)
    if 'latency' in objectives and costs(space.min_config()).get('latency_ms') is None:
        raise ValueError('the latency objective needs a latency table (the cost model gives no latency_ms)')
    cost_cache: Dict[SubnetConfig, Costs] = {}

    def cost_of(arch: SubnetConfig) -> Costs:
        if arch not in cost_cache:
            cost_cache[arch] = dict(costs(arch))
        return cost_cache[arch]

    check_limits(space, limits, cost_of)
    rng = random.Random(config.seed)
    archive: Dict[SubnetConfig, Record] = {}

    def admissible(arch: SubnetConfig, taken: Mapping[SubnetConfig, Any]) -> bool:
        return arch not in archive and arch not in taken and limits.admits(cost_of(arch))

    def run(index: int, archs: List[SubnetConfig]) -> List[Record]:
        scores = list(evaluate(list(archs), index)) if archs else []
        if len(scores) != len(archs):
            raise ValueError(f'evaluate returned {len(scores)} scores for {len(archs)} archs')
        for arch, score in zip(archs, scores):
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ValueError(f'evaluate returned a non-finite score {score!r:.40} for {arch}')
            archive[arch] = {'arch': arch, 'top1': float(score), **cost_of(arch), 'generation': index}
        return [archive[a] for a in archs]

    def report(index: int, evaluated: List[SubnetConfig], population: List[Record]) -> None:
        if on_generation is not None:
            on_generation(Generation(index, evaluated, population, archive,
                                     pareto_front(list(archive.values()), objectives)))

    # generation 0: the space's extremes where they fit, then random subnets within the limits
    initial: Dict[SubnetConfig, None] = {}
    for arch in (space.min_config(), space.max_config()):
        if len(initial) < config.population and admissible(arch, initial):
            initial[arch] = None
    tries = config.sample_tries * config.population
    for _ in range(tries):
        if len(initial) >= config.population:
            break
        arch = space.sample(rng)
        if admissible(arch, initial):
            initial[arch] = None
    if len(initial) < config.population and getattr(space, 'size', math.inf) <= config.max_enumerate:
        # narrow limits in a small space: random draws can miss the few subnets inside; listing them all cannot
        found = [a for a in space.enumerate_configs() if admissible(a, initial)]
        rng.shuffle(found)
        initial.update(dict.fromkeys(found[:config.population - len(initial)]))
    if not initial:
        raise ValueError(f'found no subnet within the limits {limits.bounds()} in {tries} random draws; '
                         'widen the limits')
    if len(initial) < config.population:
        _log.warning('initial population: %d distinct subnets within the limits in %d draws (population %d)',
                     len(initial), tries, config.population)
    population = run(0, list(initial))
    report(0, list(initial), population)

    for index in range(1, config.generations + 1):
        parents = _select(population, config.num_parents, objectives)
        children = _children(space, [p['arch'] for p in parents], config, rng, admissible)
        if prerank is not None and children:
            ranked = prerank(list(children), list(archive.values()))
            if sorted(map(arch_key, ranked)) != sorted(map(arch_key, children)):
                raise ValueError('prerank must return a reordering of the children it was given')
            children = ranked[:max(1, math.ceil(len(ranked) * config.predictor_keep))]
        population = parents + run(index, children)
        report(index, children, population)
    return EvolutionResult(pareto_front(list(archive.values()), objectives), archive, config.generations)


def _select(records: List[Record], k: int, objectives: Sequence[str]) -> List[Record]:
    """The `k` best records: lower non-dominated front first, then larger crowding distance, then arch order."""
    vectors = [objective_vector(r, objectives) for r in records]
    order = []
    for front in non_dominated_sort(vectors):
        crowd = crowding_distance(vectors, front)
        order += sorted(front, key=lambda i: (-crowd[i], arch_key(records[i]['arch'])))
        if len(order) >= k:
            break
    return [records[i] for i in order[:k]]


def _children(space: SearchSpace, parents: List[SubnetConfig], config: EvolutionConfig, rng: random.Random,
              admissible: Callable[[SubnetConfig, Mapping[SubnetConfig, Any]], bool]) -> List[SubnetConfig]:
    """New admissible, never-evaluated children: crossovers, then mutations for the rest (bounded tries each).

    Once the parents agree on most genes their crossovers repeat known archs; mutations then fill the gap.
    """
    wanted = config.population - len(parents)
    n_cross = round(wanted * config.crossover) if len(set(parents)) > 1 else 0
    out: Dict[SubnetConfig, None] = {}
    for kind, goal in (('crossover', n_cross), ('mutate', wanted)):
        for _ in range(config.sample_tries * max(goal - len(out), 0)):
            if len(out) >= goal:
                break
            if kind == 'mutate':
                child = space.mutate(rng.choice(parents), rng, config.mutate_prob, config.resolution_mutate_prob)
            else:
                a, b = rng.sample(parents, 2)
                child = space.crossover(a, b, rng)
            if admissible(child, out):
                out[child] = None
    if len(out) < wanted:
        _log.warning('%d of %d children found within the limits in the allowed tries: the space near the parents '
                     'is exhausted', len(out), wanted)
    return list(out)
