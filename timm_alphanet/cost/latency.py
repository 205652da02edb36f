"""On-device latency tables: time every distinct layer of a search space once, predict a subnet by summing.

The layers are the ops of `subnet_ops` (the walk the FLOPs counter uses): the stem, each MBConv block and the
head, each keyed by its frozen signature (shapes, kernel, stride, expand ratio, SE, activation, input size). A
table records how it was measured (device name, torch version, threads, dtype, memory format, batch size, timing
protocol), refuses spaces whose layers it lacks, and `validate_latency_table` compares its predictions with
end-to-end measurements of random subnets (MAPE and Kendall tau).

once-for-all ships such tables (YAML per resolution) but not the code that builds them; HAT's builder times whole
subnets. Neither is a library we can call, so the timing protocol here is written out: warm-up runs, then
`repeats` timed runs, the slowest and fastest `trim` fraction dropped, the mean of the rest. On CPU each op is
timed with the clock inside a whole forward; on CUDA each op is bracketed by CUDA events recorded in the stream
(no synchronize between ops), so the ops run pipelined as in a real forward and their times add up to it.

A build also records how noisy the machine was (`LatencyTable.noise`): the spread of each entry's repeats, and a
fixed reference op timed before, between and after the models (a change in its time is the machine changing).
`LatencyTable.noise_warning` and `LatencyValidation.warning` say, with the measured figures, when a table or a
validation should not be trusted.
"""
import itertools
import json
import math
import os
import platform
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..archs import SpaceSpec, resolve_space
from ..models.alphanet import AlphaNet
from ..spaces import SearchSpace, SubnetConfig
from ..utils import bounded_repr, import_optional, read_json_file, write_atomic
from .ops import Op, subnet_ops

__all__ = ['LatencyTable', 'TimingConfig', 'LatencyValidation', 'NoisyLatencyWarning', 'op_signature', 'distinct_ops',
           'device_info', 'time_forward', 'build_latency_table', 'measure_subnet', 'validate_latency_table', 'FORMAT',
           'SPREAD_LIMIT_PCT', 'REFERENCE_LIMIT_PCT', 'MAPE_LIMIT_PCT', 'MAX_WARMUP', 'MAX_REPEATS', 'MAX_THREADS',
           'MAX_BATCH_SIZE', 'MAX_MS', 'MAX_NUM_CLASSES', 'MAX_IN_CHANS']

FORMAT = 'timm_alphanet.latency/1'
MAX_TABLE_BYTES = 8 << 20  # the full AlphaNet space's table is ~0.2 MB
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
DEVICE_TYPES = ('cpu', 'cuda')
OVERHEAD = 'Overhead(model)'  # the entry for what a model's forward costs beyond its ops (container calls)
# Bounds on every count and time a table (a file) or a caller hands the timing code: beyond them a forged table
# hangs `validate` (10**9 repeats), aborts it (libgomp runs out of memory making 100000 threads), allocates GBs
# (batch 20000) or sums entries to inf (1e308 ms). Each is far beyond a real build: the default is 5 warm-up
# runs, 20 repeats, batch 1; the AlphaNet space's largest subnet takes ~100 ms per image on a CPU core.
MAX_WARMUP = 1_000
MAX_REPEATS = 10_000
MAX_THREADS = 1024
MAX_BATCH_SIZE = 4096
MAX_MS = 1e6  # an entry, its spread, the overhead or a reference time: 1000 s for one layer is no measurement
MAX_NUM_CLASSES = 1_000_000  # ImageNet-21k has 21 843
MAX_IN_CHANS = 1024
_MAX_PCT = 1e9  # noise figures in %: a loaded build spreads by a few 1000 %

# Noise limits, from builds of the demo space (default timing, 1 thread) on a 2-core CPU VM that other jobs shared.
# The spread of an entry is (p90 - p10) / median of its repeats. Quiet, the median entry spread by 17-21 % and the
# 90th percentile of entries by 29-50 %; with one CPU-bound process beside the build, by 33-138 % and 890-1020 %;
# with two, 52-310 % and 1480-3130 %. A limit of 100 % at the 90th percentile is twice the quiet figure and a tenth
# of the loaded one; the 90th percentile rather than the worst entry, because the worst of many entries is large
# even when quiet (86-159 % of 133 entries here, and the full space has thousands).
SPREAD_LIMIT_PCT = 100.0
# The reference op is timed before, between and after the models. A single check can catch a passing burst (one
# of 33 came out 30 % slow on a quiet machine), so the drift compares the median of the first three checks with
# that of the last three, and the range is p10-p90 of the checks: quiet, both stayed within 4 %; load that
# stopped halfway through a build moved them 10-12 %. A machine 20 % slower for part of a build leaves those
# entries 20 % high, which alone can bring a table to the 10 % MAPE limit below.
REFERENCE_LIMIT_PCT = 20.0
# A quiet demo table predicts within 3-7 % (MAPE) on CPU; built under load, 41-84 % off. Search compares
# candidates a few percent apart, and per-layer tables in the literature (FBNet, once-for-all) report errors of a
# few percent; beyond 10 % the predictions are not worth searching with.
MAPE_LIMIT_PCT = 10.0
MIN_SPREAD_SAMPLES = 5  # fewer repeats of an entry give no meaningful p10/p90
REFERENCE_WARMUP, REFERENCE_REPEATS = 3, 20
REFERENCE_OP = 'Conv2d(32, 32, 3, padding=1), float32, batch 1, 32x56x56'
_clock = time.perf_counter  # every CPU-side timing reads this (tests substitute a deterministic clock)


