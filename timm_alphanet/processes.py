"""One process group per launch: the device checks and the launcher check that training, search and export share.

`accelerate launch --multi_gpu` / ``torchrun`` on a machine without an accelerator device start N processes that,
unless Accelerate is told ``cpu=True``, each run alone (N copies of the same work). `has_accelerator_device` decides
``cpu=``; `check_world_size` refuses a launcher whose ``WORLD_SIZE`` differs from the processes Accelerate joined.
`check_device` refuses a ``--device`` this machine lacks before any slow work, rather than failing in torch after it.
"""
import os
from typing import Sequence, Union

import torch

__all__ = ['DEVICE_TYPES', 'has_accelerator_device', 'check_device', 'check_world_size']

DEVICE_TYPES = ('cpu', 'cuda', 'mps', 'xpu')


def has_accelerator_device() -> bool:
    """Whether torch sees a CUDA, XPU or MPS device (otherwise Accelerate must be created with ``cpu=True``)."""
    xpu = getattr(torch, 'xpu', None)
    mps = getattr(torch.backends, 'mps', None)
    return (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
            or (mps is not None and mps.is_available()))


def _count(kind: str) -> int:
    """How many devices of `kind` torch sees here (0: none)."""
    if kind == 'cpu':
        return 1
    if kind == 'mps':
        mps = getattr(torch.backends, 'mps', None)
        return int(mps is not None and mps.is_available())
    module = getattr(torch, kind, None)
    return module.device_count() if module is not None and module.is_available() else 0


def check_device(device: Union[str, torch.device], allowed: Sequence[str] = DEVICE_TYPES) -> torch.device:
    """`device` as a torch.device, checked to be a known kind in `allowed` that this machine has.

    Args:
        device: e.g. 'cpu', 'cuda', 'cuda:1' (a torch.device passes too).
        allowed: the device types the caller supports.

    Raises:
        TypeError: `device` is not a str or torch.device.
        ValueError: an unknown form (e.g. 'gpu'), a type not in `allowed`, or a device this machine lacks; the
            message names the value, the allowed forms and the devices present.
    """
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f'a device must be a string such as \'cpu\' or \'cuda:0\', got {type(device).__name__}')
    forms = ', '.join(f"'{t}'" if t in ('cpu', 'mps') else f"'{t}' or '{t}:N'" for t in allowed)
    present = ', '.join(f'{t} x{_count(t)}' if t != 'cpu' else 'cpu' for t in allowed if _count(t))
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in allowed:
        raise ValueError(f'device {str(device)[:40]!r} is not one of the allowed forms: {forms}')
    count = _count(parsed.type)
    if count == 0 or (parsed.index is not None and parsed.index >= count):
        raise ValueError(f'device {str(device)[:40]!r}: this machine has no such device (it has {present}); '
                         f'allowed forms: {forms}')
    return parsed


def check_world_size(num_processes: int, work: str = 'train') -> None:
    """Raise ValueError if the launcher's WORLD_SIZE differs from Accelerate's process count.

    Args:
        num_processes: the processes Accelerate joined (``Accelerator.num_processes`` / ``PartialState``).
        work: what each process would do alone, for the message ('train', 'search').
    """
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world != num_processes:
        raise ValueError(f'the launcher started {world} processes (WORLD_SIZE) but the Accelerator has '
                         f'{num_processes}: each process would {work} alone. On CPU, launch with '
                         '`torchrun --nproc_per_node N ...` or `accelerate launch --multi_gpu --num_processes N ...`.')
