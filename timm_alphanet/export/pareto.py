"""Reading `pareto.json` (written by ``alphanet-search``) for export, and drawing its front for model cards.

The reader is tolerant (unknown keys are ignored, so later format additions do not break it) but validating: the
format version must be one it knows, the file must come from the supernet being exported (sha256 of its weights),
and every point's arch must belong to the supernet's space (the error names the point, the gene and the allowed
values). Every number is checked to be finite; the file's size is bounded.
"""
import hashlib
import html
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..calibration import CalibrationRecipe
from ..utils import parse_json, read_bounded_bytes

__all__ = ['PARETO_FORMATS', 'ParetoPoint', 'ParetoFront', 'read_pareto', 'select_points', 'pareto_svg']

PARETO_FORMATS = (1,)  # format versions this reader understands
FORMAT_PREFIX = 'timm_alphanet.pareto/'  # alphanet-search writes 'timm_alphanet.pareto/<version>'
MAX_PARETO_BYTES = 64 << 20
MAX_PARETO_NODES = 4_000_000  # JSON values; a front of a few hundred points has ~20 000
_SHA256 = re.compile(r'^[0-9a-f]{64}$')


@dataclass(frozen=True)
class ParetoPoint:
    """One point of the front: the arch and what the search measured for it."""
    index: int
    arch: Any  # a SubnetConfig, or the arch type of the supernet's space
    mflops: float
    params_m: Optional[float]
    latency_ms: Optional[float]
    latency_device: Optional[str]
    top1: Optional[float]
    top1_val: Optional[float]


@dataclass(frozen=True)
class ParetoFront:
    """A validated pareto.json."""
    path: str
    format: int
    file_sha256: str
    supernet: Dict[str, Any]  # the search's record of its supernet (spec, kind, path, sha256)
    supernet_sha256: str
    recipe: CalibrationRecipe
    selection_split: str
    report_split: Optional[str]
    dataset: Optional[str]
    objectives: Tuple[str, ...]
    points: Tuple[ParetoPoint, ...]
    complete: bool = True  # False: written by a search that had not finished


def _where(path: str) -> str:
    return os.path.basename(path)[:200] or path[:200]


def _number(value: Any, what: str, optional: bool = False, low: float = 0.0, high: float = math.inf) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f'{what} must be a finite number in [{low}, {high}]{" or null" if optional else ""}, '
                         f'got {str(value)[:40]!r}')
    return float(value)


def _read_json(path: str) -> Tuple[Any, str]:
    """The parsed file and the sha256 of the very bytes parsed (bounded size and nesting, see `utils`)."""
    raw = read_bounded_bytes(path, MAX_PARETO_BYTES, what='pareto.json')
    return parse_json(raw, _where(path), max_nodes=MAX_PARETO_NODES), hashlib.sha256(raw).hexdigest()


def _split_name(value: Any) -> Optional[str]:
    if isinstance(value, Mapping):
        value = value.get('split')
    return str(value)[:100] if isinstance(value, (str, int)) else None


