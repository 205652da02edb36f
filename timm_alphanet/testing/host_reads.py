"""Counting host reads: every call that copies a tensor's value into Python makes the host wait for the device (a
CUDA sync), so a training step's count tells whether the GPU can run ahead of Python."""
import contextlib
from typing import Iterator, List

import torch

__all__ = ['HOST_READS', 'count_host_reads']

HOST_READS = ('item', 'tolist', '__float__', '__int__', '__bool__', '__index__')


@contextlib.contextmanager
def count_host_reads() -> Iterator[List[str]]:
    """Within the block, record the name of every `HOST_READS` call on any tensor (the yielded list grows)."""
    counts: List[str] = []
    saved = {n: getattr(torch.Tensor, n) for n in HOST_READS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            counts.append(name)
            return fn(self, *args, **kwargs)
        return counted
    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
