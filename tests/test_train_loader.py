"""The training loader keeps its worker processes across epochs and BN calibration, and the workers still see each
epoch's augmentation seed."""
import os
from types import SimpleNamespace

import torch
from torch.utils.data import Dataset

from timm_alphanet.train.data import create_loaders


class _Draws(Dataset):
    """Item i: one draw of torch's global CPU generator (what a random transform uses) and the process that drew it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return torch.rand(()), torch.tensor(os.getpid())


def _epoch(loader, epoch: int):
    loader.dataset.set_epoch(epoch)
    draws, pids = [], set()
    for x, pid in loader:
        draws.append(x)
        pids.update(pid.tolist())
    return torch.cat(draws), pids


def _loaders(workers: int):
    cfg = SimpleNamespace(workers=workers, batch_size=4, validation_batch_size=None, seed=5)
    torch.manual_seed(0)  # the shuffle order: the same in both loaders
    return create_loaders(cfg, _Draws(), _Draws())[0]


def test_workers_persist_and_see_every_epochs_seed():
    in_process, workers = _loaders(0), _loaders(1)
    ref = {e: _epoch(in_process, e)[0] for e in (0, 1)}
    got0, pids0 = _epoch(workers, 0)
    got1, pids1 = _epoch(workers, 1)
    again0, pids2 = _epoch(workers, 0)  # calibration re-iterates the loader at some epoch: no new workers either
    assert pids0 == pids1 == pids2 and os.getpid() not in pids0  # one worker process, kept
    # sorted: each draw depends on (seed, epoch, index) only, whatever order the sampler visits the indices in
    assert torch.equal(got0.sort().values, ref[0].sort().values)
    assert torch.equal(got1.sort().values, ref[1].sort().values)
    assert torch.equal(again0.sort().values, ref[0].sort().values)
    assert not torch.equal(ref[0].sort().values, ref[1].sort().values)