class NoisyLatencyWarning(UserWarning):
    """A latency table was timed on a machine too noisy to trust it (the message has the measured figures)."""


def op_signature(op: Op) -> str:
    """The table key of an op: its type and every field (nested BlockSpec fields prefixed), e.g.
    ``BlockOp(block.in_chs=16,block.out_chs=24,...,in_hw=56)``. Equal ops have equal keys."""
    parts: List[str] = []

    def walk(prefix: str, obj: Any) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(f'{prefix}{f.name}.', value)
            else:
                parts.append(f'{prefix}{f.name}={value}')
    walk('', op)
    return f'{type(op).__name__}({",".join(parts)})'


def _covering_archs(space: SearchSpace) -> Iterator[SubnetConfig]:
    """A few archs whose ops together include every op of the space, found greedily and deterministically.

    A block's op depends only on its stage, the width before it, its width, kernel, expand ratio, whether it is
    the stage's first block (all later blocks of a stage share one op) and the resolution; the head's on the last
    stage width and the head width. So per resolution, every stage needs each (previous width, width, kernel,
    ratio) once, at a depth of at least 2 where the space allows it, and the head each (last width, head width).
    Each arch picks, stage by stage, a tuple not yet covered, preferring widths that lead to uncovered tuples of
    the next stage; every arch covers at least one new tuple, so the loop ends.
    """
    stages, n = space.stages, space.num_stages
    depths = tuple(min((d for d in s.depths if d >= 2), default=max(s.depths)) for s in stages)
    before = [space.stem_widths, *(s.widths for s in stages[:-1])]
    for res in space.resolutions:
        todo = [set(itertools.product(before[i], s.widths, s.kernel_sizes, s.expand_ratios))
                for i, s in enumerate(stages)]
        todo.append(set(itertools.product(stages[-1].widths, space.head_widths)))

        def leads(i: int, w: int) -> int:  # uncovered tuples of position i that start at width w
            return sum(t[0] == w for t in todo[i])
        for _ in range(sum(map(len, todo))):
            if not any(todo):
                break
            w_prev = max(space.stem_widths, key=lambda w: (leads(0, w), -w))
            widths, kernels, ratios = [w_prev], [], []
            for i, s in enumerate(stages):
                w, k, t = max(itertools.product(s.widths, s.kernel_sizes, s.expand_ratios),
                              key=lambda o: ((w_prev, *o) in todo[i], leads(i + 1, o[0]), -o[0], -o[1], -o[2]))
                todo[i].discard((w_prev, w, k, t))
                widths.append(w), kernels.append(k), ratios.append(t)
                w_prev = w
            head = max(space.head_widths, key=lambda h: ((w_prev, h) in todo[n], -h))
            todo[n].discard((w_prev, head))
            yield SubnetConfig(res, (*widths, head), depths, tuple(kernels), tuple(ratios))


def distinct_ops(space: SearchSpace, num_classes: int = 1000, in_chans: int = 3) -> Dict[str, Tuple[Op, SubnetConfig]]:
    """Signature -> (op, an arch that runs it) for every distinct op of every subnet of `space`."""
    out: Dict[str, Tuple[Op, SubnetConfig]] = {}
    for arch in _covering_archs(space):
        for op in subnet_ops(arch, space, num_classes, in_chans):
            out.setdefault(op_signature(op), (op, arch))
    return out


@dataclass(frozen=True)
class TimingConfig:
    """Timing protocol: `warmup` untimed runs, `repeats` timed runs, the `trim` fraction dropped at each end."""
    warmup: int = 5
    repeats: int = 20
    trim: float = 0.25

    def __post_init__(self) -> None:
        for name, lo, hi in (('warmup', 0, MAX_WARMUP), ('repeats', 1, MAX_REPEATS)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f'timing {name} must be an integer in [{lo}, {hi}], got {bounded_repr(v)}')
        if isinstance(self.trim, bool) or not isinstance(self.trim, (int, float)) or not 0 <= self.trim < 0.5:
            raise ValueError(f'timing trim must be in [0, 0.5), got {bounded_repr(self.trim)}')


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forward(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, timing: TimingConfig = TimingConfig()
                 ) -> Tuple[float, float]:
    """(trimmed mean, standard deviation of the kept runs) of ``fn(x)`` in milliseconds."""
    for _ in range(timing.warmup):
        fn(x)
    _sync(x.device)
    samples = []
    for _ in range(timing.repeats):
        t0 = _clock()
        fn(x)
        _sync(x.device)
        samples.append((_clock() - t0) * 1e3)
    return _trimmed_mean(samples, timing.trim)


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo', 'rb') as f:
            for line in f.read(1 << 16).decode('utf-8', 'replace').splitlines():
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown cpu'


