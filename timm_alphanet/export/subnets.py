"""Exporting subnets of a trained supernet as model folders (behind ``alphanet-export``).

Per arch: the static model (`extract_subnet`; folders of the paper's searched archs rebuild as the named
``alphanet_aX``), BatchNorm calibration with the deterministic recipe (the one the search recorded in pareto.json),
metrics (MFLOPs, params, latency, top-1 with its split), optionally ONNX, written whole into ``<output>/<name>/``.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..archs import ARCH_NAMES
from ..calibration import CalibrationRecipe, calibrate_with_recipe
from ..processes import check_device
from ..utils import import_optional
from ..search.pareto_file import ParetoFront, ParetoPoint, select_points
from ..search.pareto_report import plot_front
from ..spaces import Space, SubnetConfig
from .extract import extract_subnet
from .folder import check_output_folder, model_metadata, staged_folder, write_model_folder
from .timing import latency

__all__ = ['ExportRequest', 'resolve_requests', 'export_subnets', 'UNCALIBRATED_EXPORT_NOTE']

UNCALIBRATED_EXPORT_NOTE = (
    'BatchNorm statistics: UNCALIBRATED (exported with --no-calib). The running statistics are the supernet\'s, '
    'cropped to this subnet; a supernet trained with BN momentum 0 (as AlphaNet is) has meaningless ones, so '
    'calibrate before evaluating: `timm_alphanet.calibrate_bn(model, train_loader, num_batches=...)`.')


@dataclass(frozen=True)
class ExportRequest:
    """One model to export: its folder / repository name, its arch, and its Pareto point (if from pareto.json)."""
    name: str
    arch: SubnetConfig
    point: Optional[ParetoPoint] = None


def _arch_name(spec: Any, arch: Any, space: Space, prefix: str, index: int,
               cost: Optional[Callable[[Any], Tuple[int, int]]]) -> str:
    """A paper or extreme arch by its name, an arch file by its stem, else the space's label (``w0.35``), else
    the MFLOPs by `cost`, else the index."""
    stripped = spec.strip() if isinstance(spec, str) else ''
    short = stripped.removeprefix('alphanet_')
    if short in ARCH_NAMES:  # it resolved, so a paper arch's name is one of this space
        return f'{prefix}_{short}'
    if stripped and not stripped.startswith('{') and os.path.isfile(stripped):
        stem = re.sub(r'[^A-Za-z0-9._-]+', '_', Path(stripped).stem).strip('._-') or 'arch'
        return f'{prefix}_{stem}'[:80]
    label = space.label(arch)
    if label is not None:
        return f'{prefix}_{label}'
    if cost is not None:
        return f'{prefix}_custom_{_mflops_label(cost(arch)[0] / 1e6)}mf'
    return f'{prefix}_custom{index}'


def _front_plot(front: ParetoFront, highlight: int) -> bytes:
    """The card's plot: the search's front plot (`plot_front`) with the exported model's point marked."""
    return plot_front([p.record() for p in front.points], front.objectives, highlight=highlight,
                      title=f'Pareto front of {front.supernet.get("spec") or "the supernet"}',
                      top1_label=f'top-1 on the {front.selection_split} selection images (%)')


def _mflops_label(value: float) -> str:
    return str(round(value)) if value >= 10 else f'{value:.2g}'


def resolve_requests(space: Space, archs: Sequence[Union[str, SubnetConfig, Dict[str, Any]]] = (),
                     front: Optional[ParetoFront] = None, points: Union[str, Sequence[int], None] = 'all',
                     prefix: str = 'alphanet', cost: Optional[Callable[[Any], Tuple[int, int]]] = None,
                     ) -> List[ExportRequest]:
    """What to export: `archs` (anything `space.resolve` takes: names, widths, JSON text, files, dicts) or the
    `points` of `front`.

    Models are named ``<prefix>_<arch name>`` (``alphanet_a3``, ``alphanet_max``, ``slimmable_mobilenetv2_w0.35``,
    ``alphanet_pareto03_357mf``); an arch without a name is named by its MFLOPs when `cost` (the supernet's
    `macs_and_params`) is given (``alphanet_custom_357mf``), else by its index.
    Raises ValueError for an arch outside `space` (naming the gene and its allowed values), an index out of range,
    or two models that would get the same name.
    """
    out: List[ExportRequest] = []
    for a in archs:
        arch = space.resolve(a)
        out.append(ExportRequest(_arch_name(a, arch, space, prefix, len(out), cost), arch))
    if front is not None:
        width = len(str(len(front.points) - 1))
        for p in select_points(front, points):
            out.append(ExportRequest(f'{prefix}_pareto{p.index:0{width}d}_{_mflops_label(p.mflops)}mf', p.arch, p))
    if not out:
        raise ValueError('nothing to export: give --arch NAME|JSON|FILE or --pareto pareto.json')
    names = [r.name for r in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f'two exported models would share the name(s) {dup[:5]}; give each arch once')
    return out


