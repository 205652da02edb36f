"""What people read of a front: the pareto.md report and the one front plot (matplotlib, imported only to draw),
drawn for a search's pareto.png and for each exported model's card, with that model's point marked."""
import io
from typing import Any, List, Mapping, Optional, Sequence

from ..utils import import_optional
from .pareto import OBJECTIVES
from .pareto_file import unseparated_neighbours

__all__ = ['AXIS_LABELS', 'arch_text', 'pareto_markdown', 'separation_note', 'pareto_report', 'plot_costs',
           'front_figure', 'plot_front']

AXIS_LABELS = {'mflops': 'MFLOPs (millions of multiply-adds)', 'params': 'parameters (millions)',
               'latency': 'predicted latency (ms)'}
TOP1_LABEL = 'top-1 on the selection images (%)'


def arch_text(arch: Mapping[str, Any]) -> str:
    """Compact one-line arch: ``r32 w8,16,24 d1,2 k3,5 t1,4`` (original keys or ours); other arch types (e.g. a
    slimmable ``{'width': 0.5, 'resolution': 224}``) as ``key=value`` pairs."""
    if not any(k in arch for k in ('depth', 'depths')):
        return ' '.join(f'{k}={v}' for k, v in arch.items())

    def get(*keys: str) -> Any:
        return next(arch[k] for k in keys if k in arch)
    parts = [f'r{get("resolution")}']
    for tag, keys in (('w', ('width', 'widths')), ('d', ('depth', 'depths')), ('k', ('kernel_size', 'kernel_sizes')),
                      ('t', ('expand_ratio', 'expand_ratios'))):
        parts.append(tag + ','.join(map(str, get(*keys))))
    return ' '.join(parts)


def _num(value: Optional[float], digits: int) -> str:
    return '' if value is None else f'{value:.{digits}f}'


def _ci(value: Optional[Sequence[float]]) -> str:
    return '' if not value else f'{value[0]:.1f}-{value[1]:.1f}'


def pareto_markdown(doc: Mapping[str, Any]) -> str:
    """The Pareto table of a pareto.json document (one row per point, numbered as in the plot); ``95 % CI`` is the
    Wilson interval of top-1 sel. (empty for files written before intervals were recorded)."""
    lines = ['| # | top-1 sel. % | 95 % CI | top-1 val. % | MFLOPs | params M | latency ms | arch |',
             '|---|---|---|---|---|---|---|---|']
    for i, p in enumerate(doc['points']):
        lines.append(f'| {i} | {_num(p["top1"], 2)} | {_ci(p.get("top1_ci"))} | {_num(p.get("top1_val"), 2)} | '
                     f'{_num(p["mflops"], 2)} | {_num(p["params_m"], 3)} | {_num(p.get("latency_ms"), 3)} | '
                     f'{arch_text(p["arch"])} |')
    return '\n'.join(lines)


def separation_note(doc: Mapping[str, Any]) -> str:
    """One line on what the selection set can resolve: the top-1 step of one image, and which neighbouring front
    points (along the first cost objective) have overlapping 95 % intervals, i.e. are not told apart by it."""
    n = (doc.get('selection') or {}).get('num_images')
    points = doc['points']
    if not isinstance(n, int) or n < 1 or not any(p.get('top1_ci') for p in points):
        return '- uncertainty: not recorded (a pareto.json from before intervals)'
    cost = plot_costs(doc.get('objectives') or ())[0]
    key = OBJECTIVES[cost][0]
    pairs = unseparated_neighbours(points, key)
    compared = sum(1 for p in points if p.get('top1_ci') and p.get(key) is not None) - 1
    text = (f'- uncertainty: top-1 sel. is measured on {n} images (one image = {100 / n:.2f} points); 95 % CI is its '
            'Wilson interval')
    if not pairs:
        return text + f'; neighbouring points (by {cost}) have intervals that do not overlap'
    shown = ', '.join(f'{i}-{j}' for i, j in pairs[:10]) + (f' (+{len(pairs) - 10} more)' if len(pairs) > 10 else '')
    return (text + f'. The selection set is too small to separate {len(pairs)} of {compared} '
            f'neighbouring pairs (by {cost}; intervals overlap: {shown}): their order is not established; give '
            'more --selection-images, or compare them on top-1 val.')


def pareto_report(doc: Mapping[str, Any]) -> str:
    """pareto.md: what was searched, how it was scored, and the table."""
    prog, sel, cal = doc['progress'], doc['selection'], doc['calibration']
    limits = ', '.join(f'{k} {v}' for k, v in doc['limits'].items() if v is not None) or 'none'
    val = doc.get('validation')
    lines = [
        '# Pareto front', '',
        f'- supernet: `{doc["supernet"].get("spec") or "?"}` (sha256 `{doc["supernet"]["sha256"][:16]}`)',
        f'- objectives: {", ".join(doc["objectives"])}; limits: {limits}',
        f'- progress: generation {prog["generations_done"]} of {prog["generations"]}, {prog["evaluated"]} subnets '
        f'evaluated{"" if prog["complete"] else " (running)"}',
        f'- BN calibration: {cal["num_images"]} images of the {cal["split"]} split (seed {cal["seed"]}), batches of '
        f'{cal["batch_size"]}, {cal["image_size"]} px, crop {cal["crop_pct"]}',
        f'- selection (top-1 sel.): {sel["num_images"]} other images of the {sel["split"]} split',
        '- top-1 val.: ' + (f'the {val["num_images"]} images of the {val["split"]} split, front points only'
                             if val else 'not measured (no validation split)'),
    ]
    if doc.get('latency'):
        d = doc['latency']['device']
        lines.append(f'- latency: table on {d["type"]} {d["name"]!r}, {d["threads"]} threads, batch {d["batch_size"]}')
    lines.append(separation_note(doc))
    return '\n'.join(lines + ['', pareto_markdown(doc), ''])


