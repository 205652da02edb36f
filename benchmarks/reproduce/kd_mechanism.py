#!/usr/bin/env python3
"""The paper's mechanism, measured cheaply over many seeds: small heads on frozen features, distilled with KL, with
alpha = -1 and with the adaptive alpha-divergence, next to no KD.

AlphaNet's argument is about the student's distribution, not (directly) its top-1: KL(p||q) lets a student that
cannot match its teacher spread mass it should not (over-estimate the teacher's uncertainty), a negative alpha makes
it drop mass it should keep (under-estimate it), and the adaptive loss, taking the larger of the two per image,
bounds both. Checking that needs students that *cannot* match the teacher, trained to convergence, over many seeds:

- data: scikit-learn's digits (bundled), split once (stratified, `random.Random(0)`) into a teacher split (35 %), the
  students' training split (35 %), a held-out tuning part of it (10 %) and validation (20 %);
- teacher: an MLP (64-256-10) trained on the teacher split only, with augmentation (1-pixel shifts, pixel noise) and
  label smoothing 0.1; its accuracy and KL to the smoothed labels on the students' inputs are reported;
- students: a linear head, zero-initialised (initial logit scale 0), on a fixed frozen backbone (a seeded random
  ReLU projection of the pixels to `--features` dims: few enough that the head cannot match the teacher); each seed
  trains on its own 80 % subsample of the students' split, in its own order, identical across methods;
- losses: ``(1 - l) CE + l KD`` with the paper's l = 0.9 (its only combined setting), KD = KL, the alpha = -1
  surrogate (clip 5) or the adaptive loss (alpha in {-1, 1}, clip 5); no KD = CE alone (l = 0);
- lr: each method's from the same Adam grid on the held-out tuning part, the same tuning runs per method;
- measure: last-epoch validation top-1, and `timm_alphanet.evaluation.kd_mechanism` against the teacher on the
  validation images, summarised per seed and compared between methods paired by seed (`_protocol`).

    python benchmarks/reproduce/kd_mechanism.py --seeds 200      # the README's run
    python benchmarks/reproduce/kd_mechanism.py --seeds 3 --tuning-seeds 1 --epochs 5   # a smoke run, seconds

Writes ``kd_mechanism.md`` and ``kd_mechanism.json`` (settings, machine, cost, every seed's figures) to ``--out``.
"""
import argparse
import json
import math
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _protocol
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the machine description
sys.path.insert(0, str(HERE.parent.parent))  # the repository: run without installing

import _protocol as protocol  # noqa: E402
from _machine import machine_info, machine_line  # noqa: E402

from timm_alphanet.utils import write_atomic  # noqa: E402

METHODS = ('none', 'kl', 'alpha-1', 'adaptive')
NAMES = {'none': 'no KD', 'kl': 'KL-KD', 'alpha-1': 'alpha = -1', 'adaptive': 'adaptive alpha'}
SPLITS = (0.35, 0.35, 0.10, 0.20)  # teacher, students' training, held-out tuning part, validation
SMOOTHING = 0.1
CLIP = 5.0
FIGURES = ('top1', 'kl', 'd_minus1', 'worst', 'entropy_gap', 'top_gap', 'secondary_gap', 'agree_unsure')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, default=Path('output/reproduce/kd_mechanism'))
    p.add_argument('--seeds', type=int, default=100, help='paired seeds per method (seeds 0 .. N-1)')
    p.add_argument('--tuning-seeds', type=int, default=2, help='tuning runs per method and lr (seeds 1000 ..)')
    p.add_argument('--lr-grid', type=float, nargs='+', default=[0.003, 0.01, 0.03, 0.1], help='Adam lrs')
    p.add_argument('--epochs', type=int, default=60, help='student epochs')
    p.add_argument('--teacher-epochs', type=int, default=150)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--features', type=int, default=16, help='frozen random features the heads see')
    p.add_argument('--kd-share', type=float, default=0.9, help='l in (1 - l) CE + l KD')
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args(argv)
    if min(args.seeds, args.tuning_seeds, args.epochs, args.teacher_epochs, args.batch_size, args.features) < 1:
        p.error('--seeds, --tuning-seeds, --epochs, --teacher-epochs, --batch-size and --features must be >= 1')
    protocol.convex_weights(args.kd_share)  # in [0, 1]
    return args


