"""The training path on this device (CUDA when there is one, else CPU), every variant side by side in one run:

- the sandwich step (max + 2 random + min subnets, new ones every step, one backward each, an SGD step) in fp32,
  bf16, bf16 + channels-last, and bf16 + channels-last after the trainer's `compile_task`. `compile_task` compiles
  a supernet's BN + activation layers (a few graphs with dynamic shapes for every subnet; convolutions stay eager),
  so that row shows what fusing them gives and how many frames dynamo compiled for new subnets every step;
- the trainer's step (`train_one_epoch` through Accelerate over N fake batches, bf16 + channels-last) vs a bare loop
  doing the same forward/backward/optimizer step with the same task and optimizer: the trainer's overhead;
- the supernet's sandwich step vs the same 4 subnets as static models (`extract_subnet`) trained the same way (the
  same fixed subnets on both sides; label loss on the max, in-place KD on the others), and the static models
  compiled (what compiling would give if the subnets had fixed shapes): the overhead of weight sharing;
- host reads of tensor values per step (``item``/``float``/``bool``/...: each makes the host wait for the device)
  and, on CUDA, synchronisations per step (torch's sync debug mode);
- on CUDA, memory per variant: resident (weights, gradients, optimizer state) and the peak of a step above it.

Random data, no downloads. Timings are medians of interleaved repeats after warm-up (`_timing`).

    python benchmarks/gpu_check.py                          # AlphaNet space, batch 32 at 288 px, 1000 classes
    python benchmarks/gpu_check.py --smoke                  # demo space, batch 4, 2 steps: a quick CPU run
    python benchmarks/gpu_check.py --space demo --batch-size 256 --compile-backend none
"""
import argparse
import contextlib
import itertools
import statistics
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: run without installing

import timm  # noqa: E402
import torch  # noqa: E402

import timm_alphanet  # noqa: E402,F401 (registers the models)
from _machine import machine_info, machine_line  # noqa: E402
from _results import add_json_argument, write_json  # noqa: E402
from _timing import sync, time_interleaved, timed  # noqa: E402
from timm_alphanet import ALPHANET_SPACE, extract_subnet  # noqa: E402
from timm_alphanet.archs import DEMO_SPACE  # noqa: E402
from timm_alphanet.task import SandwichTask  # noqa: E402
from timm_alphanet.testing.host_reads import count_host_reads  # noqa: E402

SANDWICH = ('sandwich fp32', 'sandwich bf16', 'sandwich bf16+CL', 'sandwich bf16+CL+compile_task')
TRAINER = ('trainer bf16+CL (train_one_epoch)', 'bare loop bf16+CL')
SHARING = ('supernet bf16+CL, fixed subnets', 'static x4 bf16+CL', 'static x4 bf16+CL compiled')
VARIANTS = SANDWICH + TRAINER + SHARING
COMPILED = ('sandwich bf16+CL+compile_task', 'static x4 bf16+CL compiled')


