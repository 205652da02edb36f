"""The benchmarks' one timing helper: warm-up, then repeats of every variant interleaved round by round (so load from
other processes hits all variants alike), device sync around each timed call on GPUs, medians reported.

`torch.utils.benchmark.Timer` was considered: it times one statement at a time, so variants measured one after the
other see different machine load; comparing side by side needs them interleaved. The library's own
`timm_alphanet.export.timing` serves model cards (batch-1 latency), not side-by-side comparisons.
"""
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

import torch

__all__ = ['median_seconds', 'sync', 'time_interleaved', 'timed']

T = TypeVar('T')
Device = Optional[Union[str, torch.device]]


def sync(device: Device = None) -> None:
    """Wait for queued GPU work on `device` (every CUDA device when None and CUDA is up); a no-op on CPU."""
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: Device = None) -> Tuple[T, float]:
    """`fn()` and the seconds it took, with the device synced before and after (one measurement, no repeats)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def time_interleaved(
        fns: Dict[str, Callable[..., Any]],
        repeats: int,
        warmup: int = 1,
        device: Device = None,
        number: int = 1,
        setup: Optional[Callable[[str], Any]] = None,
) -> Dict[str, List[float]]:
    """Seconds per call of each variant, for each of `repeats` rounds (after `warmup` untimed rounds).

    Every round times each variant once, in an order rotated by one each round, so no variant always runs first.
    A sample is the mean of `number` calls, each timed on its own (with a device sync after it, and ``setup`` outside
    the timing), so per-call launch and sync costs are included. With `setup`, ``setup(name)`` runs before each call
    and ``fn(setup_result)`` is timed (e.g. a fresh leaf tensor for a backward).
    """
    if repeats < 1 or warmup < 0 or number < 1:
        raise ValueError(f'need repeats >= 1, warmup >= 0, number >= 1; got {repeats}, {warmup}, {number}')
    names = list(fns)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            total = 0.0
            for _ in range(number):
                arg = (setup(name),) if setup is not None else ()
                total += timed(lambda: fns[name](*arg), device)[1]
            if r >= warmup:
                times[name].append(total / number)
    return times


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: Device = None,
                   number: int = 1) -> float:
    """Median seconds per call of one function (`time_interleaved` with a single variant)."""
    return statistics.median(time_interleaved({'fn': fn}, repeats, warmup, device, number)['fn'])