# ---- data, teacher, backbone (all fixed: none depends on a run's seed)
def load_data():
    """Digits pixels in [0, 1] (N, 64), labels, and the four fixed index splits."""
    import torch
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y, protocol.disjoint_splits(digits.target.tolist(), SPLITS, seed=0)


def _augment(x, g):
    """A random 1-pixel shift of the batch's 8x8 images and Gaussian pixel noise (std 0.05)."""
    import torch
    dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
    img = torch.roll(x.view(-1, 8, 8), (dx, dy), (1, 2)).reshape(-1, 64)
    return img + 0.05 * torch.randn(img.shape, generator=g)


def train_teacher(x, y, epochs: int):
    """The MLP teacher, trained on the teacher split only (seed 0), in eval mode."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            b = order[i:i + 32]
            loss = F.cross_entropy(model(_augment(x[b], g)), y[b], label_smoothing=SMOOTHING)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def backbone_features(x, train_rows, k: int):
    """The frozen backbone: pixels centred on the students' training mean, a seeded random projection to `k` dims,
    ReLU. Fixed for every run; few dims, so a linear head on them cannot match the teacher."""
    import torch
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, k, generator=g) * (3.0 / 8.0)  # about unit-scale pre-activations
    b = torch.randn(k, generator=g) * 0.5
    return torch.relu((x - x[train_rows].mean(0)) @ w + b)


# ---- one student run
def kd_term(method: str, logits, teacher_logits):
    """The KD loss of `method` (the library's losses: what train.py optimises)."""
    from timm_alphanet.loss import AdaptiveAlphaDivergence, KLDivergence, alpha_divergence
    if method == 'kl':
        return KLDivergence()(logits, teacher_logits)
    if method == 'alpha-1':
        return alpha_divergence(logits, teacher_logits, -1.0, clip=CLIP).surrogate.mean()
    if method == 'adaptive':
        return AdaptiveAlphaDivergence(-1.0, 1.0, clip=CLIP)(logits, teacher_logits)
    raise ValueError(method)


def train_head(method: str, lr: float, seed: int, feats, y, teacher_logits, rows: List[int], epochs: int,
               batch_size: int, kd_share: float):
    """A zero-initialised linear head trained on `seed`'s 80 % subsample of `rows` (same subsample and batch order
    for every method at a seed) with ``(1 - l) CE + l KD`` (no KD: CE alone)."""
    import torch
    import torch.nn.functional as F
    rng = random.Random(seed)
    rows = sorted(rng.sample(rows, round(0.8 * len(rows))))
    idx = torch.tensor(rows)
    f, t, target = feats[idx], teacher_logits[idx], y[idx]
    head = torch.nn.Linear(feats.shape[1], 10)
    torch.nn.init.zeros_(head.weight)  # a sane start: every logit 0, whatever the seed
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr)
    w_ce, w_kd = protocol.convex_weights(0.0 if method == 'none' else kd_share)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=g)
        for i in range(0, len(rows), batch_size):
            b = order[i:i + batch_size]
            z = head(f[b])
            loss = w_ce * F.cross_entropy(z, target[b], label_smoothing=SMOOTHING)
            if w_kd:
                loss = loss + w_kd * kd_term(method, z, t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def figures(head, feats, y, teacher_logits, rows: List[int]) -> Dict[str, float]:
    """Top-1 (%) and the mechanism figures (`kd_mechanism`, per-image means) of a head on `rows`; ``worst`` is the
    mean of max(KL, D_-1), the per-image divergence the adaptive loss bounds."""
    import torch
    from timm_alphanet.evaluation import kd_mechanism, summarize_kd_mechanism
    idx = torch.tensor(rows)
    with torch.no_grad():
        z = head(feats[idx])
    m = kd_mechanism(z, teacher_logits[idx], clip=CLIP)
    out = summarize_kd_mechanism(m)
    out['worst'] = float(torch.maximum(m['kl'], m['d_minus1']).mean())
    out['top1'] = 100.0 * float((z.argmax(1) == y[idx]).double().mean())
    return out


# ---- report
def summarize(per_seed: Dict[str, List[Dict[str, float]]], seeds: Sequence[int]) -> Dict[str, Any]:
    """Per method: mean and std over seeds of each figure; paired differences (by seed) with t intervals."""
    import torch
    from timm_alphanet.evaluation import paired_interval
    out: Dict[str, Any] = {'methods': {}, 'paired': {}}
    for method, rows in per_seed.items():
        out['methods'][method] = {k: {'mean': _nanmean([r[k] for r in rows]), 'std': _nanstd([r[k] for r in rows])}
                                  for k in FIGURES}
    pairs = (('kl', 'none'), ('adaptive', 'kl'), ('alpha-1', 'kl'), ('adaptive', 'alpha-1'))
    for a, b in pairs:
        if a in per_seed and b in per_seed:
            out['paired'][f'{a} - {b}'] = {
                k: paired_interval(torch.tensor([r[k] for r in per_seed[a]], dtype=torch.float64),
                                   torch.tensor([r[k] for r in per_seed[b]], dtype=torch.float64))
                for k in FIGURES}
    return out


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def _nanstd(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.stdev(kept) if len(kept) > 1 else math.nan


def markdown(result: Dict[str, Any]) -> str:
    meta, s = result['meta'], result['summary']
    t = result['teacher']
    lines = [
        '# KD mechanism: small heads on frozen features, KL vs alpha = -1 vs adaptive', '',
        f"{meta['date']}; {machine_line(meta['machine'])}; wall {meta['wall_s'] / 60:.1f} min, CPU "
        f"{meta['cpu_s'] / 60:.1f} min.", '', f"Command: `{meta['command']}`", '', protocol.PROTOCOL, '',
        f"Data: digits, splits teacher/train/tuning/validation = {meta['split_sizes']}. Teacher (MLP 64-256-10, "
        f"augmented, on its own split): top-1 {t['own_split_top1']:.2f} % on its split; on the students' training "
        f"inputs top-1 {t['students_inputs']['top1']:.2f} %, KL to the smoothed labels "
        f"{t['students_inputs']['kl_to_smoothed']:.3f} nats; validation top-1 {t['validation_top1']:.2f} %.", '',
        f"Students: zero-init linear head on {meta['settings']['features']} frozen random features (initial logit "
        f"scale {meta['initial_logit_scale']:g}), Adam, {meta['settings']['epochs']} epochs, batch "
        f"{meta['settings']['batch_size']}, (1 - l) CE + l KD with l = {meta['settings']['kd_share']:g}; "
        f"{meta['settings']['seeds']} paired seeds; lr per method from {meta['settings']['lr_grid']} on the tuning "
        f"part ({meta['settings']['tuning_seeds']} runs per lr): "
        + ', '.join(f"{NAMES[m]} {lr:g}" for m, lr in result['lr'].items()) + '.', '',
        '| method | top-1 | KL(p‖q) | D₋₁(p‖q) | max(KL, D₋₁) | H(q) − H(p) | q − p, top class | '
        'q − p, secondary | agreement, teacher unsure |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for method, r in s['methods'].items():
        cells = [f"{r['top1']['mean']:.2f} ± {r['top1']['std']:.2f}"]
        cells += [f"{r[k]['mean']:+.4f} ± {r[k]['std']:.4f}" if k in ('entropy_gap', 'top_gap', 'secondary_gap')
                  else f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}" for k in FIGURES[1:-1]]
        cells.append(f"{100 * r['agree_unsure']['mean']:.1f} %")
        lines.append(f'| {NAMES[method]} | ' + ' | '.join(cells) + ' |')
    unsure = statistics.fmean(r['unsure'] for rows in result['per_seed'].values() for r in rows)
    lines += ['', 'Mean ± std over seeds of per-seed means over the validation images (top-1 in %, divergences and '
                  f'entropies in nats); the teacher is unsure (top p < 0.5) on {100 * unsure:.1f} % of them.', '',
              '## Paired differences (by seed; mean [95 % t interval])', '',
              '| difference | ' + ' | '.join(FIGURES) + ' |', '|---|' + '---|' * len(FIGURES)]
    for name, d in s['paired'].items():
        lines.append(f'| {name} | ' + ' | '.join(f"{v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]"
                                                 for v in (d[k] for k in FIGURES)) + ' |')
    kl_none = [a - b for a, b in zip(result['per_seed_top1']['kl'], result['per_seed_top1']['none'])]
    ada_kl = [a - b for a, b in zip(result['per_seed_top1']['adaptive'], result['per_seed_top1']['kl'])]
    lines += ['', '## Hypotheses (top-1, stated in advance)', '', *protocol.hypotheses_lines(kl_none, ada_kl), '']
    sd = s['paired']['adaptive - kl']['top1']['std']
    if sd > 0:
        lines.append(f"Seeds for 80 % power at a 0.5-point alpha - KL effect, from this spread ({sd:.3f}): "
                     f"{protocol.seeds_needed(sd, 0.5)}.")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    t0, c0 = time.monotonic(), _cpu()
    x, y, (teacher_rows, train_rows, tune_rows, val_rows) = load_data()
    teacher = train_teacher(x[teacher_rows], y[teacher_rows], args.teacher_epochs)
    with torch.no_grad():
        teacher_logits = teacher(x)
    info = protocol.teacher_information(teacher_logits[train_rows], y[train_rows], SMOOTHING)
    top1 = {name: 100.0 * float((teacher_logits[rows].argmax(1) == y[rows]).double().mean())
            for name, rows in (('own', teacher_rows), ('val', val_rows))}
    print(f"teacher: {top1['own']:.2f} % on its split, {info['top1']:.2f} % on the students' inputs (KL to smoothed "
          f"labels {info['kl_to_smoothed']:.3f}), {top1['val']:.2f} % on validation", flush=True)
    feats = backbone_features(x, train_rows, args.features)
    common = dict(feats=feats, y=y, teacher_logits=teacher_logits, epochs=args.epochs, batch_size=args.batch_size,
                  kd_share=args.kd_share)

    tuning_seeds = [1000 + i for i in range(args.tuning_seeds)]
    lrs, tuning = {}, {}
    for method in METHODS:
        def score(lr: float, seed: int, method: str = method) -> float:
            head = train_head(method, lr, seed, rows=train_rows, **common)
            return figures(head, feats, y, teacher_logits, tune_rows)['top1']
        lrs[method], tuning[method] = protocol.choose_lr(args.lr_grid, score, tuning_seeds)
        print(f'lr {NAMES[method]}: {lrs[method]:g} (held-out top-1 per lr {tuning[method]})', flush=True)

    per_seed: Dict[str, List[Dict[str, float]]] = {m: [] for m in METHODS}
    seeds = list(range(args.seeds))
    for seed in seeds:
        for method in METHODS:
            head = train_head(method, lrs[method], seed, rows=train_rows, **common)
            per_seed[method].append(figures(head, feats, y, teacher_logits, val_rows))
        if seed % 10 == 9 or seed == seeds[-1]:
            print(f'seed {seed + 1}/{len(seeds)}: ' + ', '.join(
                f"{NAMES[m]} {statistics.fmean(r['top1'] for r in per_seed[m]):.2f}" for m in METHODS), flush=True)
    start = torch.nn.Linear(args.features, 10)
    torch.nn.init.zeros_(start.weight)
    torch.nn.init.zeros_(start.bias)
    with torch.no_grad():
        scale = protocol.logit_scale(start(feats[train_rows]))
    result = {
        'meta': {
            'date': time.strftime('%Y-%m-%d %H:%M %Z'), 'machine': machine_info(), 'wall_s': time.monotonic() - t0,
            'cpu_s': _cpu() - c0, 'initial_logit_scale': scale,
            'command': 'python benchmarks/reproduce/kd_mechanism.py ' + ' '.join(
                sys.argv[1:] if argv is None else list(argv)),
            'split_sizes': [len(r) for r in (teacher_rows, train_rows, tune_rows, val_rows)],
            'settings': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        },
        'teacher': {'own_split_top1': top1['own'], 'validation_top1': top1['val'], 'students_inputs': info},
        'lr': lrs, 'tuning': {m: {str(k): v for k, v in t.items()} for m, t in tuning.items()},
        'summary': summarize(per_seed, seeds),
        'per_seed_top1': {m: [r['top1'] for r in rows] for m, rows in per_seed.items()},
        'per_seed': per_seed,
    }
    result['meta']['command'] = result['meta']['command'].replace(str(args.out), '<folder>')
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / 'kd_mechanism.json', json.dumps(_no_nan(result), indent=1) + '\n')
    text = markdown(result)
    write_atomic(args.out / 'kd_mechanism.md', text)
    print(text)
    return 0


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _no_nan(value: Any) -> Any:
    """NaN as null (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


if __name__ == '__main__':
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    sys.exit(main())
