"""Training throughput on this machine, side by side: supernet sandwich steps and teacher-KD steps in the default
(contiguous) layout vs channels-last, out-of-place SiLU and the trainer's `compile_task` (contiguous or
channels-last: a supernet's BN + activation layers, a KD student whole; its compile seconds and dynamo graphs are
printed), and this tree vs another checkout.

Task level: synthetic batches, no data loading, each variant on its own copy of the same model, the same subnets
(steps 0..steps-1 of the seed) for every variant, variants interleaved and repeated, medians reported.
Trainer level (``--trainer-steps N``): wall time of ``train.py`` (the demo run) stopped after N steps minus the
same run stopped after 2 steps, per step, so start-up and saving cancel out.

    python benchmarks/train_throughput.py                                   # demo space, 32 px, batch 64
    python benchmarks/train_throughput.py --space paper --batch-size 8 --threads 2 --steps 3
    python benchmarks/train_throughput.py --space paper --batch-size 8 --threads 2 --steps 4 \
        --variants contiguous,channels_last,channels_last_compile --no-per-subnet   # issue 19's CPU step target
    python benchmarks/train_throughput.py --trainer-steps 20                # also through train.py
    python benchmarks/train_throughput.py --compare-with /tmp/before        # before/after: another checkout
    python benchmarks/train_throughput.py --space paper --batch-size 8 --threads 2 --variants channels_last \
        --profile     # also: where a step's CPU time goes (convolutions, BN, activations, copies, the rest)
"""
import argparse
import copy
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from _results import add_json_argument, write_json
from _steps import sandwich_step, variant_list
from _timing import time_interleaved, timed

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
VARIANTS = ('contiguous', 'channels_last', 'silu_out_of_place', 'compile', 'channels_last_compile')
# `op_shares`' kinds, by what an op's name holds (first match wins; convolution_backward before convolution)
OP_KINDS = (('convolution backward', ('convolution_backward',)), ('convolution forward', ('convolution',)),
            ('batch norm', ('batch_norm',)), ('activation', ('silu', 'relu', 'hardswish', 'hardsigmoid', 'gelu',
                                                               'sigmoid')),
            ('copies', ('copy_',)))


def op_shares(self_times: Dict[str, float]) -> Dict[str, float]:
    """Percent of the total self time per `OP_KINDS` kind (plus 'rest') from ``{op name: self time}``."""
    total = sum(self_times.values())
    shares = {kind: 0.0 for kind, _ in OP_KINDS}
    shares['rest'] = 0.0
    for name, t in self_times.items():
        kind = next((k for k, parts in OP_KINDS if any(part in name for part in parts)), 'rest')
        shares[kind] += 100.0 * t / total if total else 0.0
    return shares