class Run:
    """One variant: `fn()` runs `steps` steps; what it measured, or why it failed."""

    def __init__(self, name: str):
        self.name, self.fn, self.error = name, None, None
        self.seconds: List[float] = []
        self.host_reads: Optional[float] = None
        self.syncs: Optional[float] = None
        self.resident_mib: Optional[float] = None
        self.peak_mib: Optional[float] = None
        self.frames: Optional[int] = None  # dynamo frames compiled (compiled variants)
        self.counter = None

    def fail(self, e: BaseException) -> None:
        self.error = f'{type(e).__name__}: {" ".join(str(e).split())[:300]}'
        self.fn = None
        traceback.print_exc(file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def guarded(self) -> Callable[[], None]:
        """`fn` for the interleaved timing: a failure is recorded and the variant does nothing from then on."""
        def call() -> None:
            if self.fn is None:
                return
            try:
                self.fn()
            except Exception as e:  # noqa: BLE001 (report it; the other variants go on)
                self.fail(e)
        return call


@contextlib.contextmanager
def count_cuda_syncs(device: torch.device):
    """Host-device synchronisations while the block runs (torch's sync debug mode warns at each); [] off CUDA."""
    if device.type != 'cuda':
        yield None
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode(0)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.space = DEMO_SPACE if args.space == 'demo' else None  # None: the model's own, AlphaNet's
        resolutions = DEMO_SPACE['resolutions'] if args.space == 'demo' else ALPHANET_SPACE.resolutions
        self.res = max(resolutions)  # the trainer feeds the largest resolution; each subnet resizes
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(args.batch_size, 3, self.res, self.res, generator=g).to(self.device)
        self.y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(self.device)

    # ---- pieces
    def supernet(self, channels_last: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        model = timm.create_model('alphanet_supernet', space=self.space, num_classes=self.args.num_classes,
                                  drop_rate=0.0, drop_path_rate=0.0).to(self.device)
        return (model.to(memory_format=torch.channels_last) if channels_last else model).train()

    def task(self, model: torch.nn.Module) -> SandwichTask:
        return SandwichTask(model, num_subnets=4, seed=0, verbose=False).to(self.device).train()

    def sgd(self, params) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.0125, momentum=0.9, nesterov=True, weight_decay=1e-5)

    def autocast(self, dtype: Optional[torch.dtype]):
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def compile_counter(self, run: Run):
        from torch._dynamo.testing import CompileCounterWithBackend
        run.counter = CompileCounterWithBackend(self.args.compile_backend)
        return run.counter

    # ---- variants: each returns fn() running `steps` steps
    def sandwich(self, run: Run, dtype, channels_last: bool, compile_task_too: bool = False,
                 fixed_step: Optional[int] = None) -> Callable[[], None]:
        model = self.supernet(channels_last)
        task = self.task(model)
        if compile_task_too:
            from timm_alphanet.train import compile_task
            compile_task(task, self.compile_counter(run))  # the trainer's compile: BN + activations of the supernet
        opt = self.sgd(model.parameters())
        steps = itertools.count()
        x = self.x.contiguous(memory_format=torch.channels_last) if channels_last else self.x

        def fn() -> None:
            for _ in range(self.args.steps):
                step = next(steps) if fixed_step is None else fixed_step
                opt.zero_grad(set_to_none=True)
                with self.autocast(dtype):
                    task(x, self.y, step, backward=lambda loss: loss.backward())
                opt.step()
        return fn

    def static(self, run: Run, compiled: bool) -> Callable[[], None]:
        supernet = self.supernet(True)
        task = self.task(supernet)  # its subnets, resize and criteria: the sandwich's, exactly
        archs = task.subnets_for_step(0)
        models = [extract_subnet(supernet, a).to(memory_format=torch.channels_last).train() for a in archs]
        del task.trainable_module, supernet  # only the static copies train
        calls = models
        if compiled:
            counter = self.compile_counter(run)
            calls = [torch.compile(m, backend=counter) for m in models]
        opt = self.sgd([p for m in models for p in m.parameters()])
        x = self.x.contiguous(memory_format=torch.channels_last)

        def fn() -> None:
            for _ in range(self.args.steps):
                opt.zero_grad(set_to_none=True)
                with self.autocast(torch.bfloat16):
                    for i, (model, arch) in enumerate(zip(calls, archs)):
                        out = model(task.resize(x, arch.resolution))
                        if i == 0:
                            teacher = out.detach()
                            loss = task.criterion(out, self.y)
                        else:
                            kd = task.kd_criterion.forward_with_stats(out, teacher)
                            loss = kd.loss
                        loss.backward()
                opt.step()
        return fn

    def trainer_pair(self, trainer: Run, bare: Run) -> None:
        """The trainer's step and a bare loop with the same model, task and optimizer builders (bf16 + CL)."""
        from timm_alphanet.train import (TrainConfig, TrainState, build_accelerator, build_model, build_optimizer,
                                         build_task, train_one_epoch)
        cfg = TrainConfig(model='alphanet_supernet', space=self.space, num_classes=self.args.num_classes,
                          batch_size=self.args.batch_size, mixed_precision='bf16', channels_last=True, lr=0.0125,
                          no_progress=True, log_interval=10 ** 9, seed=0)
        try:
            acc = build_accelerator(cfg)
        except Exception as e:  # noqa: BLE001
            trainer.fail(e)
            bare.fail(e)
            return
        if acc.device != self.device and not (acc.device.type == self.device.type == 'cuda'):
            e = RuntimeError(f'the trainer picks {acc.device.type}, this run {self.device.type}')
            trainer.fail(e)
            bare.fail(e)
            return
        before = self._allocated()
        try:
            model = build_model(cfg, acc, self.args.num_classes)
            opt = build_optimizer(cfg, acc, model)
            model, opt = acc.prepare(model, opt)
            task = build_task(cfg, acc, model)
            state = TrainState()
            batches = [(self.x, self.y)] * self.args.steps  # what a prepared loader yields: batches on the device

            class NoSchedule:
                def step_update(self, num_updates):
                    pass

            def run_trainer() -> None:  # steps_per_epoch huge: no log step, as between two log intervals
                train_one_epoch(cfg, acc, task, batches, opt, NoSchedule(), state, 10 ** 9)
            trainer.fn = run_trainer
        except Exception as e:  # noqa: BLE001
            trainer.fail(e)
        trainer.resident_mib, before = self._allocated() - before, self._allocated()
        try:
            bare_model = build_model(cfg, acc, self.args.num_classes).to(self.device)
            bare_opt = build_optimizer(cfg, acc, bare_model)
            bare_task = build_task(cfg, acc, bare_model)
            steps = itertools.count()

            def run_bare() -> None:
                for _ in range(self.args.steps):
                    bare_opt.zero_grad(set_to_none=True)
                    x = self.x.contiguous(memory_format=torch.channels_last)
                    with self.autocast(torch.bfloat16):
                        bare_task(x, self.y, next(steps), backward=lambda loss: loss.backward())
                    bare_opt.step()
            bare.fn = run_bare
        except Exception as e:  # noqa: BLE001
            bare.fail(e)
        bare.resident_mib = self._allocated() - before

    # ---- the run
    def build(self) -> Dict[str, Run]:
        runs = {name: Run(name) for name in VARIANTS}
        compile_off = self.args.compile_backend == 'none'
        builders = {
            'sandwich fp32': lambda r: self.sandwich(r, None, False),
            'sandwich bf16': lambda r: self.sandwich(r, torch.bfloat16, False),
            'sandwich bf16+CL': lambda r: self.sandwich(r, torch.bfloat16, True),
            'sandwich bf16+CL+compile_task': lambda r: self.sandwich(r, torch.bfloat16, True, compile_task_too=True),
            'supernet bf16+CL, fixed subnets': lambda r: self.sandwich(r, torch.bfloat16, True, fixed_step=0),
            'static x4 bf16+CL': lambda r: self.static(r, False),
            'static x4 bf16+CL compiled': lambda r: self.static(r, True),
        }
        for name, build in builders.items():
            run = runs[name]
            if name in COMPILED and compile_off:
                run.error = 'skipped (--compile-backend none)'
                continue
            before = self._allocated()
            try:
                run.fn = build(run)
            except Exception as e:  # noqa: BLE001
                run.fail(e)
            run.resident_mib = self._allocated() - before
        self.trainer_pair(runs[TRAINER[0]], runs[TRAINER[1]])
        return runs

    def _allocated(self) -> float:
        return torch.cuda.memory_allocated(self.device) / 2 ** 20 if self.device.type == 'cuda' else 0.0

    def warm_and_account(self, run: Run) -> None:
        """Warm-up calls (compiles happen here), then one call counted: host reads, syncs, memory."""
        warm_start = self._allocated()
        try:
            for _ in range(self.args.warmup):
                timed(run.fn, self.device)
            sync(self.device)
            before = self._allocated()
            run.resident_mib = (run.resident_mib or 0.0) + before - warm_start  # + gradients, optimizer state
            if self.device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(self.device)
            with count_cuda_syncs(self.device) as syncs, count_host_reads() as reads:
                run.fn()
            sync(self.device)  # outside the count: an explicit synchronize is a sync too
            run.host_reads = len(reads) / self.args.steps
            if syncs is not None:
                run.syncs = sum('synchroniz' in str(w.message).lower() for w in syncs) / self.args.steps
            if self.device.type == 'cuda':
                run.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 - before
            if run.counter is not None:
                run.frames = run.counter.frame_count
        except Exception as e:  # noqa: BLE001
            run.fail(e)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--smoke', action='store_true', help='demo space, batch 4, 2 steps, 1 repeat, the "eager" '
                   'compile backend: a quick run on a CPU (the flags below override it)')
    p.add_argument('--space', choices=('alphanet', 'demo'), default=None, help='default: alphanet (smoke: demo)')
    p.add_argument('--batch-size', type=int, default=None, help='per step (default 32; smoke 4)')
    p.add_argument('--num-classes', type=int, default=None, help='default 1000 (demo space: 10)')
    p.add_argument('--steps', type=int, default=None, help='steps per timed call (default 3; smoke 2)')
    p.add_argument('--repeats', type=int, default=None, help='interleaved timed rounds (default 5; smoke 1)')
    p.add_argument('--warmup', type=int, default=2, help='untimed calls per variant first (compiles happen here)')
    p.add_argument('--compile-backend', default=None,
                   help='torch.compile backend of the compiled rows, or "none" (default: inductor on CUDA, eager '
                        'elsewhere: dynamo alone, since inductor takes minutes per model on a CPU)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    add_json_argument(p)
    args = p.parse_args(argv)
    smoke = args.smoke
    args.space = args.space or ('demo' if smoke else 'alphanet')
    args.batch_size = args.batch_size or (4 if smoke else 32)
    args.num_classes = args.num_classes or (10 if args.space == 'demo' else 1000)
    args.steps = args.steps or (2 if smoke else 3)
    args.repeats = args.repeats or (1 if smoke else 5)
    if smoke and args.warmup == 2:
        args.warmup = 1
    if args.compile_backend is None:
        args.compile_backend = 'inductor' if torch.device(args.device).type == 'cuda' and not smoke else 'eager'
    if min(args.batch_size, args.num_classes, args.steps, args.repeats) < 1 or args.warmup < 0:
        p.error('--batch-size, --num-classes, --steps and --repeats must be >= 1, --warmup >= 0')
    return args


def _fmt(value: Optional[float], spec: str) -> str:
    return '-' if value is None else format(value, spec)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    device = bench.device
    gpu = f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''
    print(f'gpu_check: {args.space} space, batch {args.batch_size} at {bench.res} px, {args.num_classes} classes, '
          f'{args.steps} steps per call x {args.repeats} repeats after {args.warmup} warm-up; device '
          f'{device.type}{gpu}; compile backend {args.compile_backend}')
    print(f'machine: {machine_line(machine_info())}', flush=True)

    runs = bench.build()
    for run in runs.values():
        if run.fn is not None:
            bench.warm_and_account(run)
    live = {name: run for name, run in runs.items() if run.fn is not None}
    if live:
        times = time_interleaved({name: run.guarded() for name, run in live.items()}, args.repeats, warmup=0,
                                 device=device)
        for name, samples in times.items():
            if live[name].fn is not None:  # it did not fail while being timed
                live[name].seconds = samples

    def s_per_step(name: str) -> Optional[float]:
        run = runs[name]
        return statistics.median(run.seconds) / args.steps if run.seconds and run.error is None else None

    print('\n| variant | ms/step | images/s | vs fp32 | host reads/step | CUDA syncs/step | resident MiB | '
          'step peak MiB |')
    print('|---|---|---|---|---|---|---|---|')
    fp32 = s_per_step('sandwich fp32')
    rows: Dict[str, Dict[str, Any]] = {}
    for name, run in runs.items():
        s = s_per_step(name)
        rows[name] = dict(s_per_step=s, images_per_s=None if s is None else args.batch_size / s,
                          host_reads_per_step=run.host_reads, cuda_syncs_per_step=run.syncs,
                          resident_mib=run.resident_mib if device.type == 'cuda' else None,
                          step_peak_mib=run.peak_mib, compiled_frames=run.frames, error=run.error)
        if s is None:
            why = run.error if (run.error or '').startswith('skipped') else f'error: {run.error or "not timed"}'
            print(f'| {name} | {why} | | | {_fmt(run.host_reads, ".1f")} | | | |')
            continue
        speedup = f'{fp32 / s:.2f}x' if fp32 and name in SANDWICH else ''
        print(f'| {name} | {s * 1e3:.1f} | {args.batch_size / s:.1f} | {speedup} | {_fmt(run.host_reads, ".1f")} | '
              f'{_fmt(run.syncs, ".1f")} | {_fmt(rows[name]["resident_mib"], ".0f")} | {_fmt(run.peak_mib, ".0f")} |')

    ratios: Dict[str, float] = {}

    def ratio(key: str, top: str, bottom: str, invert: bool = False) -> None:
        a, b = s_per_step(top), s_per_step(bottom)
        if a and b:
            ratios[key] = b / a if invert else a / b
    ratio('bf16 / fp32 (images/s)', 'sandwich bf16', 'sandwich fp32', invert=True)
    ratio('bf16+CL / fp32 (images/s)', 'sandwich bf16+CL', 'sandwich fp32', invert=True)
    ratio('bf16+CL / bf16 (images/s)', 'sandwich bf16+CL', 'sandwich bf16', invert=True)
    ratio('compile_task / eager (s per step, bf16+CL)', 'sandwich bf16+CL+compile_task', 'sandwich bf16+CL')
    ratio('trainer / bare loop (s per step: trainer overhead)', TRAINER[0], TRAINER[1])
    ratio('supernet / static x4 (s per step: weight-sharing overhead)', SHARING[0], SHARING[1])
    ratio('static compiled / static eager (s per step)', SHARING[2], SHARING[1])
    print('\nratios (measured side by side in this run):')
    for key, value in ratios.items():
        print(f'  {key}: {value:.3f}x')
    frames = runs['sandwich bf16+CL+compile_task'].frames
    print('\nnotes:')
    print('  compile_task compiles the supernet\'s BN + activation layers (dynamic shapes), convolutions stay eager: '
          f'{_fmt(frames, "d")} dynamo frames compiled in the compile_task row, for new subnets every step')
    print(f'  static x4 compiled: {_fmt(runs[SHARING[2]].frames, "d")} frames ({args.compile_backend}); host reads: '
          'item/float/bool/int/index/tolist calls in one call of each variant')
    errors = {name: run.error for name, run in runs.items() if run.error}
    for name, error in errors.items():
        print(f'  {name}: {error}')

    write_json(args.json, 'gpu_check', ratios,
               {'variants': rows, 'device': device.type, 'gpu': gpu.strip(' ()') or None, 'space': args.space,
                'batch_size': args.batch_size, 'resolution': bench.res, 'steps': args.steps,
                'repeats': args.repeats, 'compile_backend': args.compile_backend},
               {'*': 'images/s ratios > 1 are faster; s-per-step ratios > 1 are slower (overheads)',
                'compile_task / eager (s per step, bf16+CL)': 'BN + activations of the supernet compiled'})


if __name__ == '__main__':
    main()
