#!/usr/bin/env python3
"""Run every benchmark with small defaults and write one report: ``benchmarks/report.md`` and ``report.json``.

Each benchmark runs as its own process (its usual command line plus ``--json``), one after the other; the report
holds the machine (CPU/GPU, cores, threads, torch/timm versions), and per benchmark its command, wall time and
side-by-side ratios. A benchmark script that run_all has no small defaults for is listed as not run.

    python benchmarks/run_all.py                          # all, small defaults (a few minutes on 2 CPU cores)
    python benchmarks/run_all.py --only loss search --threads 2
    python benchmarks/run_all.py --predictor-supernet output/train/<run>   # also search_predictor.py
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository: run without installing

from _machine import machine_info, machine_line  # noqa: E402
from _timing import timed  # noqa: E402

from timm_alphanet.utils import write_atomic  # noqa: E402

# benchmark -> (small arguments, tiny arguments for a smoke run)
BENCHMARKS: Dict[str, Dict[str, List[str]]] = {
    'inference': {'small': ['--models', 'a0', 'a3', '--batch-size', '8', '--iters', '10', '--warmup', '3',
                            '--no-compile'],
                  'tiny': ['--models', 'a0', '--batch-size', '1', '--iters', '2', '--warmup', '1', '--no-compile']},
    'supernet_step': {'small': ['--steps', '5', '--warmup', '1', '--batch-size', '4'],
                      'tiny': ['--steps', '1', '--warmup', '0', '--batch-size', '1']},
    'loss': {'small': ['--batch', '256', '--classes', '1000', '--repeats', '50', '--warmup', '5'],
             'tiny': ['--batch', '16', '--classes', '10', '--repeats', '3', '--warmup', '1']},
    'gpu_check': {'small': ['--smoke', '--steps', '3', '--repeats', '3'], 'tiny': ['--smoke']},
    'sync_bn': {'small': ['--steps', '2', '--repeats', '3', '--batch-size', '16'],
                'tiny': ['--steps', '1', '--repeats', '1', '--warmup', '0', '--batch-size', '4',
                         '--variants', 'no_sync,sync']},
    'train_throughput': {'small': ['--steps', '2', '--repeats', '3', '--batch-size', '32',
                                   '--variants', 'contiguous,channels_last'],
                         'tiny': ['--steps', '1', '--repeats', '1', '--batch-size', '4', '--no-per-subnet',
                                  '--variants', 'contiguous,channels_last']},
    # a search's population is at least 3 (EvolutionConfig)
    'search': {'small': ['--spaces', 'demo', 'alphanet', '--candidates', '6', '3'],
               'tiny': ['--spaces', 'demo', '--candidates', '3']},
    'search_predictor': {'small': ['--seeds', '0', '--population', '10', '--generations', '2', '--calib-images',
                                   '64', '--selection-images', '64'],
                         'tiny': ['--seeds', '0', '--population', '4', '--generations', '1', '--calib-images', '16',
                                  '--selection-images', '16']},
}
NEEDS_SUPERNET = {'search_predictor'}  # its first argument is a trained supernet


def run_benchmark(name: str, args: Sequence[str], env: Dict[str, str], workdir: Path) -> Dict[str, Any]:
    """Run ``benchmarks/<name>.py args --json``; returns its JSON (ratios, notes, details) plus the command, the wall
    time, the return code and the output's tail."""
    out = workdir / f'{name}.json'
    cmd = [sys.executable, str(HERE / f'{name}.py'), *args, '--json', str(out)]
    # one process, timed once from outside (each benchmark takes its own medians inside)
    p, seconds = timed(lambda: subprocess.run(cmd, env=env, cwd=HERE.parent, capture_output=True, text=True))
    shown = ' '.join(['python', f'benchmarks/{name}.py', *args])
    result: Dict[str, Any] = {'benchmark': name, 'command': shown, 'seconds': seconds, 'returncode': p.returncode,
                              'output_tail': (p.stdout + p.stderr)[-3000:]}
    if p.returncode == 0 and out.is_file():
        data = json.loads(out.read_text())
        result.update(ratios=data['ratios'], notes=data.get('notes', {}), details=data.get('details', {}))
    else:
        result.update(ratios={}, notes={}, details={}, error=(p.stderr or p.stdout)[-1500:])
    return result


