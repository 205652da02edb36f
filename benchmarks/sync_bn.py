"""Cost of --sync-bn: a DDP sandwich step on 2 gloo processes, without sync BN, with this tree's sync BN (one all-reduce
per BN layer each way, default group) and with the former one (two each way, on a second group; kept below for the
comparison only), side by side.

Each process trains its own copy of the same supernet per variant (DDP with find_unused_parameters, as the trainer),
on synthetic batches of `--batch-size` per process, the same subnets for every variant; the variants are timed
interleaved round by round in both processes alike (their collectives must meet), medians reported as images/s per
process. All-reduce calls per step (Python's ``dist.all_reduce``: the sync BN ones; DDP's own run in C++) are counted
in one untimed step per variant.

    python benchmarks/sync_bn.py                               # demo space, 32 px, batch 32 per process
    python benchmarks/sync_bn.py --channels-last               # the demo run's layout
    python benchmarks/sync_bn.py --batch-size 64 --steps 2 --repeats 5
"""
import argparse
import copy
import os
import socket
import statistics
import warnings
from typing import Callable, Dict

import torch
import torch.distributed as dist

from _results import add_json_argument, write_json
from _steps import sandwich_step, variant_list
from _timing import time_interleaved

VARIANTS = ('no_sync', 'sync', 'sync_old')


def _old_class():
    """The former SyncDynamicBatchNormAct2d: two autograd all-reduces per forward (mean, then centred squares), so
    two more in backward, on a group of its own."""
    from timm_alphanet.layers.dynamic import DynamicBatchNormAct2d

    class OldSyncDynamicBatchNormAct2d(DynamicBatchNormAct2d):
        process_group = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not (self.enabled and self.training and dist.is_initialized() and dist.get_world_size() > 1):
                return super().forward(x)
            c = x.shape[1]
            xf = x.to(torch.promote_types(x.dtype, torch.float32))
            count = torch.full((1,), xf.numel() // c, dtype=xf.dtype, device=xf.device)
            stats = self._all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
            n = stats[-1]
            mean = stats[:c] / n
            centred = xf - mean.view(1, c, 1, 1)
            var = self._all_reduce((centred * centred).sum((0, 2, 3))) / n
            if self.track_running_stats and self.running_mean is not None:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                    self.running_mean[:c].mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                    unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                    self.running_var[:c].mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
            y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
            if self.weight is not None:
                y = y * self.weight[:c].view(1, c, 1, 1) + self.bias[:c].view(1, c, 1, 1)
            return self.act(self.drop(y.to(x.dtype)))

        def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
            from torch.distributed.nn.functional import all_reduce
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', FutureWarning)
                return all_reduce(t, group=self.process_group)
    return OldSyncDynamicBatchNormAct2d


def _variant_model(base: torch.nn.Module, variant: str) -> torch.nn.Module:
    from timm_alphanet.layers.dynamic import DynamicBatchNormAct2d
    from timm_alphanet.layers.sync_bn import convert_sync_dynamic_bn
    model = copy.deepcopy(base)
    if variant == 'sync':
        convert_sync_dynamic_bn(model)
    elif variant == 'sync_old':
        old, group = _old_class(), dist.new_group()
        for m in model.modules():
            if type(m) is DynamicBatchNormAct2d:
                m.__class__ = old
                m.process_group = group
    return model


def _count_all_reduces(fn: Callable[[], None]) -> int:
    real, calls = dist.all_reduce, [0]

    def counted(*a, **k):
        calls[0] += 1
        return real(*a, **k)
    dist.all_reduce = counted
    try:
        fn()
    finally:
        dist.all_reduce = real
    return calls[0]


def worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    import timm
    from torch.nn.parallel import DistributedDataParallel

    from timm_alphanet import ALPHANET_SPACE, SearchSpace
    from timm_alphanet.archs import DEMO_SPACE
    from timm_alphanet.task import SandwichTask
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    space = SearchSpace.from_dict(DEMO_SPACE) if args.space == 'demo' else ALPHANET_SPACE
    res, b = max(space.resolutions), args.batch_size
    gen = torch.Generator().manual_seed(rank)  # each process its own share of the batch
    x, y = torch.randn(b, 3, res, res, generator=gen), torch.randint(0, 10, (b,), generator=gen)
    torch.manual_seed(0)
    base = timm.create_model('alphanet_supernet', space=space, num_classes=10).train()
    if args.channels_last:
        base, x = base.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fns: Dict[str, Callable[[], None]] = {}
    for variant in args.variants:
        ddp = DistributedDataParallel(_variant_model(base, variant), find_unused_parameters=True)
        task = SandwichTask(ddp, num_subnets=args.num_subnets, seed=0, verbose=False).train()
        fns[variant] = sandwich_step(task, task.trainable_module.parameters(), x, y, args.steps)
    counts = {v: _count_all_reduces(fn) for v, fn in fns.items()}  # also a warm-up step
    times = time_interleaved(fns, args.repeats, warmup=args.warmup, number=args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, med)
    dist.destroy_process_group()
    if rank != 0:
        return
    ips = {v: [b / g[v] for g in gathered] for v in args.variants}  # images/s of each process
    mean_ips = {v: statistics.mean(r) for v, r in ips.items()}
    print(f'torch {torch.__version__}, {world} gloo processes x {args.threads} thread(s), {args.space} space, '
          f'{res} px, batch {b} per process, {args.num_subnets} subnets per step'
          f'{", channels-last" if args.channels_last else ""}')
    print(f'{"":<10}{"img/s per process":>20}{"median s/step":>15}{"all_reduce/step":>17}')
    for v in args.variants:
        print(f'{v:<10}{mean_ips[v]:>20.2f}{statistics.mean(g[v] for g in gathered):>15.4f}{counts[v]:>17}')
    ratios = {}
    if 'no_sync' in mean_ips:
        ratios.update({f'{v} / no_sync (img/s per process)': mean_ips[v] / mean_ips['no_sync']
                       for v in args.variants if v != 'no_sync'})
    if {'sync', 'sync_old'} <= set(mean_ips):
        ratios['sync / sync_old (img/s per process)'] = mean_ips['sync'] / mean_ips['sync_old']
    for k, v in ratios.items():
        print(f'{k}: {v:.3f}x')
    write_json(args.json, 'sync_bn', ratios, {'images_per_s': ips, 'median_s_per_step': gathered,
                                              'all_reduce_per_step': counts},
               {'*': 'higher is faster; sync / no_sync is what --sync-bn costs'})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--space', default='demo', choices=('demo', 'paper'))
    p.add_argument('--batch-size', type=int, default=32, help='per process')
    p.add_argument('--steps', type=int, default=2, help='timed steps per round (cycling through the same subnets)')
    p.add_argument('--repeats', type=int, default=5, help='rounds; medians are reported')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--num-subnets', type=int, default=4)
    p.add_argument('--threads', type=int, default=1, help='torch threads per process')
    p.add_argument('--channels-last', action='store_true', help='model and batches in channels-last layout')
    p.add_argument('--variants', type=variant_list(VARIANTS), default=list(VARIANTS),
                   help=f'comma-separated, from {",".join(VARIANTS)}')
    add_json_argument(p)
    args = p.parse_args()
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(worker, args=(2, port, args), nprocs=2)


if __name__ == '__main__':
    main()
