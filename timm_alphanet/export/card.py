"""Model cards rendered from a folder's config.json with `huggingface_hub.ModelCard` / `ModelCardData`.

The card describes the model that is saved (an AlphaNet subnet, a supernet, or any other timm model), carries that
model's own license (from its `pretrained_cfg`, recorded in our metadata), real usage lines (``hf-hub:<repo>`` once
pushed, ``local-dir:<folder name>`` before: never this machine's paths), the metrics table, and `model-index` eval
results for the top-1/top-5 measured on the saved model under a named eval pipeline (`MEASURED_PIPELINES`). A
search's selection score is shown labelled as such and never published as an accuracy.
"""
from typing import Any, Dict, List, Mapping, Optional, Tuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ['render_card', 'card_tags', 'META_KEY', 'NONCOMMERCIAL_LICENSE', 'MEASURED_PIPELINES']

NONCOMMERCIAL_LICENSE = 'cc-by-nc-4.0'
PAPER = ('[AlphaNet: Improved Training of Supernets with Alpha-Divergence](https://arxiv.org/abs/2102.07954) '
         '(Wang et al., ICML 2021)')
META_KEY = 'timm_alphanet'  # config.json key holding our metadata (timm ignores keys it does not know)
# the eval pipelines a result measured on the saved model names (`evaluation.PIPELINES`), as cards describe them;
# a result under any other pipeline (an old export's copy of a search score) never enters the model-index
MEASURED_PIPELINES = {
    'timm': "timm eval pipeline (the model's pretrained_cfg: resize, centre crop, normalise)",
    'paper': "paper eval pipeline (resize 256 bicubic, centre crop 224, resize to the model's resolution)",
}


def _registered_by_us(architecture: str) -> bool:
    """Whether `architecture` is one of our timm entrypoints (then usage needs ``import timm_alphanet``)."""
    from timm.models import is_model, model_entrypoint

    return is_model(architecture) and model_entrypoint(architecture).__module__.startswith('timm_alphanet')


def card_tags(config: Mapping[str, Any]) -> List[str]:
    """Hub tags of the model a config.json describes."""
    meta = config.get(META_KEY, {})
    tags = ['image-classification', 'timm', 'timm_alphanet']
    if config['architecture'].startswith('alphanet_'):
        tags.append('alphanet')
    if meta.get('kind') == 'supernet':
        tags.append('supernet')
    if meta.get('pareto'):
        tags.append('pareto-front')
    if meta.get('onnx'):
        tags.append('onnx')
    return tags


def _fmt(value: Any, digits: int = 2) -> str:
    return f'{value:.{digits}f}' if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _result_label(r: Mapping[str, Any]) -> str:
    parts = [str(r.get('dataset', 'unknown data')), f"split `{r.get('split', 'unknown')}`"]
    if r.get('pipeline'):
        parts.append(MEASURED_PIPELINES.get(str(r['pipeline']), f"{r['pipeline']} pipeline"))
    if r.get('num_images'):
        parts.append(f"{r['num_images']} images")
    return ', '.join(parts)


def _eval_results(results: List[Mapping[str, Any]]) -> List[EvalResult]:
    """The model-index entries: results measured on this model under a named pipeline (the pipeline is the metric's
    config), nothing else."""
    out = []
    for r in results:
        if r.get('pipeline') not in MEASURED_PIPELINES:
            continue
        common = dict(task_type='image-classification', task_name='Image Classification',
                      dataset_type=str(r.get('dataset', 'unknown')), dataset_name=str(r.get('dataset', 'unknown')),
                      dataset_split=str(r.get('split', 'unknown')), metric_type='accuracy',
                      metric_config=f"{r['pipeline']} eval pipeline")
        for key, label in (('top1', 'Top-1 accuracy'), ('top5', 'Top-5 accuracy')):
            if isinstance(r.get(key), (int, float)):
                out.append(EvalResult(metric_name=label, metric_value=round(float(r[key]), 3), **common))
    return out