def _profile(fn: Callable[[], None], steps: int) -> Dict[str, float]:
    """`op_shares` of `steps` calls of `fn` under torch.profiler (CPU self time, after one call as warm-up)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return op_shares({e.key: e.self_cpu_time_total for e in prof.key_averages()})


def _median_times(fns: Dict[str, Callable[[], None]], steps: int, repeats: int) -> Dict[str, float]:
    """Median seconds per call of each fn: one warm-up round, then `repeats` rounds of `steps` calls, interleaved."""
    times = time_interleaved(fns, repeats, warmup=1, number=steps)
    return {k: statistics.median(v) for k, v in times.items()}


def _variant_model(base, variant: str):
    import torch
    import torch.nn as nn
    model = copy.deepcopy(base)
    if variant.startswith('channels_last'):
        model = model.to(memory_format=torch.channels_last)
    if variant == 'silu_out_of_place':  # autograd of an in-place SiLU must save a copy of its input
        for m in model.modules():
            if isinstance(m, nn.SiLU):
                m.inplace = False
    return model


def worker(args: argparse.Namespace) -> Dict[str, float]:
    """Task-level seconds per step for each workload x variant, with whichever timm_alphanet is importable."""
    import timm
    import torch

    import timm_alphanet
    from timm_alphanet import ALPHANET_SPACE, AlphaDistillationTask, SearchSpace
    from timm_alphanet.archs import DEMO_SPACE
    from timm_alphanet.task import SandwichTask

    if args.threads:
        torch.set_num_threads(args.threads)
    space = SearchSpace.from_dict(DEMO_SPACE) if args.space == 'demo' else ALPHANET_SPACE
    res, b = max(space.resolutions), args.batch_size
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(b, 3, res, res, generator=gen), torch.randint(0, 10, (b,), generator=gen)
    torch.manual_seed(0)
    supernet = timm.create_model('alphanet_supernet', space=space, num_classes=10).train()
    student = timm.create_model(args.student, num_classes=10).train()
    teacher = timm.create_model(args.teacher, num_classes=10).eval()

    fns: Dict[str, Callable[[], None]] = {}
    compiled: Dict[str, float] = {}
    for variant in args.variants:
        xv = x.contiguous(memory_format=torch.channels_last) if variant.startswith('channels_last') else x
        model = _variant_model(supernet, variant)
        task = SandwichTask(model, num_subnets=args.num_subnets, seed=0, verbose=False)
        kd = AlphaDistillationTask(_variant_model(student, variant), _variant_model(teacher, variant),
                                   verbose=False).train()
        if variant.endswith('compile'):  # the trainer's compile: a supernet's BN + activations, a KD student whole
            compiled.update(_compile(task, kd, xv, y, args.steps, variant))
        fns[f'sandwich/{variant}'] = sandwich_step(task, model.parameters(), xv, y, args.steps)
        fns[f'kd/{variant}'] = _kd_step(kd, xv, y)
    out = _median_times(fns, args.steps, args.repeats)
    out.update(compiled)
    if args.profile:  # a separate pass: the profiler's overhead stays out of the timings above
        for name, share in _profile(fns[f'sandwich/{args.variants[0]}'], args.steps).items():
            out[f'_profile/{name}'] = share
    if args.per_subnet:
        out.update(_per_subnet(supernet, space, x, args))
    out['_module'] = timm_alphanet.__file__
    out['_threads'] = torch.get_num_threads()
    return out


def _compile(task, kd, x, y, steps: int, variant: str) -> Dict[str, float]:
    """`compile_task` on both tasks, then `steps` sandwich steps on a separate copy of its step function (every
    subnet the timed steps train) and one KD step: compile seconds and dynamo graphs, as ``_compile/...`` entries."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from timm_alphanet.train import compile_task
    out = {}
    for name, t, warm, n in (('sandwich', task, sandwich_step(task, task.supernet.parameters(), x, y, steps), steps),
                             ('kd', kd, _kd_step(kd, x, y), 1)):
        counter = CompileCounterWithBackend('inductor')
        compile_task(t, counter)
        _, seconds = timed(lambda: [warm() for _ in range(n)])
        out[f'_compile/{variant} {name} seconds'] = seconds
        out[f'_compile/{variant} {name} graphs'] = counter.frame_count
    return out


def _kd_step(kd, x, y) -> Callable[[], None]:
    import torch
    opt = torch.optim.SGD(kd.trainable_module.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        kd(x, y)['loss'].backward()
        opt.step()
    return step


def _per_subnet(supernet, space, x, args) -> Dict[str, float]:
    """Forward + backward of the max, one random and the min subnet alone, on the step's images."""
    import torch.nn.functional as F
    fns = {}
    for name, arch in [('max', space.max_config()), ('random', space.sample(random.Random(0))),
                       ('min', space.min_config())]:
        model = copy.deepcopy(supernet)
        model.set_subnet(arch)
        xi = F.interpolate(x, size=(arch.resolution, arch.resolution), mode='bicubic', align_corners=False)

        def one(model=model, xi=xi) -> None:
            model.zero_grad()
            model(xi).logsumexp(-1).mean().backward()
        fns[f'subnet/{name}@{arch.resolution}'] = one
    return _median_times(fns, args.steps, args.repeats)


# ---- trainer level: train.py of a checkout, timed from outside
def _trainer_step_seconds(tree: Path, extra: Sequence[str], steps: int, workdir: Path, env: Dict[str, str]) -> float:
    """Seconds per step of ``tree/train.py`` (demo defaults + `extra`): a run of `steps` minus a run of 2 steps."""
    def wall(n: int) -> float:
        cmd = [sys.executable, str(tree / 'train.py'), '--epochs', '1', '--max-train-steps', str(n), '--no-progress',
               '--output', str(workdir), '--experiment', f'{tree.name}-{n}-{len(os.listdir(workdir))}', *extra]
        p, seconds = timed(lambda: subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True))
        if p.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed:\n{p.stderr[-2000:]}')
        return seconds
    return (wall(steps) - wall(2)) / (steps - 2)


