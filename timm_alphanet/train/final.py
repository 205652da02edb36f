"""The end of a run: ``final/`` holds models a user can load and that score what the run printed; then what is next.

A supernet run writes ``final/supernet/`` (the weight-sharing supernet; its card says a subnet must be BN-calibrated
before use) and, per validated subnet (max, min, eval_archs), ``final/<name>/``: the static timm model with its
BatchNorm statistics calibrated by a deterministic `CalibrationRecipe` (training split, eval transform), written
with the export code (`write_model_folder`: arch, resolution, MFLOPs, params, calibration recipe, results). Its
top-1 is measured on that static model with timm's eval pipeline from its own ``pretrained_cfg`` (`validate_model`,
what ``alphanet-validate --model local-dir:final/<name>`` runs), and that number is printed and recorded. A KD run
writes the student itself as ``final/``, measured the same way. ``final/`` is staged and renamed into place whole.
"""
import copy
import shlex
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..calibration import CalibrationRecipe, calibrate_with_recipe, calibration_images, recipe_for
from ..data import DIGITS, data_name
from ..evaluation import format_table, validate_model
from ..export.extract import extract_subnet
from ..export.folder import model_metadata, read_config, staged_folder, write_model_folder
from ..models import is_supernet
from ..utils import sha256_file
from .build import PREPROCESSING
from .checkpoint import no_space_left
from .config import TrainConfig

__all__ = ['FinalModel', 'SUPERNET_NOTE', 'final_recipe', 'write_final', 'read_final', 'final_report', 'next_steps']

SUPERNET_NOTE = (
    'This is the weight-sharing supernet of a training run, not a ready-to-use model: its BatchNorm running '
    'statistics belong to whichever subnet was calibrated last (supernet training keeps none of its own). Choose a '
    'subnet with `set_subnet(arch)`, recalibrate with `timm_alphanet.calibrate_bn(model, train_loader, '
    'num_batches)` and evaluate it at its own resolution, or use the calibrated static models next to this folder '
    '(`final/<name>/`), or export others with `alphanet-export`.')


@dataclass(frozen=True)
class FinalModel:
    """One model of ``final/``: its name, folder, measured result (top1, top5, loss, ...), resolution and MFLOPs."""
    name: str
    folder: Path
    result: Mapping[str, Any]
    resolution: Optional[int] = None
    mflops: Optional[float] = None


def dataset_name(cfg: TrainConfig) -> str:
    """The run's data as the records name it: sklearn/digits, the image folder's name, or the timm dataset name."""
    if cfg.dataset == DIGITS:
        return DIGITS
    if cfg.dataset == '' and cfg.data_dir:
        return data_name(cfg.data_dir)
    return cfg.dataset[:100]


def final_recipe(cfg: TrainConfig, model: nn.Module, num_train_images: int) -> CalibrationRecipe:
    """The calibration recipe of a supernet run's static models: ``bn_calib_batches`` batches of ``batch_size``
    training images (seeded by the run's seed), at the supernet's largest resolution with its eval preprocessing,
    each batch resized to the subnet's resolution.

    Raises:
        ValueError: preprocessing a recipe cannot name (e.g. an interpolation it does not support).
    """
    return recipe_for(
        model, split=cfg.train_split, num_images=min(cfg.bn_calib_batches * cfg.batch_size, num_train_images),
        batch_size=cfg.batch_size, seed=cfg.seed, image_size=int(model.pretrained_cfg['input_size'][-1]))


def _with_preprocessing(model: nn.Module, source: nn.Module, resolution: int) -> nn.Module:
    """`model` with `source`'s eval preprocessing in its pretrained_cfg and its own resolution as input size."""
    cfg = {k: source.pretrained_cfg[k] for k in PREPROCESSING if k != 'input_size'}
    model.pretrained_cfg = {**model.pretrained_cfg, **cfg,
                            'input_size': (getattr(source, 'in_chans', 3), resolution, resolution)}
    return model


def _measure(acc, model: nn.Module, val_dataset: Any, cfg: TrainConfig, split: str) -> Dict[str, Any]:
    result = validate_model(acc, model, copy.copy(val_dataset), 'timm', batch_size=cfg.validation_batch_size or
                            cfg.batch_size, workers=cfg.workers, progress=not cfg.no_progress)
    result.update(dataset=dataset_name(cfg), split=split, source='alphanet-train')
    return result


