"""Validation on Accelerate: top-1/top-5/loss over the whole (sharded) validation set via `gather_for_metrics`.

Two eval pipelines: timm's (the model's `pretrained_cfg`: resize to ``input_size / crop_pct``, centre crop
``input_size``) and the paper's (resize 256 bicubic, centre crop 224, then the 224 crop resized bicubically to the
model's resolution, as the published AlphaNet numbers were measured).
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm.auto import tqdm

from .calibration import calibrate_bn, resize_to
from .loss import alpha_divergence

__all__ = ['evaluate', 'validate_subnets', 'format_table', 'PIPELINES', 'paper_transform', 'eval_pipeline',
           'validate_model', 'kd_mechanism', 'summarize_kd_mechanism', 'paired_interval', 'compare_kd_mechanism',
           'collect_logits', 'kd_report', 'format_kd_report', 'KD_MECHANISM_KEYS', 'KD_SECONDARY_MIN',
           'KD_UNSURE_BELOW', 'kd_report_model']

PIPELINES = ('timm', 'paper')


@torch.no_grad()
def evaluate(accelerator, model: Callable[[torch.Tensor], torch.Tensor], loader: Iterable,
             resolution: Optional[int] = None, desc: str = 'eval', progress: bool = False) -> Dict[str, float]:
    """Top-1, top-5 (in %) and mean cross-entropy of `model` on `loader` (inputs resized to `resolution`)."""
    if isinstance(model, nn.Module):
        model.eval()
    # correct top-1, correct top-k and summed loss, kept on the device: read once at the end, not per batch
    totals = None
    count = 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not (progress and accelerator.is_main_process)):
        if resolution is not None:
            x = resize_to(x, resolution)
        with accelerator.autocast():
            out = model(x)
        out, y = accelerator.gather_for_metrics((out.float(), y))
        k = min(5, out.shape[-1])
        hits = out.topk(k, dim=1).indices.eq(y.reshape(-1, 1))
        batch = torch.stack([hits[:, 0].sum().double(), hits.sum().double(),
                             F.cross_entropy(out, y, reduction='sum').double()])
        totals = batch if totals is None else totals + batch
        count += y.shape[0]
    correct1, correct5, loss_sum = totals.tolist() if totals is not None else (0.0, 0.0, 0.0)
    count = max(count, 1)
    return {'top1': 100.0 * correct1 / count, 'top5': 100.0 * correct5 / count, 'loss': loss_sum / count}


def validate_subnets(accelerator, supernet: nn.Module, archs: List[Tuple[str, object]], calib_loader: Iterable,
                     val_loader: Iterable, calib_batches: int, progress: bool = False) -> Dict[str, Dict[str, float]]:
    """BN-calibrate then evaluate each (name, arch) of the supernet; the active subnet is restored.

    An arch listed under several names (e.g. ``min`` and the width it is) is calibrated and evaluated once.
    """
    previous = supernet.active_subnet
    results: Dict[str, Dict[str, float]] = {}
    done: Dict[Any, Dict[str, float]] = {}
    try:
        for name, arch in archs:
            supernet.set_subnet(arch)
            key = supernet.active_subnet  # the validated arch: a hashable frozen config
            if key not in done:
                calibrate_bn(supernet, calib_loader, calib_batches, progress=False)
                done[key] = evaluate(accelerator, supernet, val_loader, key.resolution, desc=f'eval {name}',
                                     progress=progress)
            results[name] = dict(done[key])
    finally:
        supernet.set_subnet(previous)
        supernet.train()
    return results


def format_table(results: Dict[str, Dict[str, float]], extra: Optional[Dict[str, Dict[str, object]]] = None) -> str:
    """A markdown table of per-model results (extra: more columns per row, e.g. MFLOPs)."""
    extra = extra or {}
    extra_cols = sorted({k for v in extra.values() for k in v})
    header = ['model', *extra_cols, 'top1', 'top5', 'loss']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name, r in results.items():
        cols = [str(extra.get(name, {}).get(c, '')) for c in extra_cols]
        lines.append(f"| {name} | " + ''.join(f'{c} | ' for c in cols)
                     + f"{r['top1']:.2f} | {r['top5']:.2f} | {r['loss']:.4f} |")
    return '\n'.join(lines)


def paper_transform(mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                    resize: int = 256, crop: int = 224) -> Callable[[Any], torch.Tensor]:
    """The paper's eval preprocessing of a PIL image: shorter side to `resize` (bicubic), centre crop `crop`, tensor,
    normalise. The resize to the model's resolution happens on the batch (`evaluate(..., resolution=)`)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def eval_pipeline(model: nn.Module, pipeline: str = 'timm') -> Tuple[Callable[[Any], torch.Tensor], Optional[int]]:
    """(image transform, resolution batches are resized to or None) of `pipeline` for `model`.

    ``timm``: timm's eval transform from the model's `pretrained_cfg` (what ``train.py`` validates with);
    ``paper``: `paper_transform` with the model's mean/std, then batches resized to its input size.
    """
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    if pipeline == 'timm':
        return create_transform(**cfg), None
    if pipeline == 'paper':
        return paper_transform(cfg['mean'], cfg['std']), int(cfg['input_size'][-1])
    raise ValueError(f'unknown eval pipeline {str(pipeline)[:40]!r}; allowed: {list(PIPELINES)}')