def _help(tree: Path, threads: int) -> str:
    p = subprocess.run([sys.executable, str(tree / 'train.py'), '--help'], env=_env_for(tree, threads), cwd=tree,
                       capture_output=True, text=True)
    return p.stdout


def _env_for(tree: Path, threads: int) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore')
    env.pop('WORLD_SIZE', None)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    return env


def _worker_in(tree: Path, argv: Sequence[str], threads: int) -> Dict[str, float]:
    p = subprocess.run([sys.executable, str(HERE), '--worker', *argv], env=_env_for(tree, threads),
                       cwd=tempfile.gettempdir(), capture_output=True, text=True)  # cwd: no tree shadows PYTHONPATH
    if p.returncode != 0:
        raise RuntimeError(f'worker in {tree} failed:\n{p.stderr[-3000:]}')
    return json.loads(p.stdout.strip().splitlines()[-1])


def _teacher_dir(workdir: Path) -> Path:
    """A local-dir: teacher (random resnet10t) for KD through train.py, without the network."""
    import timm
    import timm_alphanet
    folder = workdir / 'teacher'
    timm_alphanet.save_pretrained(timm.create_model('resnet10t', num_classes=10), folder)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--space', default='demo', choices=('demo', 'paper'))
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--steps', type=int, default=4, help='timed steps per round (cycling through the same subnets)')
    p.add_argument('--repeats', type=int, default=5, help='rounds; medians are reported')
    p.add_argument('--num-subnets', type=int, default=4)
    p.add_argument('--student', default='mobilenetv2_050')
    p.add_argument('--teacher', default='resnet18')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    p.add_argument('--variants', type=variant_list(VARIANTS),
                   default=['contiguous', 'channels_last', 'silu_out_of_place'],
                   help=f'comma-separated, from {",".join(VARIANTS)} (compile: the trainer\'s compile_task, '
                        'minutes of compiling on a CPU)')
    p.add_argument('--no-per-subnet', dest='per_subnet', action='store_false')
    p.add_argument('--profile', action='store_true', help='also print where the first variant\'s sandwich step '
                   'spends its CPU time (torch.profiler, self time per kind of op)')
    p.add_argument('--trainer-steps', type=int, default=0, help='also time train.py (demo) per step, N > 2 steps')
    p.add_argument('--compare-with', type=Path, default=None, help='another checkout (e.g. git archive of a commit)')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    add_json_argument(p)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    sys.path.insert(0, str(ROOT))  # this process (the trainer-level helpers) uses this tree
    trees = {'this': ROOT} if args.compare_with is None else {'before': args.compare_with.resolve(), 'after': ROOT}
    print(f'{args.space} space, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, '
          f'threads {args.threads or "default"}; trees: ' + ', '.join(f'{k}={v}' for k, v in trees.items()))
    if args.compare_with is None:
        results = {'this': worker(args)}
    else:  # one worker per tree and repeat, trees alternating; medians over repeats
        argv = ['--space', args.space, '--batch-size', str(args.batch_size), '--steps', str(args.steps),
                '--repeats', '1', '--num-subnets', str(args.num_subnets), '--student', args.student,
                '--teacher', args.teacher, '--threads', str(args.threads), '--variants', ','.join(args.variants),
                *([] if args.per_subnet else ['--no-per-subnet']), *(['--profile'] if args.profile else [])]
        runs: Dict[str, List[Dict[str, float]]] = {t: [] for t in trees}
        for r in range(args.repeats):
            for tree in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                runs[tree].append(_worker_in(trees[tree], argv, args.threads))
        results = {t: {k: (statistics.median(x[k] for x in rs) if not k.startswith('_') else rs[0][k])
                       for k in rs[0]} for t, rs in runs.items()}
    compile_notes = {}
    for k, r in results.items():
        print(f'  {k}: timm_alphanet from {r.pop("_module")}, {r.pop("_threads")} threads')
        compile_notes[k] = {n: r.pop(n) for n in [n for n in r if n.startswith('_compile/')]}
        profile = {n[len('_profile/'):]: r.pop(n) for n in [n for n in r if n.startswith('_profile/')]}
        if profile:
            print(f'  {k} sandwich/{args.variants[0]}, share of CPU self time: '
                  + ', '.join(f'{n} {v:.1f} %' for n, v in profile.items()))
        if compile_notes[k]:  # compile_task's cost: the first steps' seconds and dynamo's graphs
            print(f'  {k} compile_task: ' + ', '.join(f'{n[len("_compile/"):]} {v:.4g}'
                                                        for n, v in compile_notes[k].items()))
    names = list(next(iter(results.values())))
    if args.trainer_steps > 2:
        names += _trainer_rows(args, trees, results)
    ratios = _print_table(names, results, args.batch_size)
    write_json(args.json, 'train_throughput', ratios, {'seconds_per_step': results, 'batch_size': args.batch_size,
                                                      'space': args.space, 'compile': compile_notes},
               {'*': 'step time of a variant over its contiguous counterpart (or after/before); < 1 is faster'})