def _unique(archs: Sequence[Tuple[str, Any]]) -> List[Tuple[str, Any]]:
    """One (name, arch) per arch, under its first name: an eval arch equal to max or min is not written twice."""
    seen_names, seen_archs, out = set(), set(), []
    for name, arch in archs:
        if name not in seen_names and arch not in seen_archs:
            seen_names.add(name)
            seen_archs.add(arch)
            out.append((name, arch))
    return out


def write_final(acc, cfg: TrainConfig, model: nn.Module, run_dir: Path, train_dataset: Any, val_dataset: Any,
                val_archs: Sequence[Tuple[str, Any]], recipe: Optional[CalibrationRecipe],
                training: Mapping[str, Any]) -> List[FinalModel]:
    """Write ``run_dir/final`` (see the module docstring); every process calls it, the main process writes.

    Args:
        acc: the run's Accelerator (evaluation is sharded over its processes).
        cfg: the run's config (batch sizes, workers, splits, data name).
        model: the trained model, unwrapped (a supernet or the student), with the run's preprocessing in its
            pretrained_cfg (`build_loaders`).
        run_dir: the run folder.
        train_dataset: the training split (without the seeded wrapper); copied, its transform is left alone.
        val_dataset: the validation split; copied likewise.
        val_archs: a supernet's (name, arch) to export (`validation_archs`).
        recipe: a supernet's calibration recipe (`final_recipe`).
        training: what the folders record about the run (e.g. run folder, epochs, steps).

    Returns:
        The written models, in order (a supernet run: its subnets, then ``supernet``).
    """
    final = run_dir / 'final'
    say = f'final models were not written; free some space, then run again with --resume {run_dir}'
    staging = staged_folder(final, overwrite=True) if acc.is_main_process else nullcontext(None)
    with no_space_left(run_dir, say), staging as tmp:
        if is_supernet(model):
            out = _write_subnets(acc, cfg, model, run_dir, train_dataset, val_dataset, val_archs, recipe, training,
                                 tmp)
        else:
            out = [_write_student(acc, cfg, model, val_dataset, final, tmp, training)]
    acc.wait_for_everyone()
    return out


def _write_subnets(acc, cfg: TrainConfig, supernet: nn.Module, run_dir: Path, train_dataset: Any, val_dataset: Any,
                   val_archs: Sequence[Tuple[str, Any]], recipe: CalibrationRecipe, training: Mapping[str, Any],
                   tmp: Optional[Path]) -> List[FinalModel]:
    final = run_dir / 'final'
    images = calibration_images(copy.copy(train_dataset), recipe, workers=cfg.workers, progress=not cfg.no_progress)
    source = {'name': f'{run_dir.name}/final/supernet', 'kind': 'run'}  # named as export names it, never by path
    if tmp is not None:
        meta = {**model_metadata(supernet), 'name': cfg.model, 'notes': SUPERNET_NOTE, 'training': dict(training)}
        write_model_folder(supernet, tmp / 'supernet', meta, final / 'supernet')
        source['sha256'] = sha256_file(tmp / 'supernet' / 'model.safetensors')
    out = []
    for name, arch in _unique(val_archs):
        static = _with_preprocessing(extract_subnet(supernet, arch).eval(), supernet, arch.resolution)
        batches = calibrate_with_recipe(static, images, recipe, arch.resolution)
        result = _measure(acc, static, val_dataset, cfg, cfg.val_split)
        meta = model_metadata(static)
        if tmp is not None:
            meta.update(name=f'{cfg.model.removesuffix("_supernet")}_{name}', supernet=source, training=dict(training),
                        results=[result],
                        calibration={'recipe': recipe.to_dict(), 'data': dataset_name(cfg), 'batches': batches})
            write_model_folder(static.cpu(), tmp / name, meta, final / name)
        out.append(FinalModel(name, final / name, result, arch.resolution, meta.get('mflops')))
    out.append(FinalModel('supernet', final / 'supernet', {}, max(supernet.space.resolutions)))
    return out


