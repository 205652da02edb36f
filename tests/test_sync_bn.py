"""SyncDynamicBatchNormAct2d on gloo processes: one all-reduce per BN layer and forward (and one in backward) on the
default group; N processes x batch b == one process x batch N*b (outputs, gradients, running statistics), exactly in
float64 and, for a channel with a large mean and a tiny spread, far closer than float32 BN; unchanged without a group."""
import os
import socket
from typing import Callable, Dict

import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.layers import BatchNormAct2d

from timm_alphanet.layers.dynamic import DynamicBatchNormAct2d
from timm_alphanet.layers.sync_bn import SyncDynamicBatchNormAct2d, convert_sync_dynamic_bn


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)


def _spawn(fn: Callable, world: int, *args) -> None:
    mp.spawn(fn, args=(world, _port(), *args), nprocs=world)


def _bn(num_features: int, dtype: torch.dtype, momentum) -> DynamicBatchNormAct2d:
    torch.manual_seed(0)
    bn = DynamicBatchNormAct2d.convert(BatchNormAct2d(num_features, momentum=momentum, act_layer=torch.nn.SiLU))
    with torch.no_grad():  # affine parameters off their (1, 0) start, so the gradient checks see them
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.to(dtype).train()


# ---- layer level: N processes x batch b == 1 process x batch N*b
BATCHES = [  # (global batch in float64, rows of rank 0): uneven shares, a sliced width, then channels-last
    (lambda g: torch.randn(5, 6, 4, 3, generator=g, dtype=torch.float64) * 2 + torch.arange(6.).view(1, 6, 1, 1), 3),
    (lambda g: torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64) * 0.5 - 3, 1),
]


def _layer_steps(bn: torch.nn.Module, dtype: torch.dtype, rows: Callable[[int, int], slice]) -> Dict[str, list]:
    """Two training forwards (+ backward) of `bn` on BATCHES (this process' `rows` of each); the results per step."""
    g = torch.Generator().manual_seed(1)
    out: Dict[str, list] = {'y': [], 'grad': [], 'weight': [], 'bias': [], 'running_mean': [], 'running_var': []}
    for step, (make, split) in enumerate(BATCHES):
        x = make(g)
        w = torch.randn(x.shape, generator=g, dtype=torch.float64)
        share = rows(x.shape[0], split)
        layout = torch.channels_last if step else torch.contiguous_format  # the demo run trains channels-last
        xs = x[share].to(dtype).contiguous(memory_format=layout).requires_grad_()
        bn.zero_grad()
        y = bn(xs)
        (y.double() * w[share]).sum().backward()  # the global loss is the sum of the processes' losses
        out['y'].append(y.detach().double())
        out['grad'].append(xs.grad.double())
        out['weight'].append(bn.weight.grad.double())
        out['bias'].append(bn.bias.grad.double())
        out['running_mean'].append(bn.running_mean.double().clone())
        out['running_var'].append(bn.running_var.double().clone())
    return out


MOMENTA = (0.1, None)  # None: the cumulative average of BN calibration


def _layer_worker(rank: int, world: int, port: int, path: str) -> None:
    _join(rank, world, port)
    for momentum in MOMENTA:
        bn = _bn(8, torch.float64, momentum)
        assert convert_sync_dynamic_bn(bn) == 1
        out = _layer_steps(bn, torch.float64, lambda b, split: slice(0, split) if rank == 0 else slice(split, b))
        torch.save(out, f'{path}.{momentum}.{rank}')
    dist.destroy_process_group()


def test_two_processes_equal_one_on_the_global_batch_in_float64(tmp_path):
    """Both forwards (the second one shifted by a non-zero running mean), on 6 of 8 channels, with uneven shares."""
    _spawn(_layer_worker, 2, str(tmp_path / 'out'))
    for momentum in MOMENTA:
        one = _layer_steps(_bn(8, torch.float64, momentum), torch.float64, lambda b, split: slice(0, b))
        ranks = [torch.load(tmp_path / f'out.{momentum}.{r}') for r in range(2)]
        for step in range(len(BATCHES)):
            where = f'step {step}, momentum {momentum}'
            for key in ('y', 'grad'):  # each process holds its rows
                torch.testing.assert_close(torch.cat([r[key][step] for r in ranks]), one[key][step],
                                           rtol=1e-12, atol=1e-12, msg=f'{key} {where}')
            for key in ('weight', 'bias'):  # each process holds the gradient of its own loss (DDP sums them)
                torch.testing.assert_close(ranks[0][key][step] + ranks[1][key][step], one[key][step], rtol=1e-12,
                                           atol=1e-12, msg=f'{key} {where}')
            for key in ('running_mean', 'running_var'):  # identical on every process, the untouched channels too
                for r in ranks:
                    torch.testing.assert_close(r[key][step], one[key][step], rtol=1e-12, atol=1e-12,
                                               msg=f'{key} {where}')
        assert not torch.equal(one['running_mean'][0], torch.zeros(8))  # the second forward had a non-zero shift


