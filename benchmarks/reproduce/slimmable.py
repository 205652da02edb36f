"""Miniature of the AlphaNet paper's slimmable table: MobileNet-V1/V2 trained with the sandwich rule w/o KD, with
in-place KL-KD and with in-place adaptive alpha-KD, then top-1 per width after BN calibration.

Each run is ``train.py`` on a miniature of the recipe ``train_configs/slimmable_mobilenetv{1,2}_in1k.yaml`` (its
width space, KD hyper-parameters and label loss; the data, resolution, schedule and batch of `MINIATURE` plus the
flags), so the three KD settings differ only in ``inplace_kd`` / ``kd_loss`` and their lr: same seeds (initial
weights, data order, the widths of every step), same budget. The protocol (`_protocol`): every run starts from a
zero-initialised classifier (``head_init: zero``; the report gives the initial logit scale, 0, next to timm's
default); each setting's lr is chosen with `protocol.choose_lr` from the same grid, the base lr (``--lr`` or the
recipe's rule) x ``--lr-grid-factors`` (the protocol's 0.25, 0.5, 1, 2), by the mean top-1 over the widths of tuning
runs (``--tuning-seeds``, disjoint from ``--seeds``) scored on 20% of the training images held out from every run,
the same tuning runs for every setting; the validation images are never used to choose (``--no-tune``: one lr).
Every setting has the label loss's scale: the max width learns from the labels, the other widths from the labels
(w/o KD) or from the in-place KD loss alone (as the original), each with weight 1. Afterwards every run's final
weights are BN-calibrated per width on the same fixed training images (eval transform) and evaluated on the
validation split. Writes ``slimmable.md`` (the table, mean +- std over seeds, next to the paper's ImageNet
numbers), ``slimmable.json`` (every run) and, with matplotlib, ``slimmable.png`` into ``--out``. Finished runs
(tuning runs too, and their held-out scores) are reused and interrupted ones resumed, so a killed benchmark
continues where it stopped.

    python benchmarks/reproduce/slimmable.py                         # digits at 64 px, 2 seeds x 8 epochs
    python benchmarks/reproduce/slimmable.py --seeds 0 1 2 3 --epochs 30 --jobs 4 --threads 4
    python benchmarks/reproduce/slimmable.py --dataset '' --data-dir /data/imagenet --image-size 224 --epochs 250 \\
        --batch-size 128 --lr 0.5 --launcher 'accelerate launch --multi_gpu --num_processes 8' --jobs 1 --threads 8 \\
        --tune-data-dir /data/imagenet-heldout   # train/: part of ImageNet's training set, validation/: the rest

Digits are 8x8 images (written at 32 px): at 32 px a MobileNet's stride-32 features are 1x1, so the miniature runs at
64 px (2x2 features).

The default budget is 36 runs of 8 epochs: 24 tuning runs (2 nets x 3 settings x 4 lrs x 1 tuning seed, on 80% of
the training images) and 12 reported ones (2 nets x 3 settings x 2 seeds), about 2.6 CPU-hours (the MobileNet-V2
half, 18 runs and their evaluation, measured 78 CPU-minutes on the project's 2-core CPU; 1 thread per run). Two
seeds rather than more epochs: one seed cannot tell a KD gain from the noise of 355 validation images (one image is
0.28 points), and at 8 epochs the max width is at 89-97 % top-1 already. The three KD settings always share the budget.
"""
import argparse
import concurrent.futures
import io
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's timm_alphanet, also when run from elsewhere
sys.path.insert(0, str(HERE.parents[1]))  # benchmarks/: the shared statistics

from _stats import mean_std  # noqa: E402

sys.path.insert(0, str(HERE.parent))  # reproduce/: the shared protocol
import _protocol as protocol  # noqa: E402

from timm_alphanet.utils import write_atomic  # noqa: E402