def _sharded_eval_loader(accelerator, model: nn.Module, dataset: Any, pipeline: str, batch_size: int,
                         workers: int) -> Tuple[nn.Module, Any, Optional[int]]:
    """`model` on the Accelerator's device and a loader of `dataset` under the model's `pipeline` transform, sharded
    over the processes; returns (model, loader, resolution)."""
    from torch.utils.data import DataLoader

    transform, resolution = eval_pipeline(model, pipeline)
    dataset.transform = transform
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=accelerator.device.type == 'cuda')
    # only the loader is prepared (sharded): an evaluated model needs no DDP wrapper, and `prepare` would keep a
    # reference to it in the Accelerator for the rest of the run
    return model.to(accelerator.device), accelerator.prepare_data_loader(loader), resolution


def validate_model(accelerator, model: nn.Module, dataset: Any, pipeline: str = 'timm', batch_size: int = 64,
                   workers: int = 0, progress: bool = False) -> Dict[str, Any]:
    """Top-1/top-5 (%), mean loss and image count of `model` on `dataset` (its transform is set by `pipeline`).

    The data is sharded over the Accelerator's processes; every process gets the same totals.
    """
    model, loader, resolution = _sharded_eval_loader(accelerator, model, dataset, pipeline, batch_size, workers)
    result: Dict[str, Any] = evaluate(accelerator, model, loader, resolution=resolution, desc='validate',
                                      progress=progress)
    result['num_images'] = len(dataset)
    result['pipeline'] = pipeline
    return result


# ---- the paper's mechanism, measured: how a student's distribution differs from its teacher's, image by image
KD_SECONDARY_MIN = 0.05  # a teacher class other than its top one with at least this probability is a "secondary" class
KD_UNSURE_BELOW = 0.5  # the teacher is "unsure" on an image whose top class has less probability than this
KD_MECHANISM_KEYS = ('kl', 'd_minus1', 'entropy_gap', 'top_gap', 'secondary_gap', 'agree')


