"""pareto.json: the file `alphanet-search` writes its front to, and `alphanet-export` and ``--resume`` read. Its
format tag, schema, writer, bounded reader and resume fingerprint live here and nowhere else. Plain Python, no
torch: the two domain types a reader needs (the search space and the calibration recipe) come from the caller.

The document is one JSON object:

- ``format``: ``FORMAT`` (``<name>/<version>``); a reader refuses versions it does not know.
- the header, everything that decides the scores (`pareto_header`): ``supernet`` (spec, kind, path, sha256 of its
  weights), ``dataset``, ``space`` (the space's ``to_dict``), ``num_classes``, ``objectives``, ``limits``,
  ``search`` (evolution parameters and ``predictor``), ``calibration`` (the BN recipe), ``selection`` (the
  held-out training images that score candidates), ``validation`` (split and size, or null) and ``latency`` (the
  latency table's source, device and sha256, or null);
- ``progress`` (`progress_record`): generations done and planned, subnets evaluated, complete; null before the
  first generation;
- ``points`` (`front_point`): the front, each with ``arch`` (AlphaNet archs in the original keys), ``mflops``,
  ``params_m``, ``latency_ms``, ``latency_device``, ``top1`` (selection images), ``top1_ci`` (since version 2:
  ``[low, high]``, the 95 % Wilson score interval of ``top1`` on the selection images, `top1_interval`) and
  ``top1_val`` (the validation split, or null);
- ``intervals`` (since version 2): what ``top1_ci`` is, in words and numbers.

Readers ignore unknown keys, so additions within a version do not break them. Version 1 files (no ``top1_ci``) are
read with ``top1_ci`` None.
"""
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..utils import bounded_repr, display_path, parse_json, read_bounded_bytes, write_atomic

__all__ = ['FORMAT', 'FORMAT_NAME', 'FORMAT_VERSION', 'READABLE_VERSIONS', 'PARETO_JSON', 'MAX_PARETO_BYTES',
           'MAX_PARETO_NODES', 'arch_json', 'device_text', 'latency_record', 'pareto_header', 'progress_record',
           'front_point', 'point_numbers', 'check_top1', 'TOP1_RANGE', 'pareto_document', 'dumps', 'write_pareto',
           'CONFIDENCE', 'wilson_interval', 'top1_interval', 'unseparated_neighbours',
           'format_version', 'ParetoFile',
           'read_pareto_file', 'resume_fingerprint', 'fingerprint_differences', 'check_resume', 'ParetoPoint',
           'ParetoFront', 'read_pareto', 'select_points']

FORMAT_NAME = 'timm_alphanet.pareto'
FORMAT_VERSION = 2  # the version this package writes; 2 added the points' top1_ci
FORMAT = f'{FORMAT_NAME}/{FORMAT_VERSION}'
READABLE_VERSIONS = (1, 2)
PARETO_JSON = 'pareto.json'
MAX_PARETO_BYTES = 64 << 20
MAX_PARETO_NODES = 4_000_000  # JSON values; a front of a few hundred points has ~20 000
_SHA256 = re.compile(r'^[0-9a-f]{64}$')
TOP1_RANGE = (0.0, 100.0)  # top-1 in %, on the selection images (top1) and on the validation split (top1_val)
CONFIDENCE = 0.95
_Z = 1.959963984540054  # the standard normal's 0.975 quantile: a two-sided 95 % interval
MAX_INTERVAL_IMAGES = 1 << 40  # a bound on the image count an interval is computed for, far above any data set