NETS = {'mobilenetv1': 'MobileNet-V1', 'mobilenetv2': 'MobileNet-V2'}
# the paper's row names -> what differs between the runs (nothing else does)
SETTINGS: Dict[str, Dict[str, Any]] = {
    'w/o KD': {'inplace_kd': False},
    'KL-KD': {'inplace_kd': True, 'kd_loss': 'kl'},
    'adaptive-KD': {'inplace_kd': True, 'kd_loss': 'alpha'},
}
# The paper's ImageNet top-1 (AlphaNet, arXiv:2102.07954), one value per column; the columns' widths are the recipe's
# eval_archs, which are a GUESS (see the recipe files).
PAPER: Dict[str, Dict[str, List[float]]] = {
    'mobilenetv1': {
        'w/o KD': [53.9, 55.3, 57.1, 59.1, 61.1, 62.9, 64.0, 65.8, 66.9, 67.9, 68.8],
        'KL-KD': [56.4, 57.8, 59.5, 61.0, 63.0, 64.4, 65.5, 67.1, 68.3, 69.1, 69.8],
        'adaptive-KD': [56.4, 57.9, 59.7, 61.7, 63.4, 65.0, 66.2, 67.7, 68.8, 69.5, 70.1],
    },
    'mobilenetv2': {
        'w/o KD': [61.9, 62.8, 63.7, 64.5, 65.1, 67.2, 67.7, 68.3, 69.0],
        'KL-KD': [63.2, 64.4, 65.1, 66.0, 66.5, 68.4, 69.2, 69.5, 70.1],
        'adaptive-KD': [63.7, 64.6, 65.6, 66.3, 66.9, 68.7, 69.3, 69.9, 70.5],
    },
}
# What the miniature changes in the recipe besides the flags (the KD settings, label loss, optimizer and width
# space stay the recipe's). No horizontal flips: a mirrored digit is another digit (or none).
MINIATURE: Dict[str, Any] = dict(
    dataset='sklearn/digits', data_dir=None, train_split='train', val_split='validation', eval_archs=(),
    hflip=0.0, scale=(0.5, 1.0), crop_pct=1.0, warmup_epochs=1.0, warmup_lr=1e-4, mixed_precision='no', workers=0,
    checkpoint_interval=0, checkpoint_hist=1, log_interval=1000, no_progress=True, bn_calib_batches=4,
    head_init='zero',  # the protocol's start: every width's logits 0 (timm's init: logit std 6.8 on MobileNet-V2)
)
HOLDOUT = 0.2  # the share of the training images held out to choose each setting's lr
TUNING_SEEDS = (1000,)  # tuning runs per lr and setting: disjoint from the reported seeds


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--out', default='output/reproduce/slimmable', help='output folder (runs, table, JSON)')
    p.add_argument('--nets', nargs='+', default=list(NETS), choices=list(NETS))
    p.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1], help='one run per seed and setting')
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--batch-size', type=int, default=64, help='per process')
    p.add_argument('--lr', type=float, default=None,
                   help="base lr of the tuning grid (--no-tune: every run's); default: the recipe's rule, lr_base "
                        "0.125 x global batch / 256 (0.03125 at 64)")
    protocol.add_tuning_arguments(p, HOLDOUT, TUNING_SEEDS)
    p.add_argument('--image-size', type=int, default=64, help='training and evaluation resolution')
    p.add_argument('--dataset', default=None, help="timm dataset name ('' = image folder); default: sklearn/digits")
    p.add_argument('--data-dir', default=None)
    p.add_argument('--mixed-precision', default=None, choices=('no', 'fp16', 'bf16'))
    p.add_argument('--workers', type=int, default=None, help='data loader processes per training process')
    p.add_argument('--widths', nargs='+', type=float, default=None,
                   help="widths to report (default: the recipe's eval_archs, the paper's columns)")
    p.add_argument('--calib-images', type=int, default=512, help='training images (eval transform) for BN calibration')
    p.add_argument('--jobs', type=int, default=2, help='training runs at once')
    p.add_argument('--threads', type=int, default=1, help='torch threads per run (OMP_NUM_THREADS)')
    p.add_argument('--launcher', default='', help="e.g. 'accelerate launch --multi_gpu --num_processes 8' (default: "
                                                 'this python)')
    p.add_argument('--in-process', action='store_true',
                   help='train in this process (timm_alphanet.train.run) instead of a train.py process per run: '
                        'no interpreter start-up per run (the smoke test); needs --jobs 1 and no --launcher')
    p.add_argument('--max-train-steps', type=int, default=None, help='stop each run after this many steps (smoke test)')
    p.add_argument('--no-plot', action='store_true')
    args = p.parse_args(argv)
    if min(args.epochs, args.batch_size, args.image_size, args.jobs, args.threads, args.calib_images) < 1:
        p.error('--epochs, --batch-size, --image-size, --jobs, --threads and --calib-images must be >= 1')
    if args.lr is not None and not 0 < args.lr < math.inf:
        p.error(f'--lr must be a positive number, got {args.lr}')
    if args.in_process and (args.jobs != 1 or args.launcher):
        p.error('--in-process trains one run at a time in this process: give --jobs 1 and no --launcher')
    if args.max_train_steps is not None and args.max_train_steps < 1:
        p.error(f'--max-train-steps must be >= 1, got {args.max_train_steps}')
    protocol.check_tuning_arguments(p, args, given_data=args.dataset is not None or args.data_dir is not None,
                                    data_dir=args.data_dir)
    if args.tune and args.launcher and args.lr is None:  # the grid's centre: the rule scales with the process count
        p.error('lr tuning under --launcher needs --lr (the base lr of the grid, for the global batch)')
    return args