def _results(point: ParetoPoint, front: ParetoFront) -> List[Dict[str, Any]]:
    dataset = front.dataset or 'search data'
    out = []
    if point.top1 is not None:
        out.append({'top1': point.top1, 'dataset': dataset, 'split': front.selection_split,
                    'pipeline': 'search (calibrated with the recipe)', 'source': 'pareto.json'})
    if point.top1_val is not None:
        out.append({'top1': point.top1_val, 'dataset': dataset, 'split': front.report_split or 'held-out report',
                    'pipeline': 'search (calibrated with the recipe)', 'source': 'pareto.json'})
    return out


def export_subnets(
        supernet: torch.nn.Module,
        requests: Sequence[ExportRequest],
        output: Union[str, os.PathLike],
        source: Optional[Dict[str, Any]] = None,
        calib_images: Optional[torch.Tensor] = None,
        recipe: Optional[CalibrationRecipe] = None,
        calib_data: Optional[str] = None,
        front: Optional[ParetoFront] = None,
        onnx: bool = False,
        overwrite: bool = False,
        measure_latency: bool = True,
        device: Union[str, torch.device] = 'cpu',
        progress: bool = True,
        log: Optional[Callable[[str], None]] = None,
) -> List[Path]:
    """Write one model folder per request into `output`; returns the folders.

    Args:
        supernet: the supernet (an `AlphaNetSupernet`), in eval mode.
        requests: from `resolve_requests`.
        output: the output folder; refused when it exists non-empty unless `overwrite` (then the models' folders
            are replaced, each one whole).
        source: `SupernetSource.to_dict()` of the supernet (its sha256 goes into every folder).
        calib_images: the recipe's calibration images (`calibration_images`); None exports uncalibrated models
            whose cards say so.
        recipe: the calibration recipe (required with `calib_images`).
        calib_data: a short name of the calibration data for the cards (e.g. the folder's name).
        front: the pareto.json the requests' points come from (metrics and the plot go into the cards).
        onnx: also write ``model.onnx`` (checked against torch with onnxruntime).
        overwrite: see `output`.
        measure_latency: measure batch-1 latency on `device` for archs without a latency from pareto.json.
        device: where calibration (and latency measurement) runs.
        progress: progress bars.
        log: called with one line per written folder.
    """
    if calib_images is not None and recipe is None:
        raise ValueError('calib_images need the recipe they were drawn with')
    device = check_device(device)
    output = check_output_folder(output, overwrite)
    if front is not None:  # the cards carry the front plot: a missing extra is refused before any folder is built
        import_optional('matplotlib.figure', "the model cards' front plot")
    if onnx:
        from .onnx import require_onnx
        require_onnx()
    say = log or (lambda msg: None)
    written = []
    for req in tqdm(requests, desc='export', disable=not progress):
        model = extract_subnet(supernet, req.arch).eval().to(device)
        meta = model_metadata(model)
        meta['name'] = req.name
        if source:
            meta['supernet'] = {k: source[k] for k in ('spec', 'kind', 'sha256') if k in source}
            if source.get('kind') == 'hf-hub':
                meta['base_model'] = str(source.get('path', '')).split('@')[0] or None
        if calib_images is not None:
            used = calibrate_with_recipe(model, calib_images, recipe, req.arch.resolution)
            meta['calibration'] = {'recipe': recipe.to_dict(), 'data': calib_data, 'batches': used}
        else:
            meta['calibration'] = None
            meta['notes'] = UNCALIBRATED_EXPORT_NOTE
        model.eval()
        point = req.point
        if point is not None and point.latency_ms is not None:
            meta['latency'] = {'ms': point.latency_ms, 'batch_size': 1, 'device': point.latency_device or 'unknown',
                               'source': 'pareto.json'}
        elif measure_latency:
            meta['latency'] = latency(model, req.arch.resolution, getattr(supernet, 'in_chans', 3), device)
        if point is not None and front is not None:
            meta['results'] = _results(point, front)
            meta['pareto'] = {'index': point.index, 'num_points': len(front.points), 'file_sha256': front.file_sha256,
                              'objectives': list(front.objectives), 'plot': 'pareto.png', 'complete': front.complete}
        model.cpu()
        folder = output / req.name
        with staged_folder(folder, overwrite) as tmp:
            if meta.get('pareto'):
                (tmp / 'pareto.png').write_bytes(_front_plot(front, point.index))
            if onnx:
                from .onnx import export_onnx
                meta['onnx'] = export_onnx(model, tmp / 'model.onnx', req.arch.resolution,
                                           getattr(supernet, 'in_chans', 3))
            write_model_folder(model, tmp, meta, folder)
        say(f'wrote {folder} ({req.arch.resolution} px, {meta.get("mflops", float("nan")):.1f} MFLOPs, '
            f'{"calibrated" if calib_images is not None else "UNCALIBRATED"})')
        written.append(folder)
    return written

