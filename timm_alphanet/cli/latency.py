"""``alphanet-latency``: build a per-layer latency table of a search space on this device, or validate one.

    alphanet-latency build --space alphanet --device cpu --batch-size 1 --threads 4 --output lut.json
    alphanet-latency validate lut.json --samples 30

Both warn on stderr when the timings cannot be trusted (a noisy machine while building; predictions off by more
than the MAPE limit while validating); with --strict they exit 1 instead (build then writes no table).
"""
import argparse
import os
import shlex
import sys
from typing import Optional, Sequence, Tuple

from ._common import HelpFormatter, int_at_least, user_errors_exit

__all__ = ['build_parser', 'main']

PROG = 'alphanet-latency'
SPACE_NAMES = ('alphanet', 'demo')
# cost.latency.TimingConfig's defaults, for --help: that module imports torch, which a parser must not
# (tests/test_cli_startup.py checks they match)
TIMING_DEFAULTS = {'warmup': 5, 'repeats': 20, 'trim': 0.25}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description='Per-layer latency tables for latency-aware search: `build` times every distinct layer of a '
                    'search space on this device; `validate` compares a table\'s predictions with end-to-end '
                    'measurements of random subnets (MAPE, Kendall tau).')
    sub = parser.add_subparsers(dest='command', required=True)
    b = sub.add_parser('build', formatter_class=HelpFormatter,
                       help='time every distinct layer signature of a space')
    b.add_argument('--space', default='alphanet',
                   help="'alphanet' (the paper's space), 'demo' (the demo training space), an original-schema YAML "
                        "file, or a supernet (training run folder, local-dir:/hf-hub: model, original .pth.tar) "
                        'whose space and number of classes are used')
    b.add_argument('--num-classes', type=int_at_least(0), default=None,
                   help="classifier outputs (default: the supernet's; 10 for 'demo'; else 1000)")
    b.add_argument('--device', default='cpu', help="'cpu' or 'cuda' ('cuda:N')")
    b.add_argument('--batch-size', type=int_at_least(1), default=1)
    b.add_argument('--threads', type=int_at_least(1), default=None,
                   help="intra-op CPU threads (default: torch's default for this machine)")
    b.add_argument('--channels-last', action='store_true', help='time in channels-last memory format')
    b.add_argument('--dtype', default='float32', choices=('float32', 'float16', 'bfloat16'))
    _timing_args(b, defaults=True)
    b.add_argument('--output', required=True, help='the table to write (JSON)')
    b.add_argument('--strict', action='store_true',
                   help='exit 1 without writing the table when the timings were noisy (the spread of the repeats or '
                        "the reference op's drift over its limit), instead of warning")
    b.add_argument('--no-progress', action='store_true', help='no progress bar')
    v = sub.add_parser('validate', formatter_class=HelpFormatter,
                       help='measure random subnets end to end and compare with the predictions')
    v.add_argument('table', help='a table written by `build`, on this device')
    v.add_argument('--samples', type=int_at_least(2), default=30, help='random subnets to measure')
    v.add_argument('--seed', type=int, default=0, help='seed of the random subnets')
    _timing_args(v, defaults=False)
    v.add_argument('--strict', action='store_true',
                   help='exit 1 when the predictions are off by more than the MAPE limit, instead of warning')
    v.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def _timing_args(parser: argparse.ArgumentParser, defaults: bool) -> None:
    d = TIMING_DEFAULTS
    tail = '' if defaults else " (default: the table's)"
    parser.add_argument('--warmup', type=int_at_least(0), default=d['warmup'] if defaults else None,
                        help='untimed forwards per model' + tail)
    parser.add_argument('--repeats', type=int_at_least(1), default=d['repeats'] if defaults else None,
                        help='timed forwards per model' + tail)
    parser.add_argument('--trim', type=float, default=d['trim'] if defaults else None,
                        help='fraction of the slowest and of the fastest runs dropped before averaging' + tail)