def _write_student(acc, cfg: TrainConfig, student: nn.Module, val_dataset: Any, final: Path, tmp: Optional[Path],
                   training: Mapping[str, Any]) -> FinalModel:
    # a contiguous copy: what `local-dir:` loads back, measured without touching the trained (DDP) model
    saved = copy.deepcopy(student).to(memory_format=torch.contiguous_format).eval()
    result = _measure(acc, saved, val_dataset, cfg, cfg.val_split)
    if tmp is not None:
        meta = {**model_metadata(saved), 'name': cfg.model, 'results': [result], 'training': dict(training)}
        write_model_folder(saved.cpu(), tmp, meta, final)
    return FinalModel('student', final, result, int(saved.pretrained_cfg['input_size'][-1]))


def read_final(run_dir: Path) -> List[FinalModel]:
    """The models an earlier run wrote into ``run_dir/final`` (for a finished run resumed again)."""
    final = run_dir / 'final'
    if (final / 'config.json').is_file():
        folders = [('student', final)]
    else:
        folders = sorted((p.name, p) for p in final.iterdir() if (p / 'config.json').is_file())
        folders = [f for f in folders if f[0] != 'supernet'] + [f for f in folders if f[0] == 'supernet']
    out = []
    for name, folder in folders:
        config = read_config(folder)
        meta = config.get('timm_alphanet', {})
        results = [r for r in meta.get('results') or [] if isinstance(r, Mapping)]
        size = (config.get('pretrained_cfg') or {}).get('input_size') or [None]
        out.append(FinalModel(name, folder, results[-1] if results else {}, size[-1], meta.get('mflops')))
    return out


def final_report(models: Sequence[FinalModel]) -> str:
    """The FINAL table: each saved model's top-1/top-5/loss as measured on it, with resolution and MFLOPs."""
    measured = {m.name: m.result for m in models if m.result}
    info = {m.name: {'res': m.resolution, **({'MFLOPs': float(f'{m.mflops:.4g}')} if m.mflops is not None else {})}
            for m in models if m.result}
    if not measured:
        return ''
    first = next(iter(measured.values()))
    return (f'final models, BN-calibrated where needed, measured as saved with timm\'s eval pipeline (their own '
            f'pretrained_cfg) on {first.get("num_images", "?")} images of split {first.get("split", "?")!r}:\n'
            + format_table(measured, info))


def _q(path: Any) -> str:
    return shlex.quote(str(path))


def next_steps(cfg: TrainConfig, run_dir: Path, models: Sequence[FinalModel]) -> List[str]:
    """The last lines of a run: where it is, the model folders, and the commands to run next with real paths."""
    lines = [f'run folder: {run_dir}' + (f' (also {run_dir.parent / "latest"})'
                                          if (run_dir.parent / 'latest').resolve() == run_dir.resolve() else '')]
    lines.append('models (load with timm.create_model(\'local-dir:<folder>\', pretrained=True) after '
                 '`import timm_alphanet`):')
    for m in models:
        what = (f'top1 {m.result["top1"]:.2f}' + (f', {m.resolution} px' if m.resolution else '')
                + (f', {m.mflops:.4g} MFLOPs' if m.mflops is not None else '')) if m.result else \
            'the weight-sharing supernet (calibrate a subnet\'s BN before use)'
        lines.append(f'  {m.folder}  {what}')
    data = cfg.data_dir if cfg.dataset == '' or (cfg.dataset == DIGITS and cfg.data_dir) else \
        (DIGITS if cfg.dataset == DIGITS else None)
    measured = [m for m in models if m.result]
    lines.append('next:')
    if measured and data is not None:
        split = '' if cfg.val_split == 'validation' else f' --split {_q(cfg.val_split)}'
        lines.append(f'  evaluate: alphanet-validate --model {_q(f"local-dir:{measured[0].folder}")} '
                     f'--data-dir {_q(data)}{split}')
    elif measured:
        lines.append(f'  evaluate: alphanet-validate reads image folders; {cfg.dataset!r} is not one')
    if any(m.name == 'supernet' for m in models):
        search = run_dir / 'search'
        # the digits demo gets the README's short search (minutes); the default (20 generations of 100) is hours
        short = ' --population 12 --generations 2' if cfg.dataset == DIGITS else ''
        lines.append(f'  search:   alphanet-search {_q(run_dir)} --output {_q(search)}{short}')
        lines.append(f'  export:   alphanet-export {_q(run_dir)} --pareto {_q(search / "pareto.json")} '
                     f'--output {_q(run_dir / "export")}')
    return lines