# ---- uncertainty of a top-1
def wilson_interval(successes: int, trials: int, z: float = _Z) -> Tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``successes / trials``, as fractions in [0, 1].

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at 0 or `trials` successes, which is
    where the best subnets of a small selection set sit.

    Raises:
        ValueError: `trials` not in [1, MAX_INTERVAL_IMAGES], `successes` not in [0, trials], or `z` not positive.
    """
    for name, value, low, high in (('trials', trials, 1, MAX_INTERVAL_IMAGES), ('successes', successes, 0, trials)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f'wilson_interval: {name} must be an integer in [{low}, {high}], got '
                             f'{bounded_repr(value)}')
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 < z < math.inf:
        raise ValueError(f'wilson_interval: z must be a positive number, got {bounded_repr(z)}')
    p, n, z2 = successes / trials, trials, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)  # rounding may step outside by an ulp


def top1_interval(top1: float, num_images: int) -> Tuple[float, float]:
    """The 95 % Wilson interval (low, high), in %, of a top-1 (%) measured on `num_images` images: the count of
    correct images is recovered from the percentage (scores are ``100 * correct / num_images``).

    Raises:
        ValueError: a top-1 outside [0, 100] or a bad image count.
    """
    top1 = check_top1(top1, 'top1_interval: top1')
    low, high = wilson_interval(round(top1 * num_images / 100), num_images)
    return 100.0 * low, 100.0 * high


def unseparated_neighbours(points: Sequence[Mapping[str, Any]], cost: str = 'mflops') -> List[Tuple[int, int]]:
    """Index pairs (i, j) of front points that are neighbours along `cost` and whose ``top1_ci`` intervals
    overlap: the selection images cannot tell which of the two is more accurate. Points without an interval or the
    cost are skipped."""
    shown = sorted((p[cost], i) for i, p in enumerate(points)
                   if p.get(cost) is not None and p.get('top1_ci') is not None)
    pairs = []
    for (_, i), (_, j) in zip(shown, shown[1:]):
        (lo_i, hi_i), (lo_j, hi_j) = points[i]['top1_ci'], points[j]['top1_ci']
        if lo_i <= hi_j and lo_j <= hi_i:
            pairs.append((i, j))
    return pairs


# ---- the schema (writing)
def arch_json(arch: Any) -> Dict[str, Any]:
    """An arch as pareto.json and candidates.jsonl hold it: AlphaNet archs with the original keys, others with
    their own ``to_dict``."""
    return arch.to_original_dict() if hasattr(arch, 'to_original_dict') else arch.to_dict()


def device_text(device: Mapping[str, Any]) -> str:
    """A latency table's device record as one line (a point's ``latency_device``)."""
    return (f'{device["type"]} {device["name"]}, {device["threads"]} threads, {device["dtype"]}, '
            f'{device["memory_format"]}, batch {device["batch_size"]}')


def latency_record(table: Mapping[str, Any], source: Any, device: Mapping[str, Any]) -> Dict[str, Any]:
    """The header's ``latency``: where the table came from, its device, and the sha256 of its content (`table`:
    the table's ``to_dict``), so a resume with an edited table is refused."""
    digest = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()
    return {'source': source, 'device': device, 'sha256': digest}


