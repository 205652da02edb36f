"""The comparison protocol the reproduction scripts share, fixed before any result is looked at.

What it fixes (the reproduction reports print `PROTOCOL` verbatim):

- data: the teacher learns on a split disjoint from the students' (`disjoint_splits`), so its soft labels carry
  information on the students' inputs; reports state that information (`teacher_information`: accuracy and KL from
  the teacher to the smoothed labels there, which must be clearly > 0);
- a sane start: zero-initialised (or scaled) classifier, the initial logit scale reported (`logit_scale`);
- the loss: KD as a convex mix ``(1 - l) CE + l KD`` (`convex_weights`), so every method has the loss scale of the
  label loss alone (CE + KD at 1 + 1 doubles the step size, which alone cost as much as KD "cost");
- the learning rate: each method's from the same grid, on a held-out part of the students' *training* split, with
  the same number of tuning runs per method (`choose_lr`); the validation images are never used to choose;
- the measure: last-epoch validation top-1, paired by seed (same data, order and initialisation per seed);
- the hypotheses, in advance: H1 KL-KD > no KD (one-sided paired t, 5 %); H2 alpha-KD is not worse than KL-KD by more
  than `NONINFERIORITY_MARGIN` points (one-sided 95 % lower bound of alpha - KL above -margin); `paired_test`;
- power: every report states the smallest effect its seed count detects with 80 % power at 5 % one-sided, from the
  observed paired spread (`min_detectable_effect`), and the seeds a given effect would need (`seeds_needed`).
"""
import math
import random
import statistics
from typing import Any, Callable, Dict, Hashable, List, Sequence, Tuple

__all__ = ['PROTOCOL', 'NONINFERIORITY_MARGIN', 'SIGNIFICANCE', 'POWER', 'LR_GRID_FACTORS', 'disjoint_splits',
           'convex_weights', 'choose_lr', 'paired_test', 'min_detectable_effect', 'seeds_needed',
           'teacher_information', 'logit_scale', 'hypotheses_lines', 'holdout_folders', 'logit_scale_lines',
           'tuning_table', 'add_tuning_arguments', 'check_tuning_arguments', 'initial_logit_scale']

NONINFERIORITY_MARGIN = 1.0  # top-1 points: the paper's alpha - KL gains are +0.2 to +1, so "not worse by 1"
SIGNIFICANCE = 0.05  # one-sided
POWER = 0.8
LR_GRID_FACTORS = (0.25, 0.5, 1.0, 2.0)  # the grid around a script's base lr: the same for every method

PROTOCOL = (
    'Protocol (fixed before the runs): teacher trained on a split disjoint from the students\' (with augmentation), '
    'its accuracy and KL to the smoothed labels on the students\' inputs reported; zero-initialised classifier '
    '(initial logit scale reported); KD as a convex mix (1 - l) CE + l KD; each method\'s lr chosen from one grid '
    'on a held-out part of the training split, the same number of tuning runs per method; seeds paired across '
    'methods; last-epoch validation top-1. Hypotheses: H1 KL-KD > no KD (one-sided paired t at 5 %); H2 alpha-KD '
    f'non-inferior to KL-KD with margin {NONINFERIORITY_MARGIN:g} point (one-sided 95 % lower bound > '
    f'-{NONINFERIORITY_MARGIN:g}). Minimum detectable effect: 80 % power, 5 % one-sided, from the observed paired '
    'spread.')