def _description(config: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    arch = config['architecture']
    kind = meta.get('kind')
    if kind == 'supernet':
        what = 'An AlphaNet weight-sharing supernet' if arch == 'alphanet_supernet' else \
            f'A weight-sharing supernet (`{arch}`)'
        text = (f'{what} for timm_alphanet: choose a subnet with '
                '`set_subnet(arch)`, calibrate its BatchNorm statistics with `timm_alphanet.calibrate_bn`, and '
                'extract it as a static model with `timm_alphanet.extract_subnet`.')
    elif kind == 'alphanet' or _registered_by_us(arch) and arch != 'alphanet_supernet':
        text = f'An AlphaNet subnet ({PAPER}) as a timm model (`{arch}`).'
    else:
        text = f'A `{arch}` timm model saved with timm_alphanet.'
    source = meta.get('supernet')
    if isinstance(source, Mapping) and source.get('sha256'):
        # by name (older folders recorded the path they were exported from: only its last part is shown)
        named = source.get('name') or str(source.get('spec', '?')).rstrip('/').rsplit('/', 1)[-1]
        text += (f" Extracted from the weight-sharing supernet `{named}` (weights sha256 "
                 f"`{str(source['sha256'])[:16]}…`).")
    pareto = meta.get('pareto')
    if isinstance(pareto, Mapping) and 'index' in pareto:
        text += (f" Point {pareto['index']} of the {pareto.get('num_points', '?')}-point Pareto front "
                 f"(objectives: {', '.join(map(str, pareto.get('objectives') or ['top-1', 'MFLOPs']))}) found by "
                 f"{'an unfinished run of ' if pareto.get('complete') is False else ''}`alphanet-search`.")
    return text


def _usage(config: Mapping[str, Any], meta: Mapping[str, Any], repo_id: Optional[str],
           folder_name: Optional[str]) -> List[str]:
    arch = config['architecture']
    # a folder by its own name, relative: a card is published, this machine's paths are nobody's business
    folder = folder_name or 'path/to/this-folder'
    spec = f'hf-hub:{repo_id}' if repo_id else f'local-dir:{folder}'
    lines = ['```python', 'import timm']
    if _registered_by_us(arch):
        lines.append('import timm_alphanet  # registers the AlphaNet models with timm')
    lines.append('')
    if not repo_id:
        lines.append(f'# run where the folder {folder}/ is (or give its path)')
    lines.append(f"model = timm.create_model('{spec}', pretrained=True).eval()")
    if meta.get('kind') == 'supernet':
        lines += ["supernet = model", "supernet.set_subnet(supernet.sample_subnet('min'))  # then calibrate_bn"]
    else:
        lines += ['data_config = timm.data.resolve_data_config(model=model)',
                  'transform = timm.data.create_transform(**data_config)',
                  'logits = model(transform(image).unsqueeze(0))  # image: a PIL image']
    lines.append('```')
    registered = _registered_hub_name(arch, repo_id)
    if registered:
        lines += ['', f"This repository holds the weights of `timm.create_model('{registered}', pretrained=True)`."]
    if meta.get('onnx'):
        lines += ['', '`model.onnx` (dynamic batch axis) runs with onnxruntime: '
                  "`onnxruntime.InferenceSession('model.onnx').run(None, {'input': batch})`."]
    return lines


def _registered_hub_name(arch: str, repo_id: Optional[str]) -> Optional[str]:
    """The registered model name whose `pretrained=True` downloads from `repo_id`, if any."""
    if not repo_id:
        return None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, allow_unregistered=True)
    return arch if cfg is not None and getattr(cfg, 'hf_hub_id', None) == repo_id else None


def _metrics(meta: Mapping[str, Any]) -> List[str]:
    rows = []
    arch = meta.get('arch')
    if isinstance(arch, Mapping) and 'resolution' in arch:
        rows.append(('resolution', f"{arch['resolution']} px"))
    if meta.get('mflops') is not None:
        rows.append(('MFLOPs (multiply-adds, official counter)', _fmt(meta['mflops'])))
    if meta.get('params_m') is not None:
        rows.append(('parameters (M)', _fmt(meta['params_m'])))
    latency = meta.get('latency')
    if isinstance(latency, Mapping) and latency.get('ms') is not None:
        rows.append(('latency', f"{_fmt(latency['ms'])} ms, batch {latency.get('batch_size', 1)}, on "
                                f"{latency.get('device', 'unknown device')} ({latency.get('source', 'measured')})"))
    elif meta.get('kind') != 'supernet':
        rows.append(('latency', 'not measured'))
    for r in meta.get('results') or []:
        for key in ('top1', 'top5'):
            if isinstance(r.get(key), (int, float)):
                rows.append((f"{'top-1' if key == 'top1' else 'top-5'} (%), {_result_label(r)}", _fmt(r[key])))
    rows += _search_rows(meta.get('search'))
    onnx = meta.get('onnx')
    if isinstance(onnx, Mapping):
        rows.append(('ONNX: max abs logit difference onnxruntime vs torch', f"{onnx.get('max_abs_diff', 0):.2e}"))
        if onnx.get('ort_images_per_s') is not None:
            rows.append(('ONNX: images/s onnxruntime vs torch eager',
                         f"{_fmt(onnx['ort_images_per_s'], 1)} vs {_fmt(onnx.get('torch_images_per_s'), 1)} "
                         f"(batch {onnx.get('batch_size')}, {onnx.get('device', 'unknown device')})"))
    if 'calibration' in meta:
        rows.append(('BatchNorm statistics', _calibration_summary(meta['calibration'])))
    source = meta.get('supernet')
    if isinstance(source, Mapping) and source.get('sha256'):
        rows.append(('source supernet sha256', f"`{source['sha256']}`"))
    rows.append(('timm_alphanet version', str(meta.get('version', 'unknown'))))
    return ['| | |', '|---|---|', *(f'| {k} | {v} |' for k, v in rows)]


