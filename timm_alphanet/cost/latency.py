"""On-device latency tables: time every distinct layer of a search space once, predict a subnet by summing.

The layers are the ops of `subnet_ops` (the walk the FLOPs counter uses): the stem, each MBConv block and the
head, each keyed by its frozen signature (shapes, kernel, stride, expand ratio, SE, activation, input size). A
table records how it was measured (device name, torch version, threads, dtype, memory format, batch size, timing
protocol), refuses spaces whose layers it lacks, and `validate_latency_table` compares its predictions with
end-to-end measurements of random subnets (MAPE and Kendall tau).

once-for-all ships such tables (YAML per resolution) but not the code that builds them; HAT's builder times whole
subnets. Neither is a library we can call, so the timing protocol here is written out: warm-up runs, then
`repeats` timed runs, the slowest and fastest `trim` fraction dropped, the mean of the rest.
"""
import itertools
import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..archs import SpaceSpec, resolve_space
from ..models.alphanet import AlphaNet
from ..spaces import SearchSpace, SubnetConfig
from ..utils import read_json_file, write_atomic
from .ops import Op, subnet_ops

__all__ = ['LatencyTable', 'TimingConfig', 'LatencyValidation', 'op_signature', 'distinct_ops', 'device_info',
           'time_forward', 'build_latency_table', 'measure_subnet', 'validate_latency_table', 'FORMAT']

FORMAT = 'timm_alphanet.latency/1'
MAX_TABLE_BYTES = 8 << 20  # the full AlphaNet space's table is ~0.2 MB
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
DEVICE_TYPES = ('cpu', 'cuda')
OVERHEAD = 'Overhead(model)'  # the entry for what a model's forward costs beyond its ops (container calls)


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
        for name, lo in (('warmup', 0), ('repeats', 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f'timing {name} must be an integer >= {lo}, got {v!r:.40}')
        if not isinstance(self.trim, (int, float)) or not 0 <= self.trim < 0.5:
            raise ValueError(f'timing trim must be in [0, 0.5), got {self.trim!r:.40}')


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
        t0 = time.perf_counter()
        fn(x)
        _sync(x.device)
        samples.append((time.perf_counter() - t0) * 1e3)
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
    for name, value in (('threads', threads if threads is not None else 1), ('batch_size', batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'latency {name} must be a positive integer, got {value!r:.40}')
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
        h, stamps = x, [time.perf_counter()]
        for call in calls:
            h = call(h)
            _sync(x.device)
            stamps.append(time.perf_counter())
        if rep >= timing.warmup:
            for i, (a, b) in enumerate(zip(stamps, stamps[1:])):
                per_op[i].append((b - a) * 1e3)
            totals.append((stamps[-1] - stamps[0]) * 1e3)
    plain = time_forward(model, x, TimingConfig(0, timing.repeats, timing.trim))[0]
    return per_op, plain - _trimmed_mean(totals, timing.trim)[0]


@dataclass
class LatencyTable:
    """Measured latency (ms) of every distinct op of a space on one device; a subnet's latency is their sum.

    Attributes:
        space: the space it was built for; num_classes, in_chans: of the model whose head and stem it timed.
        device: `device_info` of the measuring device. timing: the `TimingConfig` used.
        entries: op signature -> trimmed mean in ms. spread: op signature -> standard deviation in ms.
    """
    space: SearchSpace
    num_classes: int
    in_chans: int
    device: Dict[str, Any]
    timing: TimingConfig
    entries: Dict[str, float]
    spread: Dict[str, float] = field(default_factory=dict)
    source: str = ''  # the file it was read from, for messages

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
                'entries': {k: {'ms': v, 'std_ms': self.spread.get(k)} for k, v in sorted(self.entries.items())}}

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
            timing = TimingConfig(**d['timing'])
            entries, spread = {}, {}
            for sig, e in d['entries'].items():
                ms = e['ms']
                if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) \
                        or (ms < 0 and sig != OVERHEAD):
                    raise ValueError(f'entry {str(sig)[:200]} has ms {ms!r:.40}')
                entries[str(sig)], spread[str(sig)] = float(ms), e.get('std_ms')
            device = dict(d['device'])
            for key in ('type', 'name', 'threads', 'dtype', 'memory_format', 'batch_size'):
                if key not in device:
                    raise ValueError(f'device record is missing {key!r}')
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise ValueError(f'{where}: malformed latency table: {str(e)[:300]}') from None
        return cls(space, int(d['num_classes']), int(d['in_chans']), device, timing, entries, spread, source)

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
    """
    space = resolve_space(space)
    info = device_info(device, threads, dtype, channels_last, batch_size)
    samples: Dict[str, List[float]] = {}
    overheads = []
    with _Settings(info) as settings:
        for arch in tqdm(list(_covering_archs(space)), desc='timing layers', disable=not progress, leave=False):
            model = settings.place(AlphaNet(arch, space, num_classes=num_classes, in_chans=in_chans))
            per_op, overhead = _time_in_context(model, arch, settings.input(in_chans, arch.resolution), timing)
            for op, durations in zip(subnet_ops(arch, space, num_classes, in_chans), per_op):
                samples.setdefault(op_signature(op), []).extend(durations)
            overheads.append(overhead)
    stats = {sig: _trimmed_mean(v, timing.trim) for sig, v in samples.items()}
    entries = {sig: m for sig, (m, _) in stats.items()}
    spread = {sig: sd for sig, (_, sd) in stats.items()}
    # the median over archs (one difference of two noisy means per arch, so outliers are expected); negative
    # where the device overlaps consecutive ops that the per-op timing had to separate (a GPU's async launches)
    entries[OVERHEAD] = sorted(overheads)[len(overheads) // 2]
    return LatencyTable(space, num_classes, in_chans, info, timing, entries, spread)


def measure_subnet(table: LatencyTable, arch: Union[SubnetConfig, Mapping[str, Any]],
                   timing: Optional[TimingConfig] = None) -> float:
    """End-to-end latency (ms) of the static model of `arch`, measured as the table's ops were."""
    arch = table.space.validate(arch)
    with _Settings(table.device) as settings:
        model = settings.place(AlphaNet(arch, table.space, num_classes=table.num_classes, in_chans=table.in_chans))
        return time_forward(model, settings.input(table.in_chans, arch.resolution), timing or table.timing)[0]


@dataclass
class LatencyValidation:
    """Predicted vs measured latency of sampled subnets."""
    archs: List[SubnetConfig]
    predicted: List[float]
    measured: List[float]

    @property
    def mape(self) -> float:
        """Mean absolute percentage error of the predictions, in %."""
        return 100.0 * sum(abs(p - m) / m for p, m in zip(self.predicted, self.measured)) / len(self.measured)

    @property
    def kendall_tau(self) -> float:
        """Rank agreement of predicted and measured latency (scipy's tau-b)."""
        from scipy.stats import kendalltau
        return float(kendalltau(self.predicted, self.measured).statistic)

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

    Raises:
        ValueError: the table was measured on another device, or `samples` < 2.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f'samples must be an integer >= 2, got {samples!r:.40}')
    table.check_device()
    rng = random.Random(seed)
    archs = [table.space.sample(rng) for _ in range(samples)]
    predicted = [table.predict(a) for a in archs]
    measured = [measure_subnet(table, a, timing) for a in tqdm(archs, desc='measuring subnets',
                                                                 disable=not progress, leave=False)]
    return LatencyValidation(archs, predicted, measured)