def kd_mechanism(student_logits: torch.Tensor, teacher_logits: torch.Tensor, clip: float = 5.0,
                 secondary_min: float = KD_SECONDARY_MIN, unsure_below: float = KD_UNSURE_BELOW
                 ) -> Dict[str, torch.Tensor]:
    """Per-image figures of how the student's softmax ``q`` departs from the teacher's ``p`` (float64, shape (N,)).

    - ``kl``: KL(p || q), the divergence KL-KD minimises (`loss.alpha_divergence` at alpha = 1);
    - ``d_minus1``: D_-1(p || q) = sum_i q_i (min(q_i / p_i, clip) - 1) / 2, the loss's alpha = -1 divergence with
      its importance-weight clip (the one the adaptive loss compares against KL); it is large where the student
      puts mass the teacher does not (over-estimated uncertainty), KL where it misses mass the teacher has;
    - ``entropy_gap``: H(q) - H(p) in nats (> 0: the student is less sure than the teacher);
    - ``top_gap``: q - p on the teacher's top class (< 0: the student under-weights it);
    - ``secondary_gap``: the sum of q - p over the teacher's secondary classes (not its top, p >= `secondary_min`);
      NaN on images without one (``has_secondary`` False), so means over it use only images that have one;
    - ``agree``: 1.0 where the student's top-1 class is the teacher's, else 0.0;
    - ``unsure``: the teacher's top probability is below `unsure_below` (bool); ``teacher_top_p`` that probability.

    Logits are (N, C); -inf logits are masked classes (as in `loss`). Nothing here carries gradient. KL and D_-1
    come from `loss.alpha_divergence`, so the report measures exactly the divergences the KD losses compare.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f'logits must be two (N, C) tensors of one shape, got {tuple(student_logits.shape)} and '
                         f'{tuple(teacher_logits.shape)}')
    if not 0 < secondary_min <= 1 or not 0 < unsure_below <= 1:
        raise ValueError(f'secondary_min and unsure_below must be in (0, 1], got {secondary_min}, {unsure_below}')
    with torch.no_grad():
        z_s, z_t = student_logits.detach().double(), teacher_logits.detach().double()
        log_q, log_p = z_s.log_softmax(-1), z_t.log_softmax(-1)
        q, p = log_q.exp(), log_p.exp()
        # 0 log 0 = 0: a masked class adds nothing to an entropy
        entropy_q = -torch.where(q > 0, q * log_q, torch.zeros_like(q)).sum(-1)
        entropy_p = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)
        teacher_top_p, teacher_top = p.max(-1)
        rows = torch.arange(p.shape[0], device=p.device)
        secondary = p >= secondary_min
        secondary[rows, teacher_top] = False
        has_secondary = secondary.any(-1)
        secondary_gap = torch.where(secondary, q - p, torch.zeros_like(p)).sum(-1)
        return {
            'kl': alpha_divergence(z_s, z_t, 1.0).divergence,
            'd_minus1': alpha_divergence(z_s, z_t, -1.0, clip=clip).divergence,
            'entropy_gap': entropy_q - entropy_p,
            'top_gap': q[rows, teacher_top] - teacher_top_p,
            'secondary_gap': torch.where(has_secondary, secondary_gap, torch.full_like(secondary_gap, float('nan'))),
            'agree': (q.argmax(-1) == teacher_top).double(),
            'unsure': teacher_top_p < unsure_below,
            'has_secondary': has_secondary,
            'teacher_top_p': teacher_top_p,
        }


def summarize_kd_mechanism(mechanism: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Means of `kd_mechanism`'s figures over the images: each of `KD_MECHANISM_KEYS` (``secondary_gap`` over
    the images with a secondary class), ``agree_unsure`` (top-1 agreement where the teacher is unsure; NaN when
    it never is), the fractions ``unsure``, ``has_secondary`` and ``student_less_sure`` (entropy gap > 0), and
    ``num_images``."""
    out = {key: _nanmean(mechanism[key]) for key in KD_MECHANISM_KEYS}
    unsure = mechanism['unsure']
    out['agree_unsure'] = _nanmean(mechanism['agree'][unsure]) if bool(unsure.any()) else float('nan')
    out['unsure'] = float(unsure.double().mean())
    out['has_secondary'] = float(mechanism['has_secondary'].double().mean())
    out['student_less_sure'] = float((mechanism['entropy_gap'] > 0).double().mean())
    out['num_images'] = int(unsure.numel())
    return out


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~torch.isnan(values)]
    return float(kept.mean()) if kept.numel() else float('nan')


def paired_interval(a: torch.Tensor, b: torch.Tensor, confidence: float = 0.95, method: str = 't',
                    num_bootstrap: int = 2000, generator: Optional[torch.Generator] = None) -> Dict[str, float]:
    """Mean of ``a - b`` over pairs (e.g. two students' figures on the same images, or two methods on the same
    seeds) with a two-sided `confidence` interval; pairs where either value is NaN are dropped.

    ``method='t'``: Student-t interval of the mean difference (scipy). ``method='bootstrap'``: percentile interval of
    `num_bootstrap` resampled means, drawn with `generator` (required: the interval is then reproducible).

    Returns:
        ``mean``, ``low``, ``high``, ``std`` (sample std of the differences) and ``n``; the interval is NaN below two
        pairs (one pair has no spread).
    """
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f'a and b must be 1-d of one shape, got {tuple(a.shape)} and {tuple(b.shape)}')
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must be in (0, 1), got {confidence}')
    if method not in ('t', 'bootstrap'):
        raise ValueError(f"method must be 't' or 'bootstrap', got {str(method)[:40]!r}")
    if method == 'bootstrap' and (generator is None or num_bootstrap < 1):
        raise ValueError('a bootstrap interval needs an explicit torch.Generator and num_bootstrap >= 1')
    diff = a.detach().double().cpu() - b.detach().double().cpu()
    diff = diff[~torch.isnan(diff)]
    n = int(diff.numel())
    nan = float('nan')
    if n == 0:
        return {'mean': nan, 'low': nan, 'high': nan, 'std': nan, 'n': 0}
    mean = float(diff.mean())
    std = float(diff.std()) if n > 1 else nan
    if n < 2:
        return {'mean': mean, 'low': nan, 'high': nan, 'std': std, 'n': n}
    if method == 't':
        from .utils import import_optional
        t = import_optional('scipy.stats', 'a Student-t interval').t
        half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / n ** 0.5
        low, high = mean - half, mean + half
    else:
        idx = torch.randint(0, n, (num_bootstrap, n), generator=generator, device=generator.device)
        means = diff.to(generator.device)[idx].mean(-1).cpu()
        tail = (1 - confidence) / 2
        low, high = (float(v) for v in torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)))
    return {'mean': mean, 'low': low, 'high': high, 'std': std, 'n': n}