def pareto_header(*, supernet: Mapping[str, Any], dataset: Optional[str], space: Mapping[str, Any], num_classes: int,
                  objectives: Sequence[str], limits: Mapping[str, Any], search: Mapping[str, Any],
                  calibration: Mapping[str, Any], selection_images: int, batch_size: int,
                  validation: Optional[Tuple[str, int]], latency: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """pareto.json without progress and points: the supernet, the space and everything that decides the scores.

    Args:
        supernet: its record (spec, kind, path, sha256 of the weights).
        dataset: what the data is, for the record and model cards.
        space: the search space's ``to_dict``.
        num_classes: the supernet's classes.
        objectives: objective names.
        limits: the hard limits' ``to_dict``.
        search: the evolution's ``to_dict`` plus ``predictor``.
        calibration: the BN calibration recipe's ``to_dict`` (its split and seed also draw the selection images).
        selection_images: held-out training images that score candidates, disjoint from the calibration ones.
        batch_size: images per forward when scoring.
        validation: (split, number of images) of the final measurement, or None.
        latency: `latency_record` of the latency table, or None.
    """
    return {
        'format': FORMAT,
        'supernet': dict(supernet), 'dataset': dataset, 'space': dict(space), 'num_classes': num_classes,
        'objectives': list(objectives), 'limits': dict(limits), 'search': dict(search),
        'calibration': dict(calibration),
        'selection': {'split': calibration['split'], 'num_images': selection_images, 'seed': calibration['seed'],
                      'disjoint_from': 'calibration', 'batch_size': batch_size, 'metric': 'top-1 %'},
        'validation': None if validation is None else {'split': validation[0], 'num_images': validation[1]},
        'latency': None if latency is None else dict(latency),
        # not part of the resume fingerprint: it describes the points, it does not change them
        'intervals': {'top1_ci': f'{CONFIDENCE:.0%} Wilson score interval of top1 (a binomial proportion) on the '
                                 f'{selection_images} selection images', 'confidence': CONFIDENCE,
                      'num_images': selection_images},
    }


def progress_record(generations_done: int, generations: int, evaluated: int, complete: bool) -> Dict[str, Any]:
    """The document's ``progress``."""
    return {'generations_done': generations_done, 'generations': generations, 'evaluated': evaluated,
            'complete': complete}


def front_point(record: Mapping[str, Any], top1_val: Optional[float], latency_device: Optional[str],
                selection_images: Optional[int] = None) -> Dict[str, Any]:
    """One of the document's ``points`` from an evolution record (arch, top1, mflops, params_m, latency_ms), with
    ``top1_ci``, the 95 % Wilson interval of top1 on the `selection_images` images it was scored on (None: unknown).

    Raises:
        ValueError: a number the reader would refuse (`point_numbers`): a top-1 outside [0, 100], a negative or
            non-finite cost.
    """
    point = {'arch': arch_json(record['arch']), 'mflops': record['mflops'], 'params_m': record['params_m'],
             'latency_ms': record['latency_ms'], 'latency_device': latency_device, 'top1': record['top1'],
             'top1_ci': None, 'top1_val': top1_val}
    if selection_images is not None and record['top1'] is not None:
        point['top1_ci'] = list(top1_interval(record['top1'], selection_images))
    point_numbers(point, f'front point {bounded_repr(point["arch"])}')
    return point


def pareto_document(header: Mapping[str, Any], points: Sequence[Mapping[str, Any]],
                    progress: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The whole document: the header, then progress and points."""
    return {**header, 'progress': None if progress is None else dict(progress), 'points': [dict(p) for p in points]}


def dumps(doc: Mapping[str, Any]) -> str:
    """The document as the file holds it (indented, one trailing newline)."""
    return json.dumps(doc, indent=1) + '\n'


def write_pareto(path: Union[str, os.PathLike], doc: Mapping[str, Any]) -> None:
    """Write the document atomically: a reader (export, a resume) never sees half a file.

    Raises:
        ValueError: a point whose numbers `read_pareto` would refuse (`point_numbers`); nothing is written.
    """
    for i, p in enumerate(doc.get('points') or ()):
        point_numbers(p, f'{display_path(path)}: point {i}')
    write_atomic(path, dumps(doc))


# ---- reading
def format_version(value: Any) -> Optional[int]:
    """The version of a ``format`` field: ``FORMAT`` itself or the bare version integer -> the version; else None."""
    prefix = FORMAT_NAME + '/'
    if isinstance(value, str) and value.startswith(prefix) and value[len(prefix):].isdigit():
        return int(value[len(prefix):])
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


@dataclass(frozen=True)
class ParetoFile:
    """A pareto.json read within bounds, with a format version this package reads."""
    path: str
    document: Dict[str, Any]
    version: int
    sha256: str  # of the very bytes parsed


def read_pareto_file(path: Union[str, os.PathLike]) -> ParetoFile:
    """Read a pareto.json: at most ``MAX_PARETO_BYTES`` bytes and ``MAX_PARETO_NODES`` values, bounded nesting, a
    JSON object with a known format version. The one way this package reads the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: (one line, starting with the file name) too large, not JSON, nested too deeply, not an object,
            or a format version this package does not read.
    """
    where = display_path(path)
    raw = read_bounded_bytes(path, MAX_PARETO_BYTES, what='pareto.json')
    data = parse_json(raw, where, max_nodes=MAX_PARETO_NODES)
    if not isinstance(data, dict):
        raise ValueError(f'{where}: expected a JSON object, got {type(data).__name__}')
    version = format_version(data.get('format'))
    if version not in READABLE_VERSIONS:
        raise ValueError(f'{where}: unknown pareto.json format {repr(data.get("format"))[:40]}; this version reads '
                         f'format {", ".join(f"{FORMAT_NAME}/{v}" for v in READABLE_VERSIONS)} (upgrade '
                         'timm_alphanet for newer files)')
    return ParetoFile(os.fspath(path), data, version, hashlib.sha256(raw).hexdigest())


# ---- resuming
def resume_fingerprint(doc: Mapping[str, Any]) -> Dict[str, Any]:
    """What must match to resume a search: everything that changes a score or the search's path; not the
    generation count, so a finished search can be extended.

    Raises:
        KeyError / TypeError / AttributeError: `doc` lacks a header entry.
    """
    search = {k: v for k, v in doc['search'].items() if k != 'generations'}
    latency = doc['latency'] and {k: doc['latency'][k] for k in ('sha256', 'device')}
    return {'supernet.sha256': doc['supernet']['sha256'], 'space': doc['space'], 'num_classes': doc['num_classes'],
            'objectives': doc['objectives'], 'limits': doc['limits'], 'search': search,
            'calibration': doc['calibration'], 'selection': doc['selection'], 'latency': latency}


def fingerprint_differences(old: Any, new: Any, prefix: str = '') -> List[str]:
    """Each differing leaf as ``dotted.key (old there, new here)``, keys in sorted order."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += fingerprint_differences(old.get(k), new.get(k), f'{prefix}.{k}' if prefix else str(k))
        return out
    return [] if old == new else [f'{prefix} ({str(old)[:60]} there, {str(new)[:60]} here)']


def check_resume(path: Union[str, os.PathLike], header: Mapping[str, Any]) -> ParetoFile:
    """The pareto.json at `path`, checked to record the search `header` describes (`pareto_header`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable (see `read_pareto_file`), a header entry missing, or a different search: the
            message names up to five differing entries with both values.
    """
    where = display_path(path)
    recorded = read_pareto_file(path)
    try:
        old = resume_fingerprint(recorded.document)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f'{where}: not a readable pareto.json ({type(e).__name__}: {str(e)[:200]}); cannot resume '
                         'from it') from None
    diff = fingerprint_differences(old, resume_fingerprint(header))
    if diff:
        raise ValueError(f'cannot resume {where}: it records a different search: ' + '; '.join(diff[:5])
                         + (f' (+{len(diff) - 5} more)' if len(diff) > 5 else ''))
    return recorded


# ---- the front, for export
@dataclass(frozen=True)
class ParetoPoint:
    """One point of the front: the arch and what the search measured for it."""
    index: int
    arch: Any  # an arch of the space given to `read_pareto`
    mflops: float
    params_m: Optional[float]
    latency_ms: Optional[float]
    latency_device: Optional[str]
    top1: Optional[float]
    top1_val: Optional[float]
    top1_ci: Optional[Tuple[float, float]] = None  # 95 % Wilson interval of top1; None in version 1 files

    def record(self) -> Dict[str, Any]:
        """The metrics as a record (``top1``, ``mflops``, ...), the shape the front maths and the plot take."""
        return {'top1': self.top1, 'top1_val': self.top1_val, 'mflops': self.mflops, 'params_m': self.params_m,
                'latency_ms': self.latency_ms, 'top1_ci': self.top1_ci}


@dataclass(frozen=True)
class ParetoFront:
    """A pareto.json validated for one supernet."""
    path: str
    format: int
    file_sha256: str
    supernet: Dict[str, Any]  # the search's record of its supernet (spec, kind, path, sha256)
    supernet_sha256: str
    recipe: Any  # what `read_recipe` made of the recorded calibration recipe
    selection_split: str
    report_split: Optional[str]
    dataset: Optional[str]
    objectives: Tuple[str, ...]
    points: Tuple[ParetoPoint, ...]
    complete: bool = True  # False: written by a search that had not finished


def _number(value: Any, what: str, optional: bool = False, low: float = 0.0, high: float = math.inf) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f'{what} must be a finite number in [{low:g}, {high:g}]{" or null" if optional else ""}, '
                         f'got {bounded_repr(value)}')
    return float(value)