def disjoint_splits(labels: Sequence[Hashable], fractions: Sequence[float], seed: int = 0) -> List[List[int]]:
    """Indices of `labels` split into disjoint, per-class stratified parts of the given `fractions` (summing to at most
    1; what is left over is unused), shuffled with ``random.Random(seed)`` (never the runs' seeds: every method and
    seed sees the same parts). Each class gives ``round(fraction * its count)`` images to each part, in order."""
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f'fractions must be >= 0 and sum to at most 1, got {list(fractions)}')
    rng = random.Random(seed)
    by_class: Dict[Hashable, List[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    parts: List[List[int]] = [[] for _ in fractions]
    for label in sorted(by_class, key=repr):
        idx = by_class[label]
        rng.shuffle(idx)
        start = 0
        for part, fraction in zip(parts, fractions):
            take = min(len(idx) - start, round(fraction * len(idx)))
            part.extend(idx[start:start + take])
            start += take
    return [sorted(p) for p in parts]


def holdout_folders(folder: Any, holdout: float) -> Tuple[Any, Any]:
    """`folder`'s training images split once (per class, `disjoint_splits`, seed 0) into a fit part and a
    held-out part of share `holdout`, as two image folders next to it (written once, atomically): the reported runs'
    (train: the fit part; validation: `folder`'s, the reported images) and the tuning runs' (train: the fit part;
    validation: the held-out part). The lr is chosen on the latter, never on the reported validation images."""
    import shutil
    from pathlib import Path

    from timm_alphanet.utils import staged_directory
    folder = Path(folder)
    fit_dir = folder.parent / f'{folder.name}_fit{1 - holdout:g}'
    tune_dir = folder.parent / f'{folder.name}_tune{holdout:g}'
    files = sorted(p.relative_to(folder / 'train') for p in (folder / 'train').glob('*/*'))
    fit, held = disjoint_splits([f.parent.name for f in files], (1 - holdout, holdout), seed=0)
    validation = sorted(p.relative_to(folder / 'validation') for p in (folder / 'validation').glob('*/*'))
    for target, parts in ((fit_dir, {'train': (folder / 'train', [files[i] for i in fit]),
                                     'validation': (folder / 'validation', validation)}),
                          (tune_dir, {'train': (folder / 'train', [files[i] for i in fit]),
                                      'validation': (folder / 'train', [files[i] for i in held])})):
        if (target / 'train').is_dir():
            continue
        with staged_directory(target, if_exists='keep') as tmp:
            for split, (source, names) in parts.items():
                for name in names:
                    (tmp / split / name.parent).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / name, tmp / split / name)
    return fit_dir, tune_dir


def add_tuning_arguments(parser: Any, holdout: float, tuning_seeds: Sequence[int]) -> None:
    """The lr-tuning options every reproduction script has: ``--lr-grid-factors``, ``--tuning-seeds``,
    ``--holdout-fraction``, ``--tune-data-dir`` and ``--no-tune`` (`check_tuning_arguments` validates them)."""
    parser.add_argument('--lr-grid-factors', type=float, nargs='+', default=list(LR_GRID_FACTORS),
                        help='the lr grid every method is tuned over: base lr x these (default '
                             f'{list(LR_GRID_FACTORS)})')
    parser.add_argument('--tuning-seeds', type=int, nargs='+', default=list(tuning_seeds),
                        help='seeds of the tuning runs (per lr and method; disjoint from --seeds)')
    parser.add_argument('--holdout-fraction', type=float, default=holdout,
                        help='digits: share of the training images held out to choose the lr (the reported runs '
                             'train on the rest)')
    parser.add_argument('--tune-data-dir', default=None,
                        help='image folder of the tuning runs with --data-dir / --dataset: train/ a part of the '
                             'training split, validation/ a held-out part of it (never the reported validation images)')
    parser.add_argument('--no-tune', dest='tune', action='store_false', help='no lr tuning: every run at the base lr')


def check_tuning_arguments(parser: Any, args: Any, given_data: bool, data_dir: Any = None) -> None:
    """`parser.error` on bad `add_tuning_arguments` values (`given_data`: the runs read --data-dir / --dataset,
    `data_dir` that folder: the tuning folder must not score on its validation images)."""
    if not 0 < args.holdout_fraction < 1:
        parser.error(f'--holdout-fraction must be in (0, 1), got {args.holdout_fraction}')
    if not args.tune:
        return
    if set(args.tuning_seeds) & set(args.seeds) or len(set(args.tuning_seeds)) != len(args.tuning_seeds):
        parser.error(f'--tuning-seeds must be distinct and disjoint from --seeds, got {args.tuning_seeds}')
    if not args.lr_grid_factors or not min(args.lr_grid_factors) > 0 or not max(args.lr_grid_factors) < math.inf:
        parser.error(f'--lr-grid-factors must be positive numbers, got {args.lr_grid_factors}')
    if given_data and args.tune_data_dir is None:
        parser.error('lr tuning on given data needs --tune-data-dir (a held-out part of the training split), '
                     'or --no-tune')
    if args.tune_data_dir is not None and data_dir is not None:
        from pathlib import Path
        tune_val, val = (Path(d, 'validation').resolve() for d in (args.tune_data_dir, data_dir))
        if tune_val == val:  # choosing on the reported images is what the protocol forbids
            parser.error('--tune-data-dir has the same validation/ folder as --data-dir: the lr would be chosen on '
                         'the reported images; give a held-out part of the training split')


def convex_weights(kd_share: float) -> Tuple[float, float]:
    """(label-loss weight, KD weight) = (1 - l, l): every method then has the label loss's scale."""
    if not 0 <= kd_share <= 1:
        raise ValueError(f'the KD share l must be in [0, 1], got {kd_share}')
    return 1.0 - kd_share, kd_share


def choose_lr(grid: Sequence[float], score: Callable[[float, int], float], tuning_seeds: Sequence[int]
              ) -> Tuple[float, Dict[float, float]]:
    """The lr of `grid` with the best mean held-out score over `tuning_seeds` (ties: the smaller lr), and every lr's
    mean. ``score(lr, seed)`` trains on the training part and scores on the held-out part; every method calls this
    with the same grid and seeds, so each gets the same number of tuning runs."""
    if not grid or not tuning_seeds:
        raise ValueError('choose_lr needs a non-empty grid and tuning seeds')
    means = {lr: statistics.fmean(score(lr, s) for s in tuning_seeds) for lr in grid}
    best = max(sorted(means), key=lambda lr: means[lr])  # max keeps the first (smallest) of equal scores
    return best, means


def _t():
    from scipy.stats import t
    return t


def paired_test(diffs: Sequence[float], margin: float = 0.0) -> Dict[str, float]:
    """One-sided paired t-test of ``mean(diffs) > -margin`` (margin 0: superiority, > 0: non-inferiority).

    Returns mean, std, n, the one-sided 95 % lower bound of the mean, t and the one-sided p-value (NaN for fewer
    than two pairs or no spread)."""
    n = len(diffs)
    nan = math.nan
    if n == 0:
        return {'mean': nan, 'std': nan, 'n': 0, 'lower95': nan, 't': nan, 'p': nan}
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if n > 1 else nan
    if n < 2 or not std > 0:
        return {'mean': mean, 'std': std, 'n': n, 'lower95': nan, 't': nan, 'p': nan}
    se = std / math.sqrt(n)
    t = _t()
    stat = (mean + margin) / se
    return {'mean': mean, 'std': std, 'n': n, 'lower95': mean - float(t.ppf(1 - SIGNIFICANCE, n - 1)) * se,
            't': stat, 'p': float(t.sf(stat, n - 1))}


def min_detectable_effect(paired_std: float, n: int, significance: float = SIGNIFICANCE, power: float = POWER
                          ) -> float:
    """Smallest true mean paired difference a one-sided paired t-test of `n` pairs detects with `power`, given the
    paired differences' std: ``(t_{1-a, n-1} + t_{power, n-1}) * std / sqrt(n)`` (the usual t approximation of the
    noncentral t; NaN below two pairs or without a spread)."""
    if n < 2 or not paired_std >= 0:
        return math.nan
    t = _t()
    return (float(t.ppf(1 - significance, n - 1)) + float(t.ppf(power, n - 1))) * paired_std / math.sqrt(n)


def seeds_needed(paired_std: float, effect: float, significance: float = SIGNIFICANCE, power: float = POWER,
                 limit: int = 10 ** 7) -> int:
    """Fewest pairs whose `min_detectable_effect` is at most `effect` (`limit` + 1 if none up to `limit`)."""
    if not effect > 0 or not paired_std >= 0:
        raise ValueError(f'effect must be > 0 and std >= 0, got {effect}, {paired_std}')
    lo, hi = 2, 2
    while min_detectable_effect(paired_std, hi, significance, power) > effect:
        if hi > limit:
            return limit + 1
        lo, hi = hi, hi * 2
    while lo < hi:  # the MDE falls with n: bisect for the first n that reaches `effect`
        mid = (lo + hi) // 2
        if min_detectable_effect(paired_std, mid, significance, power) <= effect:
            hi = mid
        else:
            lo = mid + 1
    return lo


def teacher_information(teacher_logits, labels, smoothing: float) -> Dict[str, float]:
    """The teacher's accuracy (%) on the students' inputs and the mean KL(p_teacher || smoothed labels) in nats: what
    its soft labels say beyond the labels the students already get (0: nothing to teach)."""
    import torch
    log_p = teacher_logits.double().log_softmax(-1)
    num_classes = log_p.shape[-1]
    target = torch.full_like(log_p, smoothing / num_classes)
    target.scatter_(1, labels.view(-1, 1), 1 - smoothing + smoothing / num_classes)
    p = log_p.exp()
    kl = (p * (log_p - target.log())).sum(-1)
    return {'top1': 100.0 * float((log_p.argmax(-1) == labels).double().mean()), 'kl_to_smoothed': float(kl.mean()),
            'num_images': int(labels.numel())}


def logit_scale(logits) -> float:
    """The std of the logits (over images and classes): the start's scale, to report (0 for a zero-init head)."""
    return float(logits.double().std(unbiased=False))


def initial_logit_scale(cfg: Any) -> Dict[str, float]:
    """`logit_scale` of the model a `TrainConfig` builds (its seed and ``head_init``; a supernet's max subnet) on one
    batch of its training images, as 'run', and with timm's default head as 'timm_default' (0 for a zero head)."""
    import torch

    from timm_alphanet.train import build_accelerator, build_data, build_loaders, build_model
    out = {}
    for label, c in (('run', cfg), ('timm_default', cfg.replace(head_init='default'))):
        acc = build_accelerator(c)  # data preparation waits for every process: call it on all of them
        data = build_data(c, acc)
        model = build_model(c, acc, data.num_classes)
        x, _ = next(iter(build_loaders(c, data, model)[0]))
        with torch.no_grad():
            out[label] = logit_scale(model.eval()(x))
    return out


def logit_scale_lines(scales: Dict[str, Dict[str, float]], what: str) -> List[str]:
    """Markdown: each model's initial logit scale (``{name: {'run': .., 'timm_default': ..}}``) as `what` builds it,
    timm's default head's in brackets; nothing without scales."""
    if not scales:
        return []
    return [f"Initial logit scale (std of the logits on one training batch, {what}; timm's default head in "
            'brackets): ' + ', '.join(f"{name} {v['run']:.3g} ({v['timm_default']:.3g})" for name, v in scales.items())
            + '.', '']


def tuning_table(tuning: Dict[str, Dict[str, Any]], label: Callable[[str], str], header: str) -> List[str]:
    """Markdown tables of the lr tuning (``{row: {'grid', 'held_out_top1': {'<lr:g>': top-1}, 'chosen'}}``): the
    mean held-out top-1 of every lr of the grid per row (``label(row)``) and the chosen lr; one table per distinct
    grid (rows whose base lr differs have other columns)."""
    grids: Dict[Tuple[float, ...], List[str]] = {}
    for row, t in tuning.items():
        grids.setdefault(tuple(t['grid']), []).append(row)
    lines: List[str] = []
    for grid, rows in grids.items():
        if lines:
            lines.append('')
        lines += [f'| {header} | ' + ' | '.join(f'lr {lr:g}' for lr in grid) + ' | chosen lr |',
                  '|---|' + '---|' * (len(grid) + 1)]
        for row in rows:
            t = tuning[row]
            lines.append(f'| {label(row)} | ' + ' | '.join(f"{t['held_out_top1'][f'{lr:g}']:.2f}" for lr in grid)
                         + f" | {t['chosen']:g} |")
    return lines


def hypotheses_lines(diffs_kl_none: Sequence[float], diffs_alpha_kl: Sequence[float], what: str = 'top-1',
                     margin: float = NONINFERIORITY_MARGIN) -> List[str]:
    """Markdown lines: each hypothesis's test and the effect the seeds could detect."""
    lines = []
    for name, diffs, m, claim in (('H1', diffs_kl_none, 0.0, 'KL-KD > no KD'),
                                  ('H2', diffs_alpha_kl, margin, f'alpha-KD not worse than KL-KD by > {margin:g}')):
        r = paired_test(list(diffs), m)
        mde = min_detectable_effect(r['std'], r['n'])
        verdict = ('n/a' if math.isnan(r['p']) else 'supported' if r['p'] < SIGNIFICANCE else 'not supported')
        note = (f' (with no true difference, H2 is shown at 80 % power only if the margin {m:g} exceeds it)'
                if m else '')
        lines.append(f"- {name} ({claim}, {what}): mean difference {r['mean']:+.3f} over {r['n']} paired seeds "
                     f"(std {r['std']:.3f}); one-sided 95 % lower bound {r['lower95']:+.3f}; p = {r['p']:.3g}: "
                     f"{verdict}. Minimum detectable effect at 80 % power: {mde:.3f}{note}.")
    return lines

