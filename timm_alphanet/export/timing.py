"""Small timing helpers for model cards: which device, batch-1 latency, images per second.

These numbers are reported (in cards), never asserted. `torch.utils.benchmark.Timer` was considered; it cannot time
an onnxruntime session and a torch model the same way, so one loop times both.
"""
import platform
import time
from typing import Any, Callable, Dict, Union

import torch

__all__ = ['describe_device', 'images_per_second', 'latency']


def describe_device(device: Union[str, torch.device]) -> str:
    """A human description of `device`: the GPU's name, or the CPU's architecture and torch's thread count."""
    device = torch.device(device)
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)} (CUDA)'
    cpu = platform.processor() or platform.machine() or 'unknown CPU'
    return f'CPU {cpu}, {torch.get_num_threads()} threads'


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], device: torch.device, min_time_s: float, min_calls: int = 3) -> float:
    """Median seconds per call of `fn` after one warm-up call, over at least `min_calls` calls and `min_time_s`."""
    fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def images_per_second(fn: Callable[[], Any], batch_size: int, device: Union[str, torch.device] = 'cpu',
                      min_time_s: float = 0.5) -> float:
    """Images per second of `fn` (one call = one batch of `batch_size`), from the median call time."""
    return batch_size / _time_calls(fn, torch.device(device), min_time_s)


@torch.no_grad()
def latency(model: torch.nn.Module, resolution: int, in_chans: int = 3, device: Union[str, torch.device] = 'cpu',
            min_time_s: float = 0.5) -> Dict[str, Any]:
    """Batch-1 latency of `model` (eval mode, eager) on `device`: {'ms', 'batch_size', 'device', 'source'}."""
    device = torch.device(device)
    x = torch.zeros(1, in_chans, resolution, resolution, device=device)
    seconds = _time_calls(lambda: model(x), device, min_time_s)
    return {'ms': seconds * 1e3, 'batch_size': 1, 'device': describe_device(device), 'source': 'measured at export'}