def _search_rows(search: Any) -> List[Tuple[str, str]]:
    """The search's own figures for a front point, each labelled for what it is (not in the model-index)."""
    if not isinstance(search, Mapping):
        return []
    rows = []
    if isinstance(search.get('selection_top1'), (int, float)):
        rows.append((f"search selection score: top-1 (%) on held-out `{search.get('selection_split', '?')}` images "
                     '(ranks subnets during alphanet-search; not a validation accuracy)',
                     _fmt(search['selection_top1'])))
    if isinstance(search.get('validation_top1'), (int, float)):
        rows.append((f"search's validation estimate: top-1 (%) on `{search.get('validation_split', '?')}` with the "
                     "search's pipeline (calibration recipe transform; not timm's pipeline)",
                     _fmt(search['validation_top1'])))
    return rows


def _calibration_summary(calibration: Any) -> str:
    if not isinstance(calibration, Mapping):
        return '**not calibrated** (see the notes below)'
    recipe = calibration.get('recipe', calibration)
    data = f" of `{calibration['data']}`" if calibration.get('data') else ''
    return (f"calibrated on {recipe.get('num_images', '?')} images{data} (split `{recipe.get('split', '?')}`, seed "
            f"{recipe.get('seed', '?')}, batches of {recipe.get('batch_size', '?')}, "
            f"{recipe.get('image_size', '?')} px eval transform)")


def _arch_table(arch: Mapping[str, Any], header: str = '| gene | value |') -> List[str]:
    lines = [header, '|---|---|']
    for k, v in arch.items():
        lines.append(f"| {k} | {', '.join(map(str, v)) if isinstance(v, list) else v} |")
    return lines


def _license_text(license_id: str) -> str:
    if license_id == NONCOMMERCIAL_LICENSE:
        return ('CC-BY-NC-4.0 (non-commercial), the license of the AlphaNet architectures and of the original '
                'release (facebookresearch/AlphaNet) this model derives from.')
    if license_id in (None, '', 'unknown'):
        return 'Unknown: the model\'s `pretrained_cfg` records no license; ask the weights\' author before reuse.'
    return f'`{license_id}` (the license recorded in the model\'s `pretrained_cfg`).'


def render_card(config: Mapping[str, Any], repo_id: Optional[str] = None,
                folder_name: Optional[str] = None) -> ModelCard:
    """The model card of the model folder whose config.json is `config`.

    Args:
        config: the folder's config.json (timm keys plus our ``timm_alphanet`` metadata).
        repo_id: the Hub repository the folder is (being) pushed to; usage lines then load ``hf-hub:<repo_id>``.
        folder_name: the folder's name (never a path), for ``local-dir:`` usage lines before it is pushed.
    """
    meta: Dict[str, Any] = dict(config.get(META_KEY) or {})
    name = meta.get('name') or (repo_id.split('/')[-1] if repo_id else config['architecture'])
    license_id = meta.get('license') or 'unknown'
    results = [r for r in meta.get('results') or [] if isinstance(r, Mapping)]
    data = ModelCardData(
        license=license_id, library_name='timm', tags=card_tags(config), pipeline_tag='image-classification',
        base_model=meta.get('base_model') or None, model_name=name,
        eval_results=_eval_results(results) or None,
    )
    body = [f'# {name}', '', _description(config, meta), '', '## Usage', '',
            *_usage(config, meta, repo_id, folder_name),
            '', '## Metrics', '', *_metrics(meta)]
    if isinstance(meta.get('arch'), Mapping):
        body += ['', '## Architecture', '', *_arch_table(meta['arch'])]
    calibration = meta.get('calibration')
    if isinstance(calibration, Mapping):
        recipe = calibration.get('recipe', calibration)
        body += ['', '## BatchNorm calibration', '',
                 'Running statistics were recomputed for this subnet (reset, then the cumulative average over the '
                 'calibration batches in train mode, no gradients) with this recipe (`timm_alphanet.calibration.'
                 'CalibrationRecipe`):', '', *_arch_table(recipe, header='| recipe | value |')]
    pareto = meta.get('pareto')
    if isinstance(pareto, Mapping) and pareto.get('plot'):
        body += ['', '## Pareto front', '', f"![The Pareto front; this model is the marked point]({pareto['plot']})"]
    if meta.get('notes'):
        body += ['', '## Notes', '', str(meta['notes'])]
    body += ['', '## License', '', _license_text(license_id)]
    if config['architecture'].startswith('alphanet_'):
        body += ['', '## Citation', '', '```bibtex',
                 '@inproceedings{wang2021alphanet,', '  title={AlphaNet: Improved Training of Supernets with '
                 'Alpha-Divergence},', '  author={Wang, Dilin and Gong, Chengyue and Li, Meng and Liu, Qiang and '
                 'Chandra, Vikas},', '  booktitle={ICML}, year={2021}', '}', '```']
    return ModelCard(f'---\n{data.to_yaml()}\n---\n' + '\n'.join(body) + '\n')
