"""Pareto fronts over top-1 and costs: non-dominated sorting, crowding distance, hypervolume (plain Python). The
pareto.json file is `pareto_file`'s, its report and plot `pareto_report`'s.

A *record* is a mapping with the metric keys (``top1``, ``mflops``, ``params_m``, ``latency_ms``) and usually an
``arch``: the evolution's records, the points of a pareto.json and the lines of a candidates.jsonl all are.
Objectives are named by the user (``top1``, ``mflops``, ``params``, ``latency``); top-1 is maximised, the costs
minimised. pymoo has the same algorithms, but not as a dependency worth adding for ~100 lines.
"""
import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

__all__ = ['OBJECTIVES', 'check_objectives', 'objective_vector', 'dominates', 'non_dominated_sort',
           'crowding_distance', 'pareto_front', 'hypervolume']

# objective name -> (record key, 'max' | 'min')
OBJECTIVES: Dict[str, Tuple[str, str]] = {
    'top1': ('top1', 'max'), 'mflops': ('mflops', 'min'), 'params': ('params_m', 'min'),
    'latency': ('latency_ms', 'min'),
}


def check_objectives(objectives: Sequence[str]) -> Tuple[str, ...]:
    """`objectives` as a tuple, checked: known names, no repeats, ``top1`` and at least one cost."""
    if isinstance(objectives, str):
        objectives = [o.strip() for o in objectives.split(',')]
    out = tuple(objectives)
    unknown = [o for o in out if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f'unknown objective {str(unknown[0])[:40]!r}; allowed: {list(OBJECTIVES)}')
    if len(set(out)) != len(out):
        raise ValueError(f'objectives repeat a name: {list(out)}')
    if 'top1' not in out or len(out) < 2:
        raise ValueError(f'objectives must include top1 and at least one cost ({list(OBJECTIVES)[1:]}), got {list(out)}')
    return out


def objective_vector(record: Mapping[str, Any], objectives: Sequence[str]) -> Tuple[float, ...]:
    """The record's objectives, all as values to minimise (top-1 negated)."""
    out = []
    for name in objectives:
        key, sense = OBJECTIVES[name]
        value = record.get(key)
        if value is None or not math.isfinite(value):
            raise ValueError(f'record has no finite {key!r} for objective {name!r}: {value!r:.40}')
        out.append(-float(value) if sense == 'max' else float(value))
    return tuple(out)


def dominates(u: Sequence[float], v: Sequence[float]) -> bool:
    """Whether `u` is at least as good as `v` everywhere and better somewhere (minimisation)."""
    return all(a <= b for a, b in zip(u, v)) and any(a < b for a, b in zip(u, v))


def non_dominated_sort(vectors: Sequence[Sequence[float]]) -> List[List[int]]:
    """Indices of `vectors` grouped into fronts: front 0 is non-dominated, front k is dominated only by fronts < k
    (NSGA-II's fast non-dominated sort). Within a front, indices keep their input order."""
    n = len(vectors)
    dominated_by = [[] for _ in range(n)]  # i -> indices i dominates
    count = [0] * n  # how many dominate i
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(vectors[i], vectors[j]):
                dominated_by[i].append(j)
                count[j] += 1
            elif dominates(vectors[j], vectors[i]):
                dominated_by[j].append(i)
                count[i] += 1
    fronts, current = [], [i for i in range(n) if count[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        current = sorted(nxt)
    return fronts


def crowding_distance(vectors: Sequence[Sequence[float]], front: Sequence[int]) -> Dict[int, float]:
    """NSGA-II crowding distance of each index of `front`: the extremes of every objective get infinity, so a
    selection that prefers large distances keeps the whole range of the front covered."""
    dist = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for m in range(len(vectors[front[0]])):
        order = sorted(front, key=lambda i: (vectors[i][m], i))
        lo, hi = vectors[order[0]][m], vectors[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, b, c in zip(order, order[1:], order[2:]):
            dist[b] += (vectors[c][m] - vectors[a][m]) / (hi - lo)
    return dist


def pareto_front(records: Sequence[Mapping[str, Any]], objectives: Sequence[str] = ('top1', 'mflops')
                 ) -> List[Mapping[str, Any]]:
    """The non-dominated records over `objectives`, sorted by the first cost (then by top-1, best first).

    Args:
        records: mappings with the metric keys (e.g. pareto.json points or candidates.jsonl lines).
        objectives: names from ``OBJECTIVES``; ``top1`` is maximised, the others minimised.
    """
    objectives = check_objectives(objectives)
    records = list(records)
    if not records:
        return []
    vectors = [objective_vector(r, objectives) for r in records]
    front = non_dominated_sort(vectors)[0]
    first_cost = next(i for i, o in enumerate(objectives) if o != 'top1')
    top = objectives.index('top1')
    front.sort(key=lambda i: (vectors[i][first_cost], vectors[i][top], i))
    return [records[i] for i in front]


def hypervolume(vectors: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by `vectors` (minimisation) and bounded by `reference`; points not strictly better than
    the reference in every objective add nothing. Exact, by slicing along the last objective."""
    ref = tuple(float(r) for r in reference)
    pts = [tuple(float(x) for x in p) for p in vectors if all(x < r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            volume += (upper - p[-1]) * hypervolume([q[:-1] for q in pts[:i + 1]], ref[:-1])
    return volume