# ---- configs
def recipe(net: str):
    from timm_alphanet.train import TrainConfig
    return TrainConfig.from_yaml(ROOT / 'train_configs' / f'slimmable_{net}_in1k.yaml')


def run_config(net: str, setting: str, seed: int, args: argparse.Namespace, runs_dir: Path,
               lr: Optional[float] = None, tuning: bool = False):
    """The TrainConfig of one run: the recipe, the miniature's changes, the flags, the setting, the seed and `lr`
    (default: the base lr). `tuning`: a tuning run (on ``args.tune_folder``: the fit part, scored on the held-out
    part), else a reported one (on ``args.fit_folder`` where the digits are split, else the given data)."""
    base = recipe(net)
    changes = dict(MINIATURE)
    changes.update(space={'widths': list(base.space['widths']), 'resolutions': [args.image_size]},
                   epochs=args.epochs, batch_size=args.batch_size, seed=seed, output=str(runs_dir),
                   experiment=run_name(net, setting, seed) if not tuning else
                   f'tune-{run_name(net, setting, seed).rsplit("-seed", 1)[0]}-lr{lr:g}-seed{seed}')
    for key in ('lr', 'dataset', 'data_dir', 'mixed_precision', 'workers', 'max_train_steps'):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    folder = getattr(args, 'tune_folder' if tuning else 'fit_folder', None)
    if folder is not None:
        changes.update(dataset='', data_dir=str(folder))
    if lr is not None:
        changes['lr'] = lr
    changes.update(SETTINGS[setting])
    return base.replace(**changes)


def lr_grid(net: str, args: argparse.Namespace) -> List[float]:
    """The lrs every setting of `net` is tuned over: the base lr (``--lr`` or the recipe's rule) x the factors."""
    from timm_alphanet.train import learning_rate
    base = learning_rate(run_config(net, 'w/o KD', args.seeds[0], args, Path('.')), 1)
    return [round(base * f, 12) for f in args.lr_grid_factors]


def tuning_score(cfg, widths: Sequence[float], calib_images: int, logs: Path) -> float:
    """Mean top-1 over `widths` of a finished tuning run on its held-out part (its validation split), cached in
    ``logs/<run>.score.json`` next to the config it belongs to (a rerun reads it back)."""
    path = logs / f'{cfg.experiment}.score.json'
    key = {'config': cfg.to_yaml(), 'widths': list(widths), 'calib_images': calib_images}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get('key') == key:
            return cached['score']
    ev = evaluate_run(cfg, widths, calib_images)
    score = statistics.fmean(v['top1'] for v in ev['widths'].values())
    write_atomic(path, json.dumps({'key': key, 'score': score, 'num_held_out': ev['num_val_images']}))
    return score


def run_name(net: str, setting: str, seed: int) -> str:
    tag = {'w/o KD': 'nokd', 'KL-KD': 'kl', 'adaptive-KD': 'alpha'}[setting]
    return f'{net}-{tag}-seed{seed}'


def report_widths(net: str, args: argparse.Namespace) -> List[float]:
    if args.widths:
        return sorted(set(args.widths))
    return [float(w) for w in recipe(net).eval_archs]