def compare_kd_mechanism(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], confidence: float = 0.95,
                         method: str = 't', num_bootstrap: int = 2000,
                         generator: Optional[torch.Generator] = None) -> Dict[str, Dict[str, float]]:
    """Paired intervals (`paired_interval`) of student A minus student B for each `kd_mechanism` figure, both
    measured against the same teacher on the same images; ``agree_unsure`` pairs only the images where the teacher
    is unsure."""
    if not torch.equal(a['unsure'], b['unsure']):
        raise ValueError('the two students were not measured against the same teacher on the same images')
    kwargs = dict(confidence=confidence, method=method, num_bootstrap=num_bootstrap, generator=generator)
    out = {key: paired_interval(a[key], b[key], **kwargs) for key in KD_MECHANISM_KEYS}
    unsure = a['unsure']
    out['agree_unsure'] = paired_interval(a['agree'][unsure], b['agree'][unsure], **kwargs)
    return out


@torch.no_grad()
def collect_logits(accelerator, model: Callable[[torch.Tensor], torch.Tensor],
                   teacher: Callable[[torch.Tensor], torch.Tensor], loader: Iterable, resolution: Optional[int] = None,
                   desc: str = 'kd report', progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(student logits, teacher logits, targets) over the whole (sharded) `loader`, gathered on every process, in
    float32 on the CPU. Both see the same batch (resized to `resolution`); `teacher` takes the student's input (e.g.
    `AlphaDistillationTask.teacher_logits`, which re-normalises it for the teacher)."""
    if isinstance(model, nn.Module):
        model.eval()
    parts: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not (progress and accelerator.is_main_process)):
        if resolution is not None:
            x = resize_to(x, resolution)
        with accelerator.autocast():
            out, ref = model(x), teacher(x)
        out, ref, y = accelerator.gather_for_metrics((out.float(), ref.float(), y))
        parts.append((out.cpu(), ref.cpu(), y.cpu()))
    if not parts:
        raise ValueError('the loader gave no images')
    return tuple(torch.cat(t) for t in zip(*parts))  # type: ignore[return-value]


def kd_report(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              clip: float = 5.0) -> Dict[str, Any]:
    """`summarize_kd_mechanism` of a student against its teacher, with both models' top-1 (%) on `targets`."""
    report: Dict[str, Any] = summarize_kd_mechanism(kd_mechanism(student_logits, teacher_logits, clip=clip))
    report['student_top1'] = 100.0 * float((student_logits.argmax(-1) == targets).double().mean())
    report['teacher_top1'] = 100.0 * float((teacher_logits.argmax(-1) == targets).double().mean())
    return report


def format_kd_report(report: Dict[str, Any]) -> str:
    """`kd_report` as lines of text (what ``alphanet-validate --kd-report`` prints)."""
    return '\n'.join([
        f"student top1 {report['student_top1']:.3f}, teacher top1 {report['teacher_top1']:.3f} "
        f"({report['num_images']} images)",
        f"KL(p||q) {report['kl']:.4f}  D_-1(p||q) {report['d_minus1']:.4f}  entropy gap H(q)-H(p) "
        f"{report['entropy_gap']:+.4f} (student less sure on {100 * report['student_less_sure']:.1f} %)",
        f"q-p on the teacher's top class {report['top_gap']:+.4f}; on its secondary classes (p >= "
        f"{KD_SECONDARY_MIN:g}) {report['secondary_gap']:+.4f} ({100 * report['has_secondary']:.1f} % of images "
        "have one)",
        f"top-1 agreement {100 * report['agree']:.2f} %; where the teacher is unsure (top p < {KD_UNSURE_BELOW:g}, "
        f"{100 * report['unsure']:.1f} % of images) {100 * report['agree_unsure']:.2f} %",
    ])


def kd_report_model(accelerator, model: nn.Module, teacher: Callable[[torch.Tensor], torch.Tensor], dataset: Any,
                    pipeline: str = 'timm', batch_size: int = 64, workers: int = 0, clip: float = 5.0,
                    progress: bool = False) -> Dict[str, Any]:
    """`kd_report` of `model` against `teacher` on `dataset`, loaded as `validate_model` loads it (the student's
    eval pipeline; `teacher` gets the student's input, e.g. `AlphaDistillationTask.teacher_logits`, as in training).
    The data is sharded over the Accelerator's processes; every process gets the same report."""
    model, loader, resolution = _sharded_eval_loader(accelerator, model, dataset, pipeline, batch_size, workers)
    logits, teacher_out, targets = collect_logits(accelerator, model, teacher, loader, resolution, progress=progress)
    report = kd_report(logits, teacher_out, targets, clip=clip)
    report['pipeline'] = pipeline
    return report