def check_top1(value: Any, what: str, optional: bool = False) -> Optional[float]:
    """A top-1 (%) as a float in `TOP1_RANGE` (None too, if `optional`); ValueError naming `what`, the value and
    the range. pareto.json's writer and reader and candidates.jsonl's reader all check scores with it."""
    return _number(value, what, optional, *TOP1_RANGE)


def point_numbers(point: Mapping[str, Any], what: str) -> Dict[str, Any]:
    """The numbers of a pareto.json point, checked: ``mflops`` finite and >= 0; ``params_m`` and ``latency_ms``
    finite and >= 0 or null; ``top1`` and ``top1_val`` in `TOP1_RANGE` or null; ``top1_ci`` null/absent or
    ``[low, high]`` in `TOP1_RANGE` with low <= top1 <= high. The one check of both the writer (`front_point`,
    `write_pareto`) and the reader (`read_pareto`), so the search never writes what export refuses.

    Raises:
        ValueError: naming `what`, the field, the value and the allowed range.
    """
    out = {'mflops': _number(point.get('mflops'), f'{what}: mflops'),
           'params_m': _number(point.get('params_m'), f'{what}: params_m', optional=True),
           'latency_ms': _number(point.get('latency_ms'), f'{what}: latency_ms', optional=True),
           'top1': check_top1(point.get('top1'), f'{what}: top1', optional=True),
           'top1_val': check_top1(point.get('top1_val'), f'{what}: top1_val', optional=True)}
    out['top1_ci'] = _interval(point.get('top1_ci'), out['top1'], f'{what}: top1_ci')
    return out