# ---- a channel whose mean is 1e4 and spread 1e-2, in float32
def _hard_batches(steps: int) -> list:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(steps):
        x = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
        x = x * torch.tensor([1e-2, 1.0, 1e-3]).view(1, 3, 1, 1) + torch.tensor([1e4, 0.5, -50.]).view(1, 3, 1, 1)
        out.append((x.float(), torch.randn(x.shape, generator=g, dtype=torch.float64)))  # float32 data
    return out


def _hard_bn(dtype: torch.dtype) -> DynamicBatchNormAct2d:
    bn = _bn(3, dtype, 0.1)
    bn.running_var.zero_()  # the running variance then holds the batch variances at full relative precision
    return bn


def _hard_worker(rank: int, world: int, port: int, path: str) -> None:
    _join(rank, world, port)
    bn = _hard_bn(torch.float32)
    convert_sync_dynamic_bn(bn)
    out = []
    for x, w in _hard_batches(3):
        share = slice(rank * 4, rank * 4 + 4)
        xs = x[share].clone().requires_grad_()
        bn.zero_grad()
        y = bn(xs)
        (y.double() * w[share]).sum().backward()
        out.append((y.detach(), xs.grad, bn.running_mean.clone(), bn.running_var.clone()))
    torch.save(out, f'{path}.{rank}')
    dist.destroy_process_group()


def test_large_mean_tiny_spread_in_float32_keeps_the_variance(tmp_path):
    """Against float64 on the same float32 values of the global batch, three steps: a fresh layer (shift 0: 1e6
    standard deviations off), then shifted by running means still ~1e5 standard deviations off. Measured: normalised
    output within 1e-4, variance within 1e-4 relative (the float64 cancellation of (1e6)**2); the former two-pass sync
    BN and torch's own float32 BN on one process are off by 5e-2 in the output (their float32 mean), and
    E[x^2] - E[x]^2 in float32 has no variance left at all."""
    _spawn(_hard_worker, 2, str(tmp_path / 'out'))
    ref = _hard_bn(torch.float64)
    ranks = [torch.load(tmp_path / f'out.{r}') for r in range(2)]
    for step, (x, w) in enumerate(_hard_batches(3)):
        x64 = x.double().requires_grad_()
        y = ref(x64)
        (y * w).sum().backward()
        got_y, got_grad = (torch.cat([r[step][i] for r in ranks]).double() for i in (0, 1))
        torch.testing.assert_close(got_y, y.detach(), rtol=0, atol=3e-4, msg=f'y step {step}')
        scale = x64.grad.abs().amax((0, 2, 3), keepdim=True)  # the gradient relative to each channel's largest
        torch.testing.assert_close(got_grad / scale, x64.grad / scale, rtol=0, atol=2e-4, msg=f'grad step {step}')
        for r in ranks:
            torch.testing.assert_close(r[step][2].double(), ref.running_mean, rtol=1e-6, atol=0,
                                       msg=f'running_mean step {step}')
            torch.testing.assert_close(r[step][3].double(), ref.running_var, rtol=3e-4, atol=0,
                                       msg=f'running_var step {step}')


# ---- collectives of a sandwich step under DDP
COLLECTIVES = ('all_reduce', 'all_gather', 'all_gather_into_tensor', 'broadcast', 'reduce_scatter',
               'reduce_scatter_tensor', 'all_to_all', 'all_to_all_single', 'reduce', 'gather', 'scatter', 'barrier')