def device_info(device: Union[str, torch.device] = 'cpu', threads: Optional[int] = None, dtype: str = 'float32',
                channels_last: bool = False, batch_size: int = 1) -> Dict[str, Any]:
    """What a latency depends on, as recorded in a table: device type and name, torch, threads, dtype, layout."""
    from ..processes import check_device

    device = check_device(device, DEVICE_TYPES)
    if dtype not in DTYPES:
        raise ValueError(f'latency dtype {str(dtype)[:40]!r} not supported; allowed: {list(DTYPES)}')
    for name, value, hi in (('threads', threads if threads is not None else 1, MAX_THREADS),
                            ('batch_size', batch_size, MAX_BATCH_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
            raise ValueError(f'latency {name} must be an integer in [1, {hi}], got {bounded_repr(value)}')
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else _cpu_name()
    return {'type': str(device), 'name': name, 'torch': torch.__version__,
            'threads': threads if threads is not None else torch.get_num_threads(), 'dtype': dtype,
            'memory_format': 'channels_last' if channels_last else 'contiguous', 'batch_size': batch_size}


class _Settings:
    """Applies a table's device settings (threads) for the duration of a with-block."""

    def __init__(self, info: Mapping[str, Any]):
        self.info, self.saved = info, None

    def __enter__(self) -> '_Settings':
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.info['threads'])
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.saved)

    def place(self, module: nn.Module) -> nn.Module:
        module = module.to(device=self.info['type'], dtype=DTYPES[self.info['dtype']]).eval()
        return module.to(memory_format=torch.channels_last) if self._channels_last else module

    def input(self, chans: int, hw: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(self.info['batch_size'], chans, hw, hw, generator=gen)
        x = x.to(device=self.info['type'], dtype=DTYPES[self.info['dtype']])
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last else x

    @property
    def _channels_last(self) -> bool:
        return self.info['memory_format'] == 'channels_last'


def _op_calls(model: AlphaNet, arch: SubnetConfig) -> List[Callable[[torch.Tensor], torch.Tensor]]:
    """The static model's forward cut into one call per op of `subnet_ops`, in order (stem, blocks, head)."""
    calls: List[Callable[[torch.Tensor], torch.Tensor]] = [lambda x: model.bn1(model.conv_stem(x))]
    for stage, depth in zip(model.blocks[:-1], arch.depths):
        calls += list(stage[:depth])
    calls.append(lambda x: model.forward_head(model.blocks[-1](x)))
    return calls


def _trimmed_mean(samples: List[float], trim: float) -> Tuple[float, float]:
    samples = sorted(samples)
    cut = int(len(samples) * trim)
    kept = samples[cut:len(samples) - cut]
    mean = sum(kept) / len(kept)
    return mean, math.sqrt(sum((s - mean) ** 2 for s in kept) / len(kept))


def _quantile(sorted_values: List[float], q: float) -> float:
    """The `q` quantile of sorted values, linearly interpolated (numpy's default)."""
    i = q * (len(sorted_values) - 1)
    lo = int(i)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (i - lo)


def _relative_spread(samples: List[float]) -> Optional[float]:
    """(p90 - p10) / median of `samples`, or None for too few samples (or a zero median)."""
    if len(samples) < MIN_SPREAD_SAMPLES:
        return None
    v = sorted(samples)
    median = _quantile(v, 0.5)
    return (_quantile(v, 0.9) - _quantile(v, 0.1)) / median if median > 0 else None


class _Reference:
    """A fixed conv, timed between models: the same work each time, so a change in its time is the machine
    changing (load starting or stopping, clock throttling). Always float32 and batch 1: it watches the machine,
    not the table's settings."""

    def __init__(self, device: torch.device):
        gen = torch.Generator().manual_seed(0)
        conv = nn.Conv2d(32, 32, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
            conv.bias.zero_()
        self.conv = conv.to(device).eval()
        self.x = torch.randn(1, 32, 56, 56, generator=gen).to(device)

    @torch.inference_mode()
    def time(self) -> float:
        """Its time in ms: the lower quartile of its repeats, which a one-off preemption does not move."""
        for _ in range(REFERENCE_WARMUP):
            self.conv(self.x)
        _sync(self.x.device)
        samples = []
        for _ in range(REFERENCE_REPEATS):
            t0 = _clock()
            self.conv(self.x)
            _sync(self.x.device)
            samples.append((_clock() - t0) * 1e3)
        return _quantile(sorted(samples), 0.25)


@torch.inference_mode()
def _time_in_context(model: AlphaNet, arch: SubnetConfig, x: torch.Tensor, timing: 'TimingConfig'
                     ) -> Tuple[List[List[float]], float]:
    """Per-op durations (ms) of `timing.repeats` forwards of the whole model, and the model's own overhead.

    Timing each op inside a full forward (rather than alone, in a loop) sees the caches as a real forward
    leaves them; alone, an op keeps its weights hot and runs measurably faster. The overhead is the trimmed
    mean of plain `model(x)` calls minus that of the instrumented forwards (the containers' call cost).
    """
    calls = _op_calls(model, arch)
    per_op: List[List[float]] = [[] for _ in calls]
    totals = []
    for rep in range(timing.warmup + timing.repeats):
        durations = _cuda_op_times(calls, x) if x.device.type == 'cuda' else _clock_op_times(calls, x)
        if rep >= timing.warmup:
            for i, d in enumerate(durations):
                per_op[i].append(d)
            totals.append(sum(durations))
    plain = time_forward(model, x, TimingConfig(0, timing.repeats, timing.trim))[0]
    return per_op, plain - _trimmed_mean(totals, timing.trim)[0]


def _clock_op_times(calls: List[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> List[float]:
    """One forward through `calls`, each op's wall time (ms) read from the clock after it."""
    h, stamps = x, [_clock()]
    for call in calls:
        h = call(h)
        _sync(x.device)
        stamps.append(_clock())
    return [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]


def _cuda_op_times(calls: List[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> List[float]:
    """One forward through `calls`, each op's time (ms) between CUDA events recorded in the stream around it.

    No synchronize between ops: the host launches ahead as in a real forward, so the GPU runs the ops pipelined,
    and an op's time is when the GPU finished it minus when it finished the previous one (including any wait for
    its launch). The times add up to the GPU's span of the whole forward; a synchronize after every op would add
    a launch latency per op and overshoot it.
    """
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(calls) + 1)]
        h = x
        events[0].record(stream)
        for call, event in zip(calls, events[1:]):
            h = call(h)
            event.record(stream)
        events[-1].synchronize()
        return [a.elapsed_time(b) for a, b in zip(events, events[1:])]


def _finite(value: Any, what: str, minimum: Optional[float] = None, limit: float = MAX_MS) -> float:
    """`value` as a float; ValueError naming it unless it is a finite number (>= `minimum`) of magnitude at most
    `limit`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (minimum is not None and value < minimum):
        raise ValueError(f'{what} {bounded_repr(value)}')
    if abs(value) > limit:
        raise ValueError(f'{what} {bounded_repr(value)}, beyond the limit of {limit:g} in magnitude')
    return float(value)


def _count(value: Any, what: str, minimum: int, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{what} must be an integer >= {minimum}, got {bounded_repr(value)}')
    if maximum is not None and value > maximum:
        raise ValueError(f'{what} must be an integer in [{minimum}, {maximum}], got {bounded_repr(value)}')
    return value


_NOISE_FIGURES = ('spread_median_pct', 'spread_p90_pct', 'spread_max_pct', 'reference_drift_pct',
                  'reference_range_pct', 'overhead_measured_ms')


def _read_noise(n: Any) -> Dict[str, Any]:
    """A table file's noise record, checked (numbers finite, the signature bounded); unknown keys are dropped."""
    if not isinstance(n, Mapping):
        raise ValueError(f'noise is a {type(n).__name__}, not a mapping')
    out: Dict[str, Any] = {}
    for key in _NOISE_FIGURES:
        if n.get(key) is not None:
            out[key] = _finite(n[key], f'noise {key} is', minimum=None if key in (
                'reference_drift_pct', 'overhead_measured_ms') else 0,
                limit=MAX_MS if key == 'overhead_measured_ms' else _MAX_PCT)
    if n.get('reference_ms') is not None:
        ref = n['reference_ms']
        if not isinstance(ref, list):
            raise ValueError(f'noise reference_ms is a {type(ref).__name__}, not a list')
        out['reference_ms'] = [_finite(v, 'noise reference_ms has', minimum=0) for v in ref]
    for key in ('spread_max_entry', 'reference_op'):
        if n.get(key) is not None:
            out[key] = str(n[key])[:1000]
    return out


def _noise_record(samples: Mapping[str, List[float]], reference_ms: List[float], overhead: float
                  ) -> Dict[str, Any]:
    """The figures `LatencyTable.noise` describes, from each entry's samples and the reference checkpoints."""
    spreads = {sig: r for sig, r in ((sig, _relative_spread(v)) for sig, v in samples.items()) if r is not None}
    noise: Dict[str, Any] = {'spread_median_pct': None, 'spread_p90_pct': None, 'spread_max_pct': None,
                             'spread_max_entry': None}
    if spreads:
        ordered = sorted(spreads.values())
        worst = max(spreads, key=spreads.get)
        noise.update(spread_median_pct=100 * _quantile(ordered, 0.5), spread_p90_pct=100 * _quantile(ordered, 0.9),
                     spread_max_pct=100 * spreads[worst], spread_max_entry=worst)
    noise.update(reference_op=REFERENCE_OP, reference_ms=list(reference_ms), reference_drift_pct=None,
                 reference_range_pct=None, overhead_measured_ms=overhead)
    if len(reference_ms) >= 2 and min(reference_ms) > 0:
        # medians of the first and last few checks and p10-p90 of all: a single passing burst is not drift
        k = min(3, max(1, len(reference_ms) // 2))
        start, end = _quantile(sorted(reference_ms[:k]), 0.5), _quantile(sorted(reference_ms[-k:]), 0.5)
        ordered = sorted(reference_ms)
        low, high = _quantile(ordered, 0.1), _quantile(ordered, 0.9)
        noise['reference_drift_pct'] = 100 * (end - start) / start
        noise['reference_range_pct'] = 100 * (high - low) / low
    return noise


def _noise_problem(noise: Mapping[str, Any]) -> Optional[str]:
    """The warning for a noise record over the limits (`SPREAD_LIMIT_PCT`, `REFERENCE_LIMIT_PCT`), or None."""
    problems = []
    p90 = noise.get('spread_p90_pct')
    worst = max(p90 or 0.0, noise.get('spread_max_pct') or 0.0)  # a file may carry one figure without the other
    if p90 is not None and p90 > SPREAD_LIMIT_PCT:
        problems.append(f'a tenth of the entries spread by {p90:.0f} % or more between repeats, up to {worst:.0f} % '
                        f'((p90-p10)/median; limit {SPREAD_LIMIT_PCT:.0f} %)')
    drift, span = noise.get('reference_drift_pct') or 0.0, noise.get('reference_range_pct')
    if span is not None and max(span, abs(drift)) > REFERENCE_LIMIT_PCT:
        checks = len(noise.get('reference_ms') or ())
        end = (f'{abs(drift):.0f} % {"longer" if drift >= 0 else "less"} at the end than at the start (medians of '
               f'the first and last checks)')
        if abs(drift) > REFERENCE_LIMIT_PCT:
            problems.append(f'the reference op took {end}, its time moving by {span:.0f} % over {checks} checks '
                            f'(p10-p90; limit {REFERENCE_LIMIT_PCT:.0f} %)')
        else:
            problems.append(f'the reference op\'s time moved by {span:.0f} % over {checks} checks during the build '
                            f'(p10-p90; limit {REFERENCE_LIMIT_PCT:.0f} %; {drift:+.0f} % end vs start)')
    if not problems:
        return None
    return 'timings are noisy: ' + '; '.join(problems) + ': rebuild on a quiet machine'


@dataclass
class LatencyTable:
    """Measured latency (ms) of every distinct op of a space on one device; a subnet's latency is their sum.

    Attributes:
        space: the space it was built for; num_classes, in_chans: of the model whose head and stem it timed.
        device: `device_info` of the measuring device. timing: the `TimingConfig` used.
        entries: op signature -> trimmed mean in ms. spread: op signature -> standard deviation in ms.
        noise: how noisy the build was (`_noise_record`; empty for a table made by hand): `spread_*_pct`, the
            median, 90th percentile and maximum over entries of (p90 - p10) / median of an entry's repeats (%),
            `spread_max_entry`; `reference_ms`, the reference op's time at each checkpoint (start, after each
            model), `reference_drift_pct` (the median of the last three checks vs that of the first three) and
            `reference_range_pct` ((p90 - p10) / p10 of the checks);
            `overhead_measured_ms`, the model overhead as measured, before a negative one was clamped to 0.
    """
    space: SearchSpace
    num_classes: int
    in_chans: int
    device: Dict[str, Any]
    timing: TimingConfig
    entries: Dict[str, float]
    spread: Dict[str, float] = field(default_factory=dict)
    source: str = ''  # the file it was read from, for messages
    noise: Dict[str, Any] = field(default_factory=dict)

    def noise_warning(self) -> Optional[str]:
        """Why the table's timings should not be trusted, with the measured figures; None when they look quiet."""
        problem = _noise_problem(self.noise)
        if problem and self.timing.warmup == 0:
            problem += ', with a warm-up (each model\'s first, cold run was timed too)'
        return problem

    def format_noise(self) -> str:
        """The noise record in one line."""
        n = self.noise
        if not n:
            return 'noise: not recorded'
        def pct(key: str, sign: str = '') -> str:
            return '?' if n.get(key) is None else f'{n[key]:{sign}.0f}'
        parts = []
        if n.get('spread_p90_pct') is not None:
            parts.append(f"entries spread (p90-p10)/median {pct('spread_median_pct')} % median, "
                         f"{pct('spread_p90_pct')} % at the 90th percentile, {pct('spread_max_pct')} % worst")
        if n.get('reference_range_pct') is not None:
            parts.append(f"reference op {pct('reference_drift_pct', '+')} % end vs start, range "
                         f"{pct('reference_range_pct')} %")
        return 'noise: ' + ('; '.join(parts) or 'too few repeats to judge')

    def missing(self, space: Optional[SearchSpace] = None, num_classes: Optional[int] = None,
                in_chans: Optional[int] = None) -> List[str]:
        """Signatures of ops of `space` (default: the table's) that the table lacks."""
        ops = distinct_ops(space or self.space, self.num_classes if num_classes is None else num_classes,
                           self.in_chans if in_chans is None else in_chans)
        return [sig for sig in (*ops, OVERHEAD) if sig not in self.entries]

    def check_covers(self, space: SearchSpace, num_classes: int, in_chans: int = 3) -> None:
        """Raise ValueError naming the missing layer signatures if the table cannot price every subnet of `space`."""
        missing = self.missing(space, num_classes, in_chans)
        if missing:
            where = self.source or 'the latency table'
            total = len(distinct_ops(space, num_classes, in_chans))
            raise ValueError(
                f'{where}: lacks {len(missing)} of the {total} layer signatures of this space '
                f'({num_classes} classes), e.g. {missing[0][:300]}; it was built for a space with '
                f'resolutions {list(self.space.resolutions)} and {self.num_classes} classes on '
                f'{self.device.get("name", "?")}: build one for this space (alphanet-latency build)')

    def predict(self, arch: Union[SubnetConfig, Mapping[str, Any]], space: Optional[SearchSpace] = None) -> float:
        """Predicted latency of `arch` in ms: the sum of the entries of its ops and the model overhead entry."""
        total = 0.0
        ops = subnet_ops(arch, space or self.space, self.num_classes, self.in_chans)
        for sig in (*map(op_signature, ops), OVERHEAD):
            if sig not in self.entries:
                raise ValueError(f'{self.source or "latency table"}: no entry for {sig[:300]}')
            total += self.entries[sig]
        return total

    # ---- serialisation
    def to_dict(self) -> Dict[str, Any]:
        return {'format': FORMAT, 'space': self.space.to_dict(), 'num_classes': self.num_classes,
                'in_chans': self.in_chans, 'device': dict(self.device), 'timing': asdict(self.timing),
                'entries': {k: {'ms': v, 'std_ms': self.spread.get(k)} for k, v in sorted(self.entries.items())},
                'noise': dict(self.noise)}

    @classmethod
    def from_dict(cls, d: Any, source: str = '') -> 'LatencyTable':
        where = source or 'latency table'
        if not isinstance(d, Mapping) or d.get('format') != FORMAT:
            got = d.get('format') if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f'{where}: not a latency table (format {str(got)[:60]!r}, expected {FORMAT!r})')
        missing = [k for k in ('space', 'num_classes', 'in_chans', 'device', 'timing', 'entries') if k not in d]
        if missing:
            raise ValueError(f'{where}: latency table is missing {missing}')
        try:
            space = SearchSpace.from_dict(d['space'])
            if not isinstance(d['timing'], Mapping):
                raise ValueError(f"timing is a {type(d['timing']).__name__}, not a mapping")
            timing = TimingConfig(**d['timing'])
            num_classes = _count(d['num_classes'], 'num_classes', 0, MAX_NUM_CLASSES)
            in_chans = _count(d['in_chans'], 'in_chans', 1, MAX_IN_CHANS)
            entries, spread = {}, {}
            for sig, e in d['entries'].items():
                # negative entries would predict negative latencies (the build clamps the overhead at 0)
                entries[str(sig)] = _finite(e['ms'], f'entry {str(sig)[:200]} has ms', minimum=0)
                std = e.get('std_ms')
                spread[str(sig)] = None if std is None else _finite(std, f'entry {str(sig)[:200]} has std_ms',
                                                                    minimum=0)
            device = dict(d['device'])
            for key in ('type', 'name', 'threads', 'dtype', 'memory_format', 'batch_size'):
                if key not in device:
                    raise ValueError(f'device record is missing {key!r}')
            # the settings validate runs with: bounded, as the build's own arguments are (`device_info`)
            device['threads'] = _count(device['threads'], 'device threads', 1, MAX_THREADS)
            device['batch_size'] = _count(device['batch_size'], 'device batch_size', 1, MAX_BATCH_SIZE)
            if device['dtype'] not in DTYPES:
                raise ValueError(f"device dtype {bounded_repr(device['dtype'])} is not one of {list(DTYPES)}")
            if device['memory_format'] not in ('contiguous', 'channels_last'):
                raise ValueError(f"device memory_format {bounded_repr(device['memory_format'])} is not "
                                 "'contiguous' or 'channels_last'")
            device['type'] = str(device['type'])[:40]
            device['name'] = str(device['name'])[:200]
            noise = _read_noise(d.get('noise') or {})  # absent in tables written before it was recorded
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise ValueError(f'{where}: malformed latency table: {str(e)[:300]}') from None
        return cls(space, num_classes, in_chans, device, timing, entries, spread, source, noise)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write JSON atomically (temp file, then rename)."""
        write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> 'LatencyTable':
        """Read a table written by `save` (size-bounded; malformed files raise ValueError naming the file)."""
        return cls.from_dict(read_json_file(path, MAX_TABLE_BYTES, what='latency table'), source=os.fspath(path))

    def check_device(self) -> None:
        """Raise ValueError if this machine is not the device the table was measured on."""
        here = device_info(self.device['type'], self.device['threads'], self.device['dtype'],
                           self.device['memory_format'] == 'channels_last', self.device['batch_size'])
        if here['name'] != self.device['name']:
            raise ValueError(f'{self.source or "latency table"} was measured on {self.device["type"]} '
                             f'{str(self.device["name"])[:100]!r}; this machine\'s {here["type"]} is '
                             f'{here["name"][:100]!r}: build a table here to validate it')


def build_latency_table(
        space: SpaceSpec = None,
        device: Union[str, torch.device] = 'cpu',
        batch_size: int = 1,
        threads: Optional[int] = None,
        channels_last: bool = False,
        dtype: str = 'float32',
        num_classes: int = 1000,
        in_chans: int = 3,
        timing: TimingConfig = TimingConfig(),
        progress: bool = True,
        on_noise: str = 'warn',
) -> LatencyTable:
    """Time every distinct op of `space` (default AlphaNet's) on `device` and return the table.

    Args:
        space: a SearchSpace, its dict or an original YAML path.
        device: 'cpu' or 'cuda' (or 'cuda:N').
        batch_size: images per forward.
        threads: intra-op CPU threads (default: torch's current setting); recorded.
        channels_last: time in channels-last memory format.
        dtype: 'float32', 'float16' or 'bfloat16'.
        num_classes, in_chans: of the models whose latency the table predicts (the stem and head depend on them).
        timing: warm-up, repeats and trimming.
        progress: show a progress bar.
        on_noise: when the machine was too noisy (`LatencyTable.noise_warning`): 'warn' (a
            `NoisyLatencyWarning`), 'raise' (ValueError) or 'ignore' (the caller reads `noise_warning`).

    Raises:
        ValueError: bad settings, or with on_noise='raise', timings too noisy (the message has the figures).
    """
    if on_noise not in ('warn', 'raise', 'ignore'):
        raise ValueError(f"on_noise must be 'warn', 'raise' or 'ignore', got {on_noise!r:.40}")
    space = resolve_space(space)
    info = device_info(device, threads, dtype, channels_last, batch_size)
    samples: Dict[str, List[float]] = {}
    overheads, reference_ms = [], []
    with _Settings(info) as settings:
        reference = _Reference(torch.device(info['type']))
        reference_ms.append(reference.time())
        for arch in tqdm(list(_covering_archs(space)), desc='timing layers', disable=not progress, leave=False):
            model = settings.place(AlphaNet(arch, space, num_classes=num_classes, in_chans=in_chans))
            per_op, overhead = _time_in_context(model, arch, settings.input(in_chans, arch.resolution), timing)
            for op, durations in zip(subnet_ops(arch, space, num_classes, in_chans), per_op):
                samples.setdefault(op_signature(op), []).extend(durations)
            overheads.append(overhead)
            reference_ms.append(reference.time())  # after every model: load that comes and goes shows as a range
    stats = {sig: _trimmed_mean(v, timing.trim) for sig, v in samples.items()}
    entries = {sig: m for sig, (m, _) in stats.items()}
    spread = {sig: sd for sig, (_, sd) in stats.items()}
    # the median over archs (one difference of two noisy means per arch, so outliers are expected). It can come out
    # negative: on CPU the instrumented forward's clock reads cost about what the containers' calls do, so noise
    # decides the sign; a negative overhead made tiny subnets' predictions negative, so it is clamped at 0 (and
    # the measured value kept in the noise record)
    measured_overhead = sorted(overheads)[len(overheads) // 2]
    entries[OVERHEAD] = max(0.0, measured_overhead)
    table = LatencyTable(space, num_classes, in_chans, info, timing, entries, spread,
                         noise=_noise_record(samples, reference_ms, measured_overhead))
    problem = table.noise_warning()
    if problem and on_noise == 'raise':
        raise ValueError(problem)
    if problem and on_noise == 'warn':
        warnings.warn(problem, NoisyLatencyWarning, stacklevel=2)
    return table


def measure_subnet(table: LatencyTable, arch: Union[SubnetConfig, Mapping[str, Any]],
                   timing: Optional[TimingConfig] = None) -> float:
    """End-to-end latency (ms) of the static model of `arch`, measured as the table's ops were."""
    arch = table.space.validate(arch)
    with _Settings(table.device) as settings:
        model = settings.place(AlphaNet(arch, table.space, num_classes=table.num_classes, in_chans=table.in_chans))
        return time_forward(model, settings.input(table.in_chans, arch.resolution), timing or table.timing)[0]


@dataclass
class LatencyValidation:
    """Predicted vs measured latency of sampled subnets.

    `reference_change_pct`: how much longer (%) the reference op took while validating than when the table was
    built (None for a table without that record): a busier or different machine now than then.
    `table_noise`: the table's own `noise_warning`, if any.
    """
    archs: List[SubnetConfig]
    predicted: List[float]
    measured: List[float]
    reference_change_pct: Optional[float] = None
    table_noise: Optional[str] = None

    @property
    def mape(self) -> float:
        """Mean absolute percentage error of the predictions, in %."""
        return 100.0 * sum(abs(p - m) / m for p, m in zip(self.predicted, self.measured)) / len(self.measured)

    @property
    def kendall_tau(self) -> float:
        """Rank agreement of predicted and measured latency (scipy's tau-b)."""
        stats = import_optional('scipy.stats', "a latency table's rank agreement (Kendall tau)")
        return float(stats.kendalltau(self.predicted, self.measured).statistic)

    def warning(self) -> Optional[str]:
        """What is wrong and what to do when the MAPE is over `MAPE_LIMIT_PCT`; None when it is within."""
        mape = self.mape
        if mape <= MAPE_LIMIT_PCT:
            return None
        text = f'the predictions are {mape:.1f} % off (MAPE; limit {MAPE_LIMIT_PCT:.0f} %)'
        change = self.reference_change_pct
        if change is not None and abs(change) > REFERENCE_LIMIT_PCT:
            text += (f': the reference op took {abs(change):.0f} % {"longer" if change > 0 else "less"} now than '
                     f'when the table was built, so this machine is {"busier" if change > 0 else "quieter"} now '
                     f'than then (or not the same): validate, or rebuild, when it is quiet')
        elif self.table_noise:
            text += f'; its build recorded that {self.table_noise}'
        else:
            text += (': rebuild the table on a quiet machine with the settings you deploy with (threads, batch, '
                     'dtype, layout) and validate it quietly; if it stays off, this device does not add layers up '
                     '(time whole subnets instead)')
        return text

    def format(self) -> str:
        lines = ['| # | resolution | depths | predicted ms | measured ms | error % |', '|---|---|---|---|---|---|']
        for i, (a, p, m) in enumerate(zip(self.archs, self.predicted, self.measured)):
            lines.append(f'| {i} | {a.resolution} | {"-".join(map(str, a.depths))} | {p:.3f} | {m:.3f} | '
                         f'{100 * (p - m) / m:+.1f} |')
        lines.append(f'\nMAPE {self.mape:.2f} %, Kendall tau {self.kendall_tau:.3f} over {len(self.archs)} subnets')
        return '\n'.join(lines)


def validate_latency_table(table: LatencyTable, samples: int = 30, seed: int = 0,
                           timing: Optional[TimingConfig] = None, progress: bool = True) -> LatencyValidation:
    """Measure `samples` random subnets (seeded) end to end and compare with the table's predictions.

    The reference op is timed before and after the measurements; their mean against the table's first
    reference time is `LatencyValidation.reference_change_pct`.

    Raises:
        ValueError: the table was measured on another device, or `samples` < 2.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f'samples must be an integer >= 2, got {samples!r:.40}')
    table.check_device()
    rng = random.Random(seed)
    archs = [table.space.sample(rng) for _ in range(samples)]
    predicted = [table.predict(a) for a in archs]
    with _Settings(table.device):
        reference = _Reference(torch.device(table.device['type']))
        before = reference.time()
    measured = [measure_subnet(table, a, timing) for a in tqdm(archs, desc='measuring subnets',
                                                                 disable=not progress, leave=False)]
    with _Settings(table.device):
        now = (before + reference.time()) / 2
    built = (table.noise.get('reference_ms') or [None])[0]
    change = 100 * (now - built) / built if built else None
    return LatencyValidation(archs, predicted, measured, change, table.noise_warning())