def _trainer_rows(args, trees: Dict[str, Path], results: Dict[str, Dict[str, float]]) -> List[str]:
    """Per-step seconds through train.py, trees and variants interleaved, medians of `repeats`."""
    workdir = Path(tempfile.mkdtemp(prefix='train_throughput_'))
    teacher = _teacher_dir(workdir)
    kd = ['--model', args.student, '--teacher', f'local-dir:{teacher}', '--input-size', '3', '32', '32']
    runs = {'train.py supernet': [], 'train.py kd': kd}
    if 'channels_last' in args.variants and args.compare_with is None:
        runs.update({'train.py supernet channels_last': ['--channels-last'],
                     'train.py kd channels_last': [*kd, '--channels-last']})
    common = ['-b', str(args.batch_size)]
    # contiguous rows say so where the trainer has the switch (channels-last is its default since it exists)
    contiguous = {t: ['--no-channels-last'] if '--no-channels-last' in _help(trees[t], args.threads) else []
                  for t in trees}
    samples: Dict[str, Dict[str, List[float]]] = {t: {n: [] for n in runs} for t in trees}
    for r in range(args.repeats):
        for tree in (list(trees) if r % 2 == 0 else list(reversed(trees))):
            for name, extra in runs.items():
                env = _env_for(trees[tree], args.threads)
                layout = [] if name.endswith('channels_last') else contiguous[tree]
                samples[tree][name].append(_trainer_step_seconds(
                    trees[tree], [*common, *extra, *layout], args.trainer_steps, workdir, env))
    for tree in trees:
        results[tree].update({n: statistics.median(v) for n, v in samples[tree].items()})
    return list(runs)


def _print_table(names: List[str], results: Dict[str, Dict[str, float]], batch: int) -> Dict[str, float]:
    """Print the table; returns its ratios ({measure: ratio})."""
    trees = list(results)
    ratios: Dict[str, float] = {}
    head = ' | '.join(f'{t} ms/step' for t in trees)
    print(f'\n| measure | {head} | {"after/before" if len(trees) == 2 else "vs contiguous"} |')
    print('|---|' + '---|' * (len(trees) + 1))
    for name in names:
        cells = ' | '.join(f'{results[t][name] * 1e3:.1f}' for t in trees)
        value: Optional[float] = None
        if len(trees) == 2:
            value = results['after'][name] / results['before'][name]
            ratios[f'{name} after / before'] = value
        else:
            ref = _reference(name, results[trees[0]])
            if ref:
                value = results[trees[0]][name] / results[trees[0]][ref]
                ratios[f'{name} / {ref}'] = value
        print(f'| {name} | {cells} | {"" if value is None else f"{value:.2f}x"} |')
    print(f'\n(images/s = {batch} / seconds per step; ratios < 1 are faster)')
    return ratios


def _reference(name: str, row: Dict[str, float]) -> str:
    """The contiguous counterpart of a variant's measure ('' for measures without one)."""
    for v in VARIANTS[1:]:
        if name.endswith(f'/{v}') or name.endswith(f' {v}'):
            ref = name[:-len(v) - 1] + ('/contiguous' if '/' in name else '')
            return ref if ref in row else ''
    return ''


if __name__ == '__main__':
    main()