def _format_version(value: Any) -> Optional[int]:
    """The version of a ``format`` field: ``'timm_alphanet.pareto/1'`` or the bare integer 1 -> 1; else None."""
    if isinstance(value, str) and value.startswith(FORMAT_PREFIX) and value[len(FORMAT_PREFIX):].isdigit():
        return int(value[len(FORMAT_PREFIX):])
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def read_pareto(path: Union[str, os.PathLike], space: Any,
                supernet_sha256: Optional[str] = None) -> ParetoFront:
    """Read and validate a pareto.json for the supernet whose space is `space` and weights hash `supernet_sha256`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, an unknown format version, another supernet (sha256 mismatch), another space, a
            missing or bad calibration recipe, no points, or a point whose arch is not in `space`.
    """
    path = os.fspath(path)
    where = _where(path)
    data, file_sha = _read_json(path)
    if not isinstance(data, Mapping):
        raise ValueError(f'{where}: expected a JSON object, got {type(data).__name__}')
    fmt = _format_version(data.get('format'))
    if fmt not in PARETO_FORMATS:
        raise ValueError(f'{where}: unknown pareto.json format {repr(data.get("format"))[:40]}; this version reads '
                         f'format {", ".join(f"{FORMAT_PREFIX}{v}" for v in PARETO_FORMATS)} (upgrade timm_alphanet '
                         'for newer files)')

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
        recipe = CalibrationRecipe.from_dict(calibration)
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
        points.append(ParetoPoint(
            index=i, arch=arch,
            mflops=_number(p.get('mflops'), f'{what}: mflops'),
            params_m=_number(p.get('params_m'), f'{what}: params_m', optional=True),
            latency_ms=_number(p.get('latency_ms'), f'{what}: latency_ms', optional=True),
            latency_device=str(device)[:200] if device is not None else None,
            top1=_number(p.get('top1'), f'{what}: top1', optional=True, high=100.0),
            top1_val=_number(p.get('top1_val'), f'{what}: top1_val', optional=True, high=100.0)))

    objectives = data.get('objectives')
    if isinstance(objectives, Mapping):
        objectives = list(objectives)
    objectives = tuple(str(o)[:40] for o in objectives) if isinstance(objectives, list) else ('top1', 'mflops')
    selection = data.get('selection', data.get('selection_split'))
    dataset = data.get('dataset')
    progress = data.get('progress')
    complete = not isinstance(progress, Mapping) or progress.get('complete') is not False
    return ParetoFront(
        path=path, format=fmt, file_sha256=file_sha, supernet=supernet, supernet_sha256=sha, recipe=recipe,
        selection_split=_split_name(selection) or 'unknown',
        report_split=_split_name(data.get('validation', data.get('report_split'))),
        dataset=str(dataset)[:100] if isinstance(dataset, str) else None, objectives=objectives, points=tuple(points),
        complete=complete)


def select_points(front: ParetoFront, spec: Union[str, Sequence[int], None] = 'all') -> List[ParetoPoint]:
    """``'all'`` or comma-separated indices (``'0,3,5'``) -> the points, in the order given."""
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
            raise ValueError(f'--points: index {i} out of range; {_where(front.path)} has {n} points (0..{n - 1})')
        if i not in seen:
            seen.add(i)
            out.append(front.points[i])
    if not out:
        raise ValueError(f'--points: no index given; use all or indices 0..{n - 1}')
    return out


def pareto_svg(front: ParetoFront, highlight: Optional[int] = None, width: int = 480, height: int = 320) -> str:
    """An SVG scatter plot of top-1 (selection split) over MFLOPs, the front's line, and point `highlight` marked.

    Written by hand (a few lines) rather than with matplotlib, which would be a heavy dependency for one plot.
    """
    pts = [p for p in front.points if p.top1 is not None]
    left, right, top, bottom = 56, 16, 16, 44
    if not pts:
        return ''
    xs, ys = [p.mflops for p in pts], [p.top1 for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (width - left - right)

    def sy(v: float) -> float:
        return height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)

    line = ' '.join(f'{sx(p.mflops):.1f},{sy(p.top1):.1f}' for p in sorted(pts, key=lambda p: p.mflops))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
           f'<polyline points="{line}" fill="none" stroke="#888"/>']
    for v in (x0, x1):
        out.append(f'<text x="{sx(v):.1f}" y="{height - bottom + 14}" text-anchor="middle">{v:.0f}</text>')
    for v in (y0, y1):
        out.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    out.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 8}" text-anchor="middle">MFLOPs</text>')
    mid = (top + height - bottom) / 2
    out.append(f'<text x="14" y="{mid:.0f}" text-anchor="middle" transform="rotate(-90 14 {mid:.0f})">'
               f'top-1 % ({html.escape(front.selection_split)})</text>')
    for p in pts:
        mark = p.index == highlight
        out.append(f'<circle cx="{sx(p.mflops):.1f}" cy="{sy(p.top1):.1f}" r="{6 if mark else 3}" '
                   f'fill="{"#d62728" if mark else "#1f77b4"}"><title>point {p.index}: {p.mflops:.1f} MFLOPs, '
                   f'{p.top1:.2f}%</title></circle>')
    out.append('</svg>')
    return '\n'.join(out) + '\n'