def _space(text: str, num_classes: Optional[int]) -> Tuple[object, int]:
    """(space, num_classes) for --space."""
    from ..archs import ALPHANET_SPACE, DEMO_SPACE, resolve_space
    if text == 'alphanet':
        return ALPHANET_SPACE, 1000 if num_classes is None else num_classes
    if text == 'demo':
        return resolve_space(DEMO_SPACE), 10 if num_classes is None else num_classes
    if text.lower().endswith(('.yaml', '.yml')):
        if not os.path.isfile(text):
            raise FileNotFoundError(f'--space {text[:300]}: no such YAML file')
        return resolve_space(text), 1000 if num_classes is None else num_classes
    from ..sources import load_supernet
    try:
        model, _ = load_supernet(text)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f'--space {text[:300]!r}: not one of {list(SPACE_NAMES)} nor a YAML file; as a supernet: {e}')
    if num_classes is not None and num_classes != model.num_classes:
        raise ValueError(f'--num-classes {num_classes} disagrees with the supernet\'s {model.num_classes} classes')
    return model.space, model.num_classes


def next_steps(table: str, space: Optional[str] = None, validate: bool = True) -> str:
    """The closing ``next:`` lines (as training prints them): check the table, then search with it; `space` is
    build's --space, named as the supernet when it is one (else a placeholder)."""
    supernet = space if space and space not in SPACE_NAMES and not space.lower().endswith(('.yaml', '.yml')) \
        else 'SUPERNET'
    lines = ['next:']
    if validate:
        lines.append(f'  check:  alphanet-latency validate {shlex.quote(table)}')
    lines.append(f'  search: alphanet-search {shlex.quote(supernet)} --output SEARCH_DIR --latency-table '
                 f'{shlex.quote(table)} --objectives top1,latency')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``alphanet-latency``; exits with status 2 and a one-line message on bad input, and with
    --strict, 1 when the timings cannot be trusted (a noisy build, predictions over the MAPE limit)."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        from dataclasses import replace

        from ..cost.latency import (DEVICE_TYPES, LatencyTable, TimingConfig, build_latency_table,
                                    validate_latency_table)
        from ..processes import check_device

        def problem(text: str) -> int:
            """Report untrustworthy timings: exit status 1 with --strict, else a warning and 0."""
            label = 'error' if args.strict else 'WARNING'
            print(f'{PROG}: {label}: {text}', file=sys.stderr, flush=True)
            return 1 if args.strict else 0

        if args.command == 'build':
            check_device(args.device, DEVICE_TYPES)  # before the space (maybe a supernet) is read
            space, num_classes = _space(args.space, args.num_classes)
            timing = TimingConfig(args.warmup, args.repeats, args.trim)
            table = build_latency_table(space, args.device, args.batch_size, args.threads, args.channels_last,
                                        args.dtype, num_classes, timing=timing, progress=not args.no_progress,
                                        on_noise='ignore')
            noisy = table.noise_warning()
            if noisy and args.strict:
                return problem(f'{noisy} ({args.output} not written)')
            table.save(args.output)
            d = table.device
            print(f'{args.output}: {len(table.entries)} entries, {d["type"]} {d["name"]!r}, {d["threads"]} threads, '
                  f'{d["dtype"]}, {d["memory_format"]}, batch {d["batch_size"]}')
            print(table.format_noise())
            status = problem(noisy) if noisy else 0
            print(next_steps(args.output, args.space), flush=True)
            return status
        table = LatencyTable.load(args.table)
        given = {k: getattr(args, k) for k in ('warmup', 'repeats', 'trim') if getattr(args, k) is not None}
        timing = replace(table.timing, **given)
        result = validate_latency_table(table, args.samples, args.seed, timing, progress=not args.no_progress)
        d = table.device
        print(f'{args.table}: {d["type"]} {d["name"]!r}, {d["threads"]} threads, {d["dtype"]}, {d["memory_format"]}, '
              f'batch {d["batch_size"]}')
        print(result.format())
        off = result.warning()
        if off:
            return problem(off)
        if result.table_noise:  # the predictions held up this time, but the table's figures were noisy
            print(f'{PROG}: WARNING: the table was built on a noisy machine: {result.table_noise}', file=sys.stderr)
        print(next_steps(args.table, validate=False), flush=True)
        return 0

    return user_errors_exit(PROG, run)


if __name__ == '__main__':
    sys.exit(main())