def _interval(value: Any, top1: Optional[float], what: str) -> Optional[Tuple[float, float]]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f'{what} must be [low, high] or null, got {bounded_repr(value)}')
    low, high = (check_top1(v, what) for v in value)
    # a small tolerance: the bounds went through JSON as decimals, top1 too
    if not low <= high or (top1 is not None and not low - 1e-9 <= top1 <= high + 1e-9):
        raise ValueError(f'{what} must satisfy low <= top1 <= high, got {bounded_repr(list(value))} around top1 '
                         f'{bounded_repr(top1)}')
    return low, high


def _split_name(value: Any) -> Optional[str]:
    if isinstance(value, Mapping):
        value = value.get('split')
    return str(value)[:100] if isinstance(value, (str, int)) else None


def read_pareto(path: Union[str, os.PathLike], space: Any, supernet_sha256: Optional[str] = None,
                read_recipe: Callable[[Mapping[str, Any]], Any] = dict) -> ParetoFront:
    """Read a pareto.json (`read_pareto_file`) and validate it for the supernet whose space is `space` and whose
    weights hash `supernet_sha256` (None: not checked).

    Args:
        path: the file.
        space: the supernet's space: its type's ``from_dict`` reads the recorded space, ``validate`` each arch.
        supernet_sha256: sha256 of the supernet's weights, or None.
        read_recipe: makes the calibration recipe from its recorded mapping (``CalibrationRecipe.from_dict``),
            raising ValueError or TypeError on a bad one; the default keeps the mapping.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, another supernet (sha256 mismatch), another space, a missing or bad calibration
            recipe, no points, or a point whose arch is not in `space` or whose numbers are not finite.
    """
    read = read_pareto_file(path)
    data, where = read.document, display_path(path)
    supernet = data.get('supernet')
    supernet = dict(supernet) if isinstance(supernet, Mapping) else {}
    sha = supernet.get('sha256', data.get('supernet_sha256'))
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise ValueError(f'{where}: no valid supernet sha256 (a 64-digit lowercase hex string in "supernet")')
    if supernet_sha256 is not None and sha != supernet_sha256:
        raise ValueError(f'{where} was made from another supernet: its weights have sha256 {sha[:16]}…, the '
                         f'supernet given has {supernet_sha256[:16]}…; export from the supernet the search used')
    if isinstance(data.get('space'), Mapping):
        try:  # the supernet's own space type reads it (an AlphaNet SearchSpace, a slimmable WidthSpace, ...)
            theirs = type(space).from_dict(data['space'])
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f'{where}: bad "space": {str(e)[:300]}') from None
        if theirs != space:
            raise ValueError(f'{where}: its search space differs from the supernet\'s; export from the supernet the '
                             'search used')

    calibration = data.get('calibration')
    if isinstance(calibration, Mapping) and isinstance(calibration.get('recipe'), Mapping):
        calibration = calibration['recipe']
    if not isinstance(calibration, Mapping):
        raise ValueError(f'{where}: no calibration recipe ("calibration"); exports must calibrate as the search did')
    try:
        recipe = read_recipe(calibration)
    except (ValueError, TypeError) as e:
        raise ValueError(f'{where}: bad calibration recipe: {str(e)[:300]}') from None

    latency = data.get('latency')
    default_device = latency.get('device') if isinstance(latency, Mapping) else None
    raw_points = data.get('points')
    if not isinstance(raw_points, list) or not raw_points:
        raise ValueError(f'{where}: "points" must be a non-empty list')
    points = []
    for i, p in enumerate(raw_points):
        what = f'{where}: point {i}'
        if not isinstance(p, Mapping) or not isinstance(p.get('arch'), Mapping):
            raise ValueError(f'{what}: expected an object with an "arch" object')
        try:
            arch = space.validate(p['arch'])
        except (ValueError, TypeError) as e:
            raise ValueError(f'{what}: {str(e)[:500]}') from None
        device = p.get('latency_device', p.get('device', default_device))
        points.append(ParetoPoint(index=i, arch=arch, latency_device=str(device)[:200] if device is not None else None,
                                  **point_numbers(p, what)))

    objectives = data.get('objectives')
    if isinstance(objectives, Mapping):
        objectives = list(objectives)
    objectives = tuple(str(o)[:40] for o in objectives) if isinstance(objectives, list) else ('top1', 'mflops')
    selection = data.get('selection', data.get('selection_split'))
    dataset = data.get('dataset')
    progress = data.get('progress')
    complete = not isinstance(progress, Mapping) or progress.get('complete') is not False
    return ParetoFront(
        path=read.path, format=read.version, file_sha256=read.sha256, supernet=supernet, supernet_sha256=sha,
        recipe=recipe, selection_split=_split_name(selection) or 'unknown',
        report_split=_split_name(data.get('validation', data.get('report_split'))),
        dataset=str(dataset)[:100] if isinstance(dataset, str) else None, objectives=objectives, points=tuple(points),
        complete=complete)


def select_points(front: ParetoFront, spec: Union[str, Sequence[int], None] = 'all') -> List[ParetoPoint]:
    """``'all'`` or comma-separated indices (``'0,3,5'``) -> the points, in the order given (repeats dropped)."""
    n = len(front.points)
    if spec is None or spec == 'all':
        return list(front.points)
    items = [s.strip() for s in spec.split(',')] if isinstance(spec, str) else list(spec)
    out, seen = [], set()
    for item in items:
        try:
            i = int(item)
        except (TypeError, ValueError):
            raise ValueError(f'--points: {str(item)[:40]!r} is not an index; use all or indices 0..{n - 1}') from None
        if not 0 <= i < n:
            raise ValueError(f'--points: index {i} out of range; {display_path(front.path)} has {n} points '
                             f'(0..{n - 1})')
        if i not in seen:
            seen.add(i)
            out.append(front.points[i])
    if not out:
        raise ValueError(f'--points: no index given; use all or indices 0..{n - 1}')
    return out
