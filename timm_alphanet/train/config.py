"""Command-line arguments of ``train.py``: timm's flag names, timm's ``-c/--config`` YAML-defaults mechanism.

A YAML file given with ``-c`` sets parser defaults (keys are the argument dests, e.g. ``batch_size``), so
flags on the command line still win. Unknown YAML keys are an error (a typo would otherwise be ignored).
With no config file the defaults are the demo (``train_configs/demo.yaml``): the small `DEMO_SPACE`
supernet on scikit-learn's digits, a few minutes on two CPU cores.
"""
import argparse
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = ['DEMO_DEFAULTS', 'DEMO_SPACE', 'build_parser', 'parse_args']

# A small AlphaNet-style space for 32x32 inputs: 4 stages, two resolutions; ~20-70k parameters.
DEMO_SPACE: Dict[str, Any] = {
    'use_v3_head': True,
    'resolutions': [24, 32],
    'first_conv': {'c': [8, 16], 'act_func': 'swish', 's': 2},
    'mb1': {'c': [8, 16], 'd': [1, 2], 'k': [3], 't': [1], 's': 1, 'act_func': 'swish', 'se': False},
    'mb2': {'c': [16, 24], 'd': [1, 2], 'k': [3, 5], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': False},
    'mb3': {'c': [24, 32], 'd': [1, 2], 'k': [3, 5], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': True},
    'mb4': {'c': [32, 48], 'd': [1, 2], 'k': [3], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': True},
    'last_conv': {'c': [96, 128], 'act_func': 'swish'},
    'head_expand_ratio': 2,
}


# The demo run (train_configs/demo.yaml says the same; a test keeps them equal): applied when no -c is given.
DEMO_DEFAULTS: Dict[str, Any] = {
    'epochs': 15, 'lr': 0.2, 'warmup_epochs': 1, 'hflip': 0.0, 'scale': [0.5, 1.0], 'workers': 0,
    'bn_calib_batches': 8, 'eval_archs': [],
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; defaults are the demo run."""
    p = argparse.ArgumentParser(description='AlphaNet supernet training / alpha-divergence KD (HF Accelerate)')
    p.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of argument defaults')

    g = p.add_argument_group('Dataset')
    g.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root (default: cache dir for sklearn/digits)')
    g.add_argument('--dataset', default='sklearn/digits', help='timm create_dataset name ("" = image folder, '
                   '"hfds/<name>", "torch/<name>", ...) or "sklearn/digits" (written once as an image folder)')
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default='validation')
    g.add_argument('--dataset-download', action='store_true', default=False)
    g.add_argument('--class-map', default='')
    g.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N', help='KD student input size C H W')
    g.add_argument('--interpolation', default='', help='eval interpolation (default: the model\'s)')
    g.add_argument('--mean', type=float, nargs='+', default=None)
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--crop-pct', default=None, type=float)

    g = p.add_argument_group('Model')
    g.add_argument('--model', default='alphanet_supernet', help='timm model name (alphanet_supernet = sandwich '
                   'training of the supernet; any other model is the KD student, needs --teacher)')
    g.add_argument('--space', default=DEMO_SPACE, help='search space: original-schema YAML path or dict (config)')
    g.add_argument('--eval-archs', default=[], nargs='*', help='extra subnets to validate: names of '
                   'ALPHANET_ARCHS (a0..a6) or arch dicts (config)')
    g.add_argument('--pretrained', action='store_true', default=False)
    g.add_argument('--initial-checkpoint', default='', metavar='PATH')
    g.add_argument('--num-classes', type=int, default=None, help='default: the dataset\'s')
    g.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout (supernet: max subnet only)')
    g.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='drop path (supernet: max only)')
    g.add_argument('--bn-momentum', type=float, default=None, help='BN momentum (paper supernet: 0)')
    g.add_argument('--sync-bn', action='store_true', default=False,
                   help='supernet: batch statistics over all processes (exactly equals one process x global batch)')
    g.add_argument('-b', '--batch-size', type=int, default=64, metavar='N', help='per-process batch size')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')

    g = p.add_argument_group('Teacher / distillation')
    g.add_argument('--teacher', default='', help='KD teacher: timm name, hf-hub:..., local-dir:...')
    g.add_argument('--teacher-pretrained-path', default=None, help='weights file for --teacher')
    g.add_argument('--kd-loss', default='alpha', choices=('alpha', 'kl'))
    g.add_argument('--alpha-min', type=float, default=-1.0)
    g.add_argument('--alpha-max', type=float, default=1.0)
    g.add_argument('--alpha-clip', type=float, default=5.0)
    g.add_argument('--kd-temperature', type=float, default=1.0)
    g.add_argument('--kd-weight', type=float, default=None, help='KD loss weight (teacher KD)')
    g.add_argument('--task-weight', type=float, default=None, help='task loss weight (teacher KD)')
    g.add_argument('--num-subnets', type=int, default=4, help='sandwich: max, num_subnets - 2 random, min')
    g.add_argument('--val-teacher', action='store_true', default=False, help='validate the teacher once')

    g = p.add_argument_group('Optimizer / schedule')
    g.add_argument('--opt', default='sgd', help='timm optimizer name ("sgd" is nesterov)')
    g.add_argument('--opt-eps', default=None, type=float)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=1e-5, help='not applied to BN and bias')
    g.add_argument('--clip-grad', type=float, default=None)
    g.add_argument('--clip-mode', default='norm', choices=('norm', 'value'))
    g.add_argument('--sched', default='cosine')
    g.add_argument('--sched-on-updates', action=argparse.BooleanOptionalAction, default=True)
    g.add_argument('--lr', type=float, default=None, help='default: lr-base * global batch / lr-base-size')
    g.add_argument('--lr-base', type=float, default=0.1)
    g.add_argument('--lr-base-size', type=int, default=256)
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--warmup-epochs', type=float, default=1)
    g.add_argument('--epochs', type=int, default=10)

    g = p.add_argument_group('Augmentation')
    g.add_argument('--no-aug', action='store_true', default=False)
    g.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0])
    g.add_argument('--ratio', type=float, nargs=2, default=[3. / 4., 4. / 3.])
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--vflip', type=float, default=0.0)
    g.add_argument('--color-jitter', type=float, default=0.4)
    g.add_argument('--aa', default=None, help='auto-augment policy, e.g. "rand-m9-mstd0.5" or "v0"')
    g.add_argument('--reprob', type=float, default=0.0)
    g.add_argument('--train-interpolation', default='random')
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--mixup', type=float, default=0.0)
    g.add_argument('--cutmix', type=float, default=0.0)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', default='batch')

    g = p.add_argument_group('EMA')
    g.add_argument('--model-ema', action='store_true', default=False)
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true', default=False)

    g = p.add_argument_group('Run')
    g.add_argument('--mixed-precision', default='no', choices=('no', 'fp16', 'bf16'))
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('-j', '--workers', type=int, default=2)
    g.add_argument('--log-interval', type=int, default=20, help='steps between log lines')
    g.add_argument('--output', default='output/train', metavar='DIR')
    g.add_argument('--experiment', default='', help='run folder name under --output (default: time + model)')
    g.add_argument('--resume', default='', metavar='PATH', help='checkpoint folder, or a run folder (its latest)')
    g.add_argument('--checkpoint-interval', type=int, default=0, help='also save every N steps (0: epoch ends only)')
    g.add_argument('--checkpoint-hist', type=int, default=3, help='keep the last K checkpoints (plus the best)')
    g.add_argument('--max-nonfinite', type=int, default=5, help='stop after this many non-finite losses in a row')
    g.add_argument('--bn-calib-batches', type=int, default=8, help='supernet: BN calibration batches per subnet')
    g.add_argument('--max-train-steps', type=int, default=0, help='stop after this many steps in total (0: all)')
    g.add_argument('--no-progress', action='store_true', default=False, help='no progress bars')
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Parse ``argv`` with timm's YAML-defaults mechanism. Returns ``(args, args_text)`` (text for args.yaml)."""
    parser = build_parser()
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='')
    args_config, _ = config_parser.parse_known_args(argv)
    if args_config.config:
        with open(args_config.config) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            raise SystemExit(f'{args_config.config}: expected a YAML mapping of argument defaults')
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise SystemExit(f'{args_config.config}: unknown keys {unknown}; keys are argument names with '
                             f'underscores, e.g. batch_size')
        parser.set_defaults(**cfg)
    else:
        parser.set_defaults(**DEMO_DEFAULTS)
    args = parser.parse_args(argv)
    _check(args)
    args_text = yaml.safe_dump(vars(args), default_flow_style=False, sort_keys=False)
    return args, args_text


def _check(args: argparse.Namespace) -> None:
    if args.num_subnets < 2:
        raise SystemExit(f'--num-subnets must be >= 2 (max and min), got {args.num_subnets}')
    if args.max_nonfinite < 1:
        raise SystemExit(f'--max-nonfinite must be >= 1, got {args.max_nonfinite}')
    if not is_supernet(args) and not args.teacher:
        raise SystemExit(f'--model {args.model} is not the supernet: teacher KD needs --teacher')


def is_supernet(args: argparse.Namespace) -> bool:
    return args.model == 'alphanet_supernet'


def eval_arch_list(args: argparse.Namespace) -> List[Tuple[str, Any]]:
    """(name, arch) of --eval-archs: ALPHANET_ARCHS names or arch dicts."""
    from ..archs import ALPHANET_ARCHS
    out = []
    for i, a in enumerate(args.eval_archs or []):
        if isinstance(a, str):
            key = a[len('alphanet_'):] if a.startswith('alphanet_') else a
            if key not in ALPHANET_ARCHS:
                raise SystemExit(f'--eval-archs: unknown arch {a!r}; names: {sorted(ALPHANET_ARCHS)} or a dict')
            out.append((key, ALPHANET_ARCHS[key]))
        else:
            out.append((f'arch{i}', a))
    return out