def _count_worker(rank: int, world: int, port: int, path: str) -> None:
    from torch.nn.parallel import DistributedDataParallel
    from timm_alphanet.task import SandwichTask
    _join(rank, world, port)
    new_groups = []
    real_new_group = dist.new_group
    dist.new_group = lambda *a, **k: new_groups.append(1) or real_new_group(*a, **k)
    torch.manual_seed(0)
    model = timm.create_model('slimmable_mobilenetv2_100', space={'widths': [0.5, 1.0], 'resolutions': [16]},
                              num_classes=10)
    n_bn = convert_sync_dynamic_bn(model)
    dist.new_group = real_new_group
    task = SandwichTask(DistributedDataParallel(model, find_unused_parameters=True), num_subnets=3, seed=0,
                        verbose=False).train()
    opt = torch.optim.SGD(task.trainable_module.parameters(), lr=0.05)
    counts = {'bn_forwards': 0, 'in_forward': 0, 'all_reduce': 0, 'other': 0}
    inside = []  # non-empty while a BN layer's forward runs

    def counted(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):  # Python-level calls: sync BN's; DDP's gradient buckets go through C++
            counts['all_reduce' if name == 'all_reduce' else 'other'] += 1
            counts['in_forward'] += bool(inside)
            return fn(*a, **k)
        return wrapper
    for name in COLLECTIVES:
        setattr(dist, name, counted(name, getattr(dist, name)))
    def enter(mod: torch.nn.Module, inp) -> None:
        counts['bn_forwards'] += mod.enabled
        inside.append(1)

    for m in model.modules():
        if isinstance(m, SyncDynamicBatchNormAct2d):
            m.register_forward_pre_hook(enter)
            m.register_forward_hook(lambda mod, inp, out: inside.pop() and None)
    g = torch.Generator().manual_seed(1)
    per_step = []
    for step in range(2):
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        counts.update({k: 0 for k in counts})
        opt.zero_grad()
        task(x[rank * 4:rank * 4 + 4], y[rank * 4:rank * 4 + 4], step, backward=lambda loss: loss.backward())
        opt.step()
        per_step.append(dict(counts))
    torch.save({'n_bn': n_bn, 'new_groups': len(new_groups), 'steps': per_step,
                'default_group': [m.process_group is None for m in model.modules()
                                  if isinstance(m, SyncDynamicBatchNormAct2d)]}, f'{path}.{rank}')
    dist.destroy_process_group()


def test_sandwich_step_issues_one_all_reduce_per_bn_forward_and_one_per_backward_on_the_default_group(tmp_path):
    """Every Python-level collective of a DDP sandwich step (3 subnets, one backward each) counted on 2 gloo
    processes: one all-reduce in each BN layer's forward, one in its backward (the former implementation: two and two,
    on a group of its own)."""
    _spawn(_count_worker, 2, str(tmp_path / 'out'))
    for rank in range(2):
        out = torch.load(tmp_path / f'out.{rank}')
        assert out['n_bn'] > 30 and out['new_groups'] == 0 and set(out['default_group']) == {True}
        for step in out['steps']:
            assert step['bn_forwards'] > 3 * 30  # 3 subnets through >30 layers each
            assert step['in_forward'] == step['bn_forwards']  # forward: one per layer run
            assert step['all_reduce'] == 2 * step['bn_forwards']  # + one in its backward
            assert step['other'] == 0


# ---- without a process group (or with one process): DynamicBatchNormAct2d's behaviour and keys
def _unchanged_checks() -> None:
    plain = _bn(8, torch.float32, 0.1)
    synced = _bn(8, torch.float32, 0.1)
    keys = list(synced.state_dict())
    assert convert_sync_dynamic_bn(synced) == 1 and type(synced) is SyncDynamicBatchNormAct2d
    assert list(synced.state_dict()) == keys
    g = torch.Generator().manual_seed(3)
    for c, train in ((8, True), (5, True), (5, False)):
        plain.train(train)
        synced.train(train)
        x = torch.randn(4, c, 5, 5, generator=g) * 3 + 7
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = plain(xa), synced(xb)
        ya.sum().backward()
        yb.sum().backward()
        assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
    for (ka, a), (kb, b) in zip(plain.state_dict().items(), synced.state_dict().items()):
        assert ka == kb and torch.equal(a, b), ka
    assert torch.equal(plain.weight.grad, synced.weight.grad)


def test_without_a_process_group_it_is_dynamic_bn():
    assert not dist.is_initialized()
    _unchanged_checks()


def _single_worker(rank: int, world: int, port: int) -> None:
    _join(rank, world, port)
    _unchanged_checks()
    dist.destroy_process_group()


def test_with_a_one_process_group_it_is_dynamic_bn():
    _spawn(_single_worker, 1)