def plot_costs(objectives: Sequence[str]) -> List[str]:
    """The cost objectives a plot has panels for: the known ones of `objectives`, or MFLOPs when there is none
    (a file from elsewhere may name objectives this version does not know)."""
    return [o for o in objectives if o in OBJECTIVES and o != 'top1'] or ['mflops']


def _plain(text: str) -> str:
    # titles carry paths and split names: a pair of '$' in them would be parsed as a formula, and may fail to parse
    return text.replace('$', r'\$')


def front_figure(points: Sequence[Mapping[str, Any]], objectives: Sequence[str] = ('top1', 'mflops'), *,
                 evaluated: Sequence[Mapping[str, Any]] = (), highlight: Optional[int] = None, title: str = '',
                 top1_label: str = TOP1_LABEL, latency_device: Optional[Mapping[str, Any]] = None) -> Any:
    """The front plot as a matplotlib `Figure`: one panel per cost of `objectives`, top-1 over the cost.

    Args:
        points: the front as records (``top1`` and the cost keys), numbered as in pareto.md; a point without
            top-1 or without a panel's cost is left out of that panel.
        objectives: objective names (see `plot_costs`).
        evaluated: every evaluated subnet, drawn in grey behind the front.
        highlight: the index of a point to mark (the exported model).
        title: the figure's title (shown as given: ``$`` starts no formula).
        top1_label: the y axis label (shown as given).
        latency_device: the latency table's device record, named on the latency axis.
    """
    Figure = import_optional('matplotlib.figure', 'the front plot').Figure

    costs = plot_costs(objectives)
    fig = Figure(figsize=(6.4 * len(costs), 4.8), layout='constrained')
    axes = fig.subplots(1, len(costs), squeeze=False)[0]
    for ax, cost in zip(axes, costs):
        key = OBJECTIVES[cost][0]
        if evaluated:
            ax.scatter([r[key] for r in evaluated], [r['top1'] for r in evaluated], s=10, c='0.65',
                       label=f'evaluated ({len(evaluated)})')
        shown = [(i, p) for i, p in enumerate(points) if p.get('top1') is not None and p.get(key) is not None]
        line = sorted(shown, key=lambda ip: ip[1][key])
        ax.plot([p[key] for _, p in line], [p['top1'] for _, p in line], '-o', c='tab:red', ms=5,
                label=f'Pareto front ({len(shown)})')
        bars = [p for _, p in line if p.get('top1_ci')]
        if bars:  # the selection set's 95 % Wilson intervals: overlapping bars are not told apart
            ax.errorbar([p[key] for p in bars], [p['top1'] for p in bars], fmt='none', ecolor='tab:red', alpha=0.5,
                        capsize=3, yerr=[[p['top1'] - p['top1_ci'][0] for p in bars],
                                         [p['top1_ci'][1] - p['top1'] for p in bars]],
                        label='95 % interval (selection images)')
        for i, p in shown:
            ax.annotate(str(i), (p[key], p['top1']), textcoords='offset points', xytext=(4, -10), fontsize=8)
            if i == highlight:
                ax.plot([p[key]], [p['top1']], 'o', ms=14, mfc='none', mec='tab:blue', mew=2,
                        label=f'this model (point {i})')
        label = AXIS_LABELS[cost]
        if cost == 'latency' and latency_device:
            label = f'predicted latency (ms, {latency_device.get("type")}, batch {latency_device.get("batch_size")})'
        # no offset: a narrow range (0.20-0.25 MFLOPs) keeps labels like 0.21, not 0.01 beside a '+0.2'
        ax.ticklabel_format(axis='both', style='plain', useOffset=False)
        ax.set_xlabel(label)
        ax.set_ylabel(_plain(top1_label))
        ax.grid(alpha=0.3)
        ax.legend(loc='lower right')
    if title:
        fig.suptitle(_plain(title), fontsize=10)
    return fig


def plot_front(points: Sequence[Mapping[str, Any]], objectives: Sequence[str] = ('top1', 'mflops'), *,
               evaluated: Sequence[Mapping[str, Any]] = (), highlight: Optional[int] = None, title: str = '',
               top1_label: str = TOP1_LABEL, latency_device: Optional[Mapping[str, Any]] = None) -> bytes:
    """The front plot (`front_figure`) as PNG bytes."""
    fig = front_figure(points, objectives, evaluated=evaluated, highlight=highlight, title=title,
                       top1_label=top1_label, latency_device=latency_device)
    png = io.BytesIO()
    fig.savefig(png, format='png', dpi=100)
    return png.getvalue()
