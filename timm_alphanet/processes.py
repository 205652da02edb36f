"""One process group per launch: the device check and the launcher check that training and search share.

`accelerate launch --multi_gpu` / ``torchrun`` on a machine without an accelerator device start N processes that,
unless Accelerate is told ``cpu=True``, each run alone (N copies of the same work). `has_accelerator_device` decides
``cpu=``; `check_world_size` refuses a launcher whose ``WORLD_SIZE`` differs from the processes Accelerate joined.
"""
import os

import torch

__all__ = ['has_accelerator_device', 'check_world_size']


def has_accelerator_device() -> bool:
    """Whether torch sees a CUDA, XPU or MPS device (otherwise Accelerate must be created with ``cpu=True``)."""
    xpu = getattr(torch, 'xpu', None)
    mps = getattr(torch.backends, 'mps', None)
    return (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
            or (mps is not None and mps.is_available()))


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
