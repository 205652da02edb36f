"""DDP sandwich training on 2 gloo processes: after each step every process holds the mean of the per-process
gradients, also of the parameters that only the no_sync() subnets of a step used (torch < 2.4 dropped those)."""
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

from timm_alphanet.task import SandwichTask
from timm_alphanet.task.sandwich import check_ddp_no_sync

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = {  # depths 1-2: the min subnet skips blocks the max and random subnets train
    'use_v3_head': True, 'resolutions': [32, 40],
    'first_conv': {'c': [8, 16], 'act_func': 'swish', 's': 2},
    'mb1': {'c': [8, 16], 'd': [1, 2], 'k': [3], 't': [1], 's': 1, 'act_func': 'swish', 'se': False},
    'mb2': {'c': [16, 24], 'd': [1, 3], 'k': [3, 5], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': True},
    'last_conv': {'c': [32, 48], 'act_func': 'swish'},
}
STEPS, WORLD = 3, 2

WORKER = textwrap.dedent('''
    import sys
    import timm, torch, torch.distributed as dist
    import timm_alphanet
    from timm_alphanet.task import SandwichTask
    sys.path.insert(0, sys.argv[2])
    from test_ddp import SPACE, STEPS, batch, supernet
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    task = SandwichTask(supernet(), num_subnets=4, seed=3, verbose=False)
    task.prepare_distributed(find_unused_parameters=True)
    task.train()
    x, y = batch(rank)
    for step in range(STEPS):
        task.trainable_module.zero_grad(set_to_none=True)
        task(x, y, step=step, backward=lambda loss: loss.backward())
        grads = {n: p.grad for n, p in task.supernet.named_parameters() if p.grad is not None}
        torch.save(grads, f'{sys.argv[1]}/rank{rank}_step{step}.pt')
    dist.destroy_process_group()
''')


def supernet() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return timm.create_model('alphanet_supernet', space=SPACE, num_classes=10, drop_rate=0.0, drop_path_rate=0.0)


def batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(6, 3, 40, 40, generator=g), torch.randint(0, 10, (6,), generator=g)


def _reference(step: int, rank: int):
    task = SandwichTask(supernet(), num_subnets=4, seed=3, verbose=False).train()
    x, y = batch(rank)
    # a fresh model: the DDP run takes no optimizer step, and BN running statistics do not change training outputs
    task(x, y, step=step, backward=lambda loss: loss.backward())
    return {n: p.grad for n, p in task.supernet.named_parameters() if p.grad is not None}, task


def test_ddp_gradients_are_the_mean_over_processes_for_every_subnet(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT}
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(WORLD),
                           '--standalone', str(script), str(tmp_path), os.path.join(ROOT, 'tests')],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    only_before_last = 0
    for step in range(STEPS):
        per_rank = [_reference(step, rank) for rank in range(WORLD)]
        expected = {n: sum(r[0][n] for r in per_rank) / WORLD for n in per_rank[0][0]}
        # parameters the min subnet (the one forward DDP synchronises) does not use: the case torch < 2.4 broke
        task = per_rank[0][1]
        task.supernet.zero_grad(set_to_none=True)
        task.supernet.set_subnet(task.subnets_for_step(step)[-1])
        x, y = batch(0)
        task.criterion(task.supernet(task.resize(x, task.subnets_for_step(step)[-1].resolution)), y).backward()
        used_by_min = {n for n, p in task.supernet.named_parameters() if p.grad is not None}
        only_before_last += len(set(expected) - used_by_min)
        for rank in range(WORLD):
            got = torch.load(tmp_path / f'rank{rank}_step{step}.pt', weights_only=True)
            assert got.keys() == expected.keys(), (step, rank)
            for name in expected:
                torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f'step {step}, rank {rank}, {name}: {m}')
    assert only_before_last > 0  # the test covers parameters that only the no_sync() subnets used


@pytest.mark.parametrize('version,ok', [('2.3.1+cu121', False), ('2.1.0', False), ('2.4.0', True),
                                        ('2.14.1', True), ('3.0.0a0+git', True)])
def test_ddp_sandwich_refuses_a_torch_that_drops_no_sync_gradients(version, ok):
    if ok:
        check_ddp_no_sync(version)
    else:
        with pytest.raises(ValueError, match=r'needs torch >= 2\.4 .*all-reduces only the parameters the last subnet'):
            check_ddp_no_sync(version)