# ---- training
def train(cfg, args: argparse.Namespace, logs: Path) -> Dict[str, Any]:
    """Run train.py on `cfg` unless its run folder is complete; resume an interrupted one. Returns timing.

    Raises:
        ValueError: the run folder holds a run of another config (other flags on the same ``--out``).
    """
    run_dir = Path(cfg.output) / cfg.experiment
    final = supernet_folder(run_dir) / 'model.safetensors'
    cfg_path = logs / f'{cfg.experiment}.yaml'
    if run_dir.exists() and (not cfg_path.is_file() or _read_head(cfg_path) != cfg.to_yaml()):
        raise ValueError(f'{run_dir} holds a run of another config than {cfg_path}: give another --out, or delete it')
    if final.exists():
        return {'run': cfg.experiment, 'seconds': None, 'reused': True}
    write_atomic(cfg_path, cfg.to_yaml())
    resume = (run_dir / 'checkpoints' / 'index.json').exists()
    if run_dir.exists() and not resume:  # killed before its first checkpoint: nothing to keep, start it again
        shutil.rmtree(run_dir)
    t0 = time.time()
    if args.in_process:
        from timm_alphanet.train import run
        run(cfg.replace(resume=str(run_dir)) if resume else cfg)
        return {'run': cfg.experiment, 'seconds': round(time.time() - t0, 1), 'reused': False}
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    cmd = [*launcher, str(ROOT / 'train.py'), '-c', str(cfg_path)] + (['--resume', str(run_dir)] if resume else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS='ignore')
    env.pop('WORLD_SIZE', None)
    with open(logs / f'{cfg.experiment}.log', 'a') as log:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if p.returncode != 0 or not (supernet_folder(run_dir) / 'model.safetensors').exists():
        raise RuntimeError(f'{cfg.experiment}: train.py exited {p.returncode}; see {logs / cfg.experiment}.log')
    return {'run': cfg.experiment, 'seconds': round(time.time() - t0, 1), 'reused': False}


def _read_head(path: Path, limit: int = 1 << 20) -> str:
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read(limit)


# ---- evaluation
def supernet_folder(run_dir: Path) -> Path:
    """The trained supernet's model folder: ``final/supernet`` where the trainer also writes a static model per
    validated subnet next to it, else ``final`` itself."""
    final = run_dir / 'final'
    return final / 'supernet' if (final / 'supernet').is_dir() else final


def load_run(cfg):
    """The final weights of a finished run, rebuilt from its folder as any user would (``local-dir:``).

    ``pretrained=True`` is what loads the folder's weights: without it timm builds the architecture only.
    """
    import timm
    folder = supernet_folder(Path(cfg.output) / cfg.experiment)
    return timm.create_model(f'local-dir:{folder}', pretrained=True)


