"""Exporting subnets of a trained supernet as model folders (behind ``alphanet-export``).

Per arch: the static model (`extract_subnet`; folders of the paper's searched archs rebuild as the named
``alphanet_aX``) with the supernet's eval preprocessing, BatchNorm calibration with the deterministic recipe (the one
the search recorded in pareto.json), metrics (MFLOPs, params, latency), optionally ONNX, written whole into
``<output>/<name>/``; then, given `ValidationData`, the written folder itself is loaded back and validated with timm's
eval pipeline (`validate_model`, what ``alphanet-validate`` runs), so the top-1 its card and `model-index` publish is
the number a user of the folder measures. A search's selection score is recorded apart (``search``), never as a
result.
"""
import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..archs import ARCH_NAMES
from ..calibration import CalibrationRecipe, calibrate_with_recipe
from ..data import open_image_dataset
from ..evaluation import validate_model
from ..processes import check_device
from ..sources import source_name
from ..utils import import_optional
from ..search.pareto_file import ParetoFront, ParetoPoint, select_points
from ..search.pareto_report import plot_front
from ..spaces import Space, SubnetConfig
from .extract import extract_subnet
from .folder import (
    check_output_folder, model_metadata, record_evaluation, staged_folder, write_card, write_model_folder,
)
from .timing import latency

__all__ = ['ExportRequest', 'ValidationData', 'open_validation', 'resolve_requests', 'export_subnets',
           'UNCALIBRATED_EXPORT_NOTE', 'EVAL_PREPROCESSING']

# the pretrained_cfg keys timm's eval transform reads; an exported subnet takes them from its supernet (input size
# from its own resolution), as the recipe's transform does, so calibration, the run and timm users see one pipeline
EVAL_PREPROCESSING = ('interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')

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


@dataclass(frozen=True)
class ValidationData:
    """Where `export_subnets` measures each written model: one split of an image dataset (its transform is replaced
    by the model's eval transform), and how the records name the data and the split."""
    dataset: Any
    name: str
    split: str
    batch_size: int = 64  # alphanet-validate's default: the same batches give the same floating-point sums
    workers: int = 0


def open_validation(name: str, root: Optional[str], split: str, data_name: str, workers: int = 0,
                    what: str = 'validation data') -> ValidationData:
    """`split` of the dataset (`open_image_dataset`'s `name`, `root`) as `ValidationData`.

    Raises:
        ValueError: an image folder without a `split` sub-folder (timm would silently read the folder itself, e.g.
            the training images), or a split without images; FileNotFoundError: no such folder.
    """
    dataset = open_image_dataset(name, root, split, what=what)
    reader_root = getattr(getattr(dataset, 'reader', None), 'root', None)
    if name == '' and root and isinstance(reader_root, str) and os.path.isdir(reader_root) \
            and os.path.samefile(reader_root, root):
        raise ValueError(f'{what} {data_name[:100]!r} has no {split[:60]!r} split (sub-folder) to evaluate the '
                         'exported models on; name one with --val-split, or skip the evaluation with --no-eval')
    return ValidationData(dataset, data_name, split, workers=workers)


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
                      # the supernet by name: the plot is published with the card
                      title=f'Pareto front of {source_name(front.supernet)}',
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


def _search_scores(point: ParetoPoint, front: ParetoFront) -> Dict[str, Any]:
    """What the search measured for `point`, kept apart from `results`: the selection score ranks subnets on held-out
    training images and is no accuracy claim; its validation figure comes from the search's own pipeline. (Not the
    search's data description: it may hold the searching machine's data folder.)"""
    return {'selection_top1': point.top1, 'selection_split': front.selection_split,
            'validation_top1': point.top1_val, 'validation_split': front.report_split, 'source': 'pareto.json'}


def _with_eval_preprocessing(model: torch.nn.Module, supernet: torch.nn.Module, resolution: int) -> torch.nn.Module:
    """`model` whose pretrained_cfg names the supernet's eval preprocessing (`EVAL_PREPROCESSING`) at `resolution`."""
    source = dict(getattr(supernet, 'pretrained_cfg', None) or {})
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    cfg.update({k: source[k] for k in EVAL_PREPROCESSING if source.get(k) is not None})
    cfg['input_size'] = (getattr(supernet, 'in_chans', 3), resolution, resolution)
    model.pretrained_cfg = cfg
    return model


def export_subnets(
        supernet: torch.nn.Module,
        requests: Sequence[ExportRequest],
        output: Union[str, os.PathLike],
        source: Optional[Dict[str, Any]] = None,
        calib_images: Optional[torch.Tensor] = None,
        recipe: Optional[CalibrationRecipe] = None,
        calib_data: Optional[str] = None,
        front: Optional[ParetoFront] = None,
        validation: Optional[ValidationData] = None,
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
        validation: measure each written folder on this data with timm's eval pipeline and record the result
            (config.json ``results``, the card's `model-index`); None records no accuracy.
        onnx: also write ``model.onnx`` (checked against torch with onnxruntime).
        overwrite: see `output`.
        measure_latency: measure batch-1 latency on `device` for archs without a latency from pareto.json.
        device: where calibration, latency measurement and validation run.
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
    accelerator = None
    if validation is not None:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type != 'cuda')  # validate_model's sharding, here one process
    written = []
    # leave=False: the 'wrote ...' lines are the record; a kept bar printed its last state twice (after a slow last
    # model, once when it finished and once more on close, on two lines under the nested validation bar)
    for req in tqdm(requests, desc='export', disable=not progress, leave=False):
        model = extract_subnet(supernet, req.arch).eval().to(device)
        _with_eval_preprocessing(model, supernet, req.arch.resolution)
        meta = model_metadata(model)
        meta['name'] = req.name
        if source:
            # named, never by this machine's path: cards are published; the sha256 says which weights
            meta['supernet'] = {'name': source_name(source),
                                **{k: source[k] for k in ('kind', 'sha256') if k in source}}
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
            meta['search'] = _search_scores(point, front)
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
            top1 = None
            if validation is not None:
                top1 = _validate_folder(accelerator, tmp, validation, progress)['top1']
                write_card(tmp, folder_name=folder.name)  # its usage lines name the final folder, not the staging one
        measured = '' if top1 is None else f', top1 {top1:.2f} on {validation.split}'
        say(f'wrote {folder} ({req.arch.resolution} px, {meta.get("mflops", float("nan")):.1f} MFLOPs, '
            f'{"calibrated" if calib_images is not None else "UNCALIBRATED"}{measured})')
        written.append(folder)
    return written


def _validate_folder(accelerator: Any, folder: Path, validation: ValidationData, progress: bool) -> Dict[str, Any]:
    """Validate the model `folder` holds, loaded back as a user loads it (``local-dir:``, its own pretrained_cfg,
    timm's pipeline), and record the result in its config.json and card; returns the result."""
    import timm

    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    # a copy: validate_model sets the transform, and every model gets its own (its resolution)
    result = validate_model(accelerator, model, copy.copy(validation.dataset), 'timm', validation.batch_size,
                            validation.workers, progress=progress)
    result.update(dataset=validation.name, split=validation.split)
    record_evaluation(folder, result, source='alphanet-export')
    return result