def _note(notes: Dict[str, str], key: str) -> str:
    return notes.get(key, notes.get('*', ''))


def report_markdown(machine: Dict[str, Any], date: str, results: List[Dict[str, Any]], skipped: Dict[str, str]) -> str:
    """The report: machine, then per benchmark its command, wall time and ratios."""
    lines = ['# Benchmark report', '', f'{date}. Machine: {machine_line(machine)}.', '',
             f"Platform: {machine['platform']}. Written by `python benchmarks/run_all.py` (small defaults: each "
             'benchmark alone gives the full measurement).', '']
    for r in results:
        status = 'ok' if r['returncode'] == 0 else f"FAILED (exit {r['returncode']})"
        lines += [f"## {r['benchmark']}", '', f"`{r['command']}` — {r['seconds']:.1f} s, {status}", '']
        if r['ratios']:
            lines += ['| ratio | value | how to read |', '|---|---|---|']
            lines += [f"| {k} | {'n/a' if v is None else f'{v:.3f}'} | {_note(r['notes'], k)} |"
                      for k, v in r['ratios'].items()]
        elif r['returncode'] != 0:
            lines += ['```', r.get('error', '').strip()[-1000:], '```']
        lines.append('')
    if skipped:
        lines += ['## Not run', ''] + [f'- {name}: {why}' for name, why in skipped.items()] + ['']
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', nargs='+', choices=list(BENCHMARKS), default=None, help='run only these')
    p.add_argument('--size', choices=('small', 'tiny'), default='small',
                   help='argument set: small (the report) or tiny (a smoke run, seconds each)')
    p.add_argument('--threads', type=int, default=None, help='OMP_NUM_THREADS for every benchmark (default: as set)')
    p.add_argument('--predictor-supernet', default=None, help='a trained supernet (run folder) for search_predictor')
    p.add_argument('--output-dir', type=Path, default=HERE, help='where report.md and report.json go')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore')
    env['PYTHONPATH'] = os.pathsep.join([str(HERE.parent), *filter(None, [env.get('PYTHONPATH')])])
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    wanted = args.only or list(BENCHMARKS)
    skipped: Dict[str, str] = {}
    present = {p.stem for p in HERE.glob('*.py') if not p.stem.startswith('_') and p.stem != 'run_all'}
    for name in sorted(present - set(BENCHMARKS)):
        skipped[name] = 'run_all.py has no small defaults for it yet (run it alone)'
    results = []
    machine = machine_info()
    if args.threads:
        machine['torch_threads'] = args.threads
    with tempfile.TemporaryDirectory(prefix='run_all_') as tmp:
        for name in wanted:
            if name not in present:
                skipped[name] = f'benchmarks/{name}.py does not exist in this checkout'
                continue
            extra = list(BENCHMARKS[name][args.size])
            if name in NEEDS_SUPERNET:
                if not args.predictor_supernet:
                    skipped[name] = 'needs a trained supernet: --predictor-supernet output/train/<run>'
                    continue
                extra.insert(0, args.predictor_supernet)
            print(f'[run_all] {name}: {" ".join(extra)}', flush=True)
            r = run_benchmark(name, extra, env, Path(tmp))
            print(f"[run_all] {name}: {r['seconds']:.1f} s, exit {r['returncode']}; "
                  + ', '.join(f'{k} {v:.3f}' for k, v in r['ratios'].items() if v is not None), flush=True)
            results.append(r)
    date = time.strftime('%Y-%m-%d %H:%M %Z')
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.output_dir / 'report.json', json.dumps({'date': date, 'machine': machine, 'size': args.size,
                                                        'benchmarks': results, 'not_run': skipped}, indent=2) + '\n')
    write_atomic(args.output_dir / 'report.md', report_markdown(machine, date, results, skipped))
    print(f'written: {args.output_dir / "report.md"}, {args.output_dir / "report.json"}')
    return 0 if all(r['returncode'] == 0 for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