def evaluate_run(cfg, widths: Sequence[float], calib_images: int) -> Dict[str, Any]:
    """Top-1/top-5 per width of a finished run: each width BN-calibrated on the same `calib_images` training images
    (eval transform, chosen with seed 0), then evaluated on the validation split."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    from timm_alphanet.calibration import disjoint_subsets, load_images
    from timm_alphanet.evaluation import validate_subnets
    from timm_alphanet.spaces import WidthConfig
    from timm_alphanet.train import data_config_for
    from timm_alphanet.train.data import create_datasets, set_transforms

    acc = Accelerator(cpu=not torch.cuda.is_available())
    model = load_run(cfg).to(acc.device)
    train_ds, val_ds = create_datasets(cfg)
    set_transforms(cfg, train_ds, val_ds, data_config_for(cfg, model))
    train_ds.transform = val_ds.transform  # calibration images as the model sees them at test time
    idx = disjoint_subsets(len(train_ds), [min(calib_images, len(train_ds))], seed=0)[0]
    x, y = load_images(train_ds, idx, batch_size=cfg.batch_size, progress=False)
    calib = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=False)
    val = acc.prepare(DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers))
    res = model.space.resolutions[-1]
    archs = [(str(w), WidthConfig(w, res)) for w in widths]
    results = validate_subnets(acc, model, archs, calib, val, len(calib))
    return {'widths': {k: v for k, v in results.items()}, 'num_val_images': len(val_ds),
            'num_calib_images': len(idx)}


# ---- summary
def _cell(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f'{m:.1f}' if math.isnan(s) else f'{m:.1f} ± {s:.1f}'


def summarise(runs: List[Dict[str, Any]], widths: Dict[str, List[float]], seeds: Sequence[int]) -> Dict[str, Any]:
    """Per net and setting: top-1 per width (mean, std over seeds) and the paired gain over w/o KD (mean over widths,
    per seed; mean and its standard error over seeds)."""
    out: Dict[str, Any] = {}
    for net, ws in widths.items():
        by_setting: Dict[str, Dict[int, List[float]]] = {}
        for r in runs:
            if r['net'] == net:
                by_setting.setdefault(r['setting'], {})[r['seed']] = [r['top1'][str(w)] for w in ws]
        net_out = {}
        for setting, per_seed in by_setting.items():
            cols = list(zip(*per_seed.values()))
            entry = {'top1_mean': [statistics.fmean(c) for c in cols],
                     'top1_std': [mean_std(c)[1] for c in cols], 'seeds': sorted(per_seed)}
            base = by_setting.get('w/o KD', {})
            common = [s for s in per_seed if s in base]
            if setting != 'w/o KD' and common:
                gains = [statistics.fmean(a - b for a, b in zip(per_seed[s], base[s])) for s in common]
                m, sd = mean_std(gains)
                entry['gain_over_no_kd'] = {'mean': m, 'sem': sd / math.sqrt(len(gains)), 'per_seed': gains}
            net_out[setting] = entry
        out[net] = net_out
    return out


def markdown(runs: List[Dict[str, Any]], widths: Dict[str, List[float]], summary: Dict[str, Any],
             meta: Dict[str, Any]) -> str:
    lines = [f"Miniature: {meta['data']}; top-1 (%) per width after BN calibration, mean ± std over seeds "
             f"{meta['seeds']}; {meta['budget']}. The paper's rows are ImageNet (their column widths are our guess).",
             '']
    lines += protocol.logit_scale_lines({NETS[n]: v for n, v in (meta.get('initial_logit_scale') or {}).items()},
                                        'the supernet as the trainer builds it')
    tuning = meta.get('lr_tuning') or {}
    if tuning:
        first = next(iter(tuning.values()))
        lines += [f"lr per setting: chosen by `protocol.choose_lr` from the base lr x {meta['lr_grid_factors']} by "
                  f"mean top-1 over the widths on {meta['holdout']} training images held out from every run (never the "
                  f"validation images), {first['runs']} tuning runs per setting (tuning seeds {first['tuning_seeds']}, "
                  'disjoint from the reported ones).', '']
        lines += protocol.tuning_table(tuning, lambda key: f"{NETS[key.split('/', 1)[0]]}: {key.split('/', 1)[1]}",
                                       'net: setting')
        lines.append('')
    elif meta.get('lr'):
        lines += ['No lr tuning (--no-tune): ' + ', '.join(f'{k} {v:g}' for k, v in meta['lr'].items()) + '.', '']
    for net, ws in widths.items():
        lines.append(f'| {NETS[net]} | ' + ' | '.join(str(w) for w in ws) + ' | gain over w/o KD |')
        lines.append('|---' * (len(ws) + 2) + '|')
        for setting in SETTINGS:
            if setting not in summary.get(net, {}):
                continue
            per = [[r['top1'][str(w)] for r in runs if r['net'] == net and r['setting'] == setting] for w in ws]
            gain = summary[net][setting].get('gain_over_no_kd')
            g = '' if gain is None else f"{gain['mean']:+.2f}" + ('' if math.isnan(gain['sem']) else
                                                                    f" ± {gain['sem']:.2f} (sem)")
            lines.append(f'| {setting} (digits) | ' + ' | '.join(_cell(v) for v in per) + f' | {g} |')
        paper = PAPER[net]
        if len(ws) == len(paper['w/o KD']):
            for setting in SETTINGS:
                gain = statistics.fmean(a - b for a, b in zip(paper[setting], paper['w/o KD']))
                g = '' if setting == 'w/o KD' else f'{gain:+.2f}'
                lines.append(f'| {setting} (paper, ImageNet) | ' + ' | '.join(f'{v:.1f}' for v in paper[setting])
                             + f' | {g} |')
        lines += ['', *hypotheses(runs, net, ws), '']
    lines += ['In-place KD trains the smaller widths on the KD loss alone (as the original), so every setting has the '
              "label loss's scale; the teacher is the max width, learning at the same time. Hypotheses on the mean "
              'top-1 over the widths, paired by seed (`_protocol`): ' + protocol.PROTOCOL.split('Hypotheses: ')[1], '']
    return '\n'.join(lines)


def hypotheses(runs: List[Dict[str, Any]], net: str, widths: Sequence[float]) -> List[str]:
    """The protocol's tests (KL > none; alpha not worse than KL by the margin) on each seed's mean top-1 over
    `widths`, paired by seed, with the effect the seeds could detect."""
    per: Dict[str, Dict[int, float]] = {}
    for r in runs:
        if r['net'] == net:
            per.setdefault(r['setting'], {})[r['seed']] = statistics.fmean(r['top1'][str(w)] for w in widths)
    none, kl, alpha = (per.get(k, {}) for k in ('w/o KD', 'KL-KD', 'adaptive-KD'))
    seeds = sorted(set(none) & set(kl) & set(alpha))
    if not seeds:
        return []
    return [f'{NETS[net]}:', *protocol.hypotheses_lines([kl[s] - none[s] for s in seeds],
                                                        [alpha[s] - kl[s] for s in seeds], 'mean top-1 over widths')]


def plot(summary: Dict[str, Any], widths: Dict[str, List[float]], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(widths), figsize=(5.5 * len(widths), 4), squeeze=False)
    for ax, (net, ws) in zip(axes[0], widths.items()):
        for setting, entry in summary[net].items():
            ax.errorbar(ws, entry['top1_mean'], yerr=[0 if math.isnan(s) else s for s in entry['top1_std']],
                        label=setting, capsize=3, marker='o', ms=3)
        ax.set(title=f'slimmable {NETS[net]} (miniature)', xlabel='width', ylabel='top-1 (%)')
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=120)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return True


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the training runs): on a shared machine
    the wall time depends on the other load, this does not (CPU time / cores = wall time on an idle machine)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()  # train.py runs with cwd=ROOT
    runs_dir, logs = out / 'runs', out / 'logs'
    logs.mkdir(parents=True, exist_ok=True)
    if args.dataset is None and args.data_dir is None and args.tune:  # digits: the reported runs' part + held-out
        from timm_alphanet.data import build_digits_folder
        args.fit_folder, args.tune_folder = protocol.holdout_folders(build_digits_folder(out / 'data' / 'digits32'),
                                                                     args.holdout_fraction)
    else:
        args.fit_folder, args.tune_folder = None, args.tune_data_dir
    widths = {net: report_widths(net, args) for net in args.nets}
    t0 = time.time()
    timings: Dict[str, Any] = {}

    def train_all(cfgs: List[Any]) -> None:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # each thread waits on one train.py process
            futures = [pool.submit(train, cfg, args, logs) for cfg in cfgs]
            for f in concurrent.futures.as_completed(futures):
                t = f.result()
                timings[t['run']] = t
                print(f"[{time.time() - t0:7.0f}s] trained {t['run']}" + (' (reused)' if t['reused'] else
                                                                          f" in {t['seconds']:.0f}s"), flush=True)

    # each setting's lr first: the same grid and tuning seeds for every setting (`protocol.choose_lr`), trained on
    # the fit part and scored on the held-out part of the training images
    lrs: Dict[Any, float] = {}
    tuning: Dict[str, Any] = {}
    if args.tune:
        grids = {net: lr_grid(net, args) for net in args.nets}
        tuning_cfgs = {(net, setting, lr, seed): run_config(net, setting, seed, args, runs_dir, lr=lr, tuning=True)
                       for net in args.nets for setting in args.settings for lr in grids[net]
                       for seed in args.tuning_seeds}
        train_all(list(tuning_cfgs.values()))
        for net in args.nets:
            for setting in args.settings:
                def score(lr: float, seed: int, net: str = net, setting: str = setting) -> float:
                    return tuning_score(tuning_cfgs[(net, setting, lr, seed)], widths[net], args.calib_images, logs)
                lrs[(net, setting)], means = protocol.choose_lr(grids[net], score, args.tuning_seeds)
                tuning[f'{net}/{setting}'] = {
                    'grid': grids[net], 'tuning_seeds': list(args.tuning_seeds), 'runs': len(grids[net]) * len(
                        args.tuning_seeds), 'chosen': lrs[(net, setting)],
                    'held_out_top1': {f'{lr:g}': v for lr, v in means.items()}}
                print(f"lr {net} {setting}: {lrs[(net, setting)]:g} (held-out top-1 per lr {means})", flush=True)
    jobs = [(net, setting, seed) for seed in args.seeds for net in args.nets for setting in args.settings]
    cfgs = {job: run_config(*job, args, runs_dir, lr=lrs.get(job[:2])) for job in jobs}
    train_all([cfgs[job] for job in jobs])
    train_s = time.time() - t0
    runs = []
    for job in jobs:
        net, setting, seed = job
        ev = evaluate_run(cfgs[job], widths[net], args.calib_images)
        runs.append({'net': net, 'setting': setting, 'seed': seed, 'run': cfgs[job].experiment,
                     'top1': {k: v['top1'] for k, v in ev['widths'].items()}, 'eval': ev,
                     'train': timings[cfgs[job].experiment]})
        print(f'[{time.time() - t0:7.0f}s] evaluated {cfgs[job].experiment}', flush=True)
    from timm_alphanet.train import learning_rate
    first = cfgs[jobs[0]]
    held = None if not args.tune or args.tune_folder is None else sum(
        1 for _ in (Path(args.tune_folder) / 'validation').glob('*/*'))
    meta = {
        'data': (f"sklearn/digits ({sum(1 for _ in (args.fit_folder / 'train').glob('*/*'))} training images"
                 + (f'; {held} more held out to choose the lr)' if held else ')')
                 if args.fit_folder else first.dataset or 'image folder')
                + f" at {args.image_size} px ({runs[0]['eval']['num_val_images']} validation images)",
        'seeds': list(args.seeds),
        'budget': f'{args.epochs} epochs'
                  + (f' (at most {args.max_train_steps} steps)' if args.max_train_steps else '')
                  + f' x batch {args.batch_size} x {first.num_subnets} widths per step, '
                  + (f'lr {learning_rate(first, 1):.4g}' if not args.tune else 'lr per setting (below)')
                  + f' (cosine, {first.warmup_epochs:g} warm-up epoch)',
        'command': ' '.join(shlex.quote(a) for a in ['python', os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        'date': time.strftime('%Y-%m-%d %H:%M'), 'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
        'wall_s': {'train': round(train_s, 1), 'total': round(time.time() - t0, 1)},
        'cpu_s': round(_cpu_seconds(), 1), 'load_average_at_end': list(os.getloadavg()),
        'threads_per_run': args.threads, 'parallel_runs': args.jobs,
        'miniature_changes': {k: list(v) if isinstance(v, tuple) else v for k, v in MINIATURE.items()},
        'lr': {f'{net}/{setting}': learning_rate(cfgs[(net, setting, args.seeds[0])], 1) for net in args.nets
               for setting in args.settings},  # (under a --launcher the recipe's rule scales a null lr further)
        'lr_tuning': tuning, 'tune': args.tune, 'lr_grid_factors': list(args.lr_grid_factors),
        'holdout': held,
        'initial_logit_scale': {net: protocol.initial_logit_scale(cfgs[(net, args.settings[0], args.seeds[0])])
                                for net in args.nets},
    }
    summary = summarise(runs, widths, args.seeds)
    table = markdown(runs, widths, summary, meta)
    write_atomic(out / 'slimmable.md', table + f"\nCommand: `{meta['command']}` ({meta['date']}, {meta['machine']}, "
                                         f"{args.jobs} runs at once x {args.threads} thread(s); wall time "
                                         f"{meta['wall_s']['total'] / 60:.1f} min, CPU time "
                                         f"{meta['cpu_s'] / 60:.1f} min, load average at the end "
                                         f"{meta['load_average_at_end'][1]:.1f}).\n")
    write_atomic(out / 'slimmable.json', json.dumps({'meta': meta, 'widths': widths, 'summary': summary, 'runs': runs,
                                               'paper': PAPER}, indent=2))
    plotted = not args.no_plot and plot(summary, widths, out / 'slimmable.png')
    print(table)
    print(f"wall time {meta['wall_s']['total'] / 60:.1f} min, CPU time {meta['cpu_s'] / 60:.1f} min; "
          f"wrote {out / 'slimmable.md'}, {out / 'slimmable.json'}"
          + (f", {out / 'slimmable.png'}" if plotted else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
