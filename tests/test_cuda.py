"""The training path on a GPU: bf16 and fp16 (GradScaler) sandwich steps, `compile_task`, DDP over NCCL and a CUDA
latency table. Each test takes seconds on one GPU (the DDP test needs two) and is skipped without CUDA.

Written without a GPU: these tests have not run on CUDA in this project yet. Each check is a helper that takes the
device, so its logic can be tried on a CPU where the check allows it (everything but fp16 and NCCL).
"""
import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

import timm_alphanet  # noqa: F401 (registers the models)
from timm_alphanet.task import AlphaDistillationTask, SandwichTask
from timm_alphanet.archs import DEMO_SPACE
from timm_alphanet.train import (TrainConfig, TrainState, build_accelerator, build_ema, build_model,
                                 build_optimizer, build_task, compile_task, train_one_epoch)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 CUDA GPUs (DDP over NCCL)')

ROOT = Path(__file__).resolve().parent.parent
DEV = torch.device('cuda')
CLASSES = 10
RES = max(DEMO_SPACE['resolutions'])  # the trainer feeds the largest resolution; each subnet resizes


def demo_supernet(**kwargs) -> torch.nn.Module:
    """The demo space's supernet, the same initial weights every call; dropout and drop path off (deterministic)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model('alphanet_supernet', space=DEMO_SPACE, num_classes=CLASSES, drop_rate=0.0,
                                 drop_path_rate=0.0, **kwargs)


def tiny_classifier(seed: int = 0) -> torch.nn.Module:
    """timm's smallest ResNet (test_resnet), as a KD student or teacher."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model('test_resnet', num_classes=CLASSES)


def fake_batches(n: int, device: torch.device, batch_size: int = 8, seed: int = 0):
    """`n` batches of random images and labels on `device`: what a prepared loader yields, no data set."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, RES, RES, generator=g).to(device),
             torch.randint(0, CLASSES, (batch_size,), generator=g).to(device)) for _ in range(n)]


class _NoSchedule:
    def step_update(self, num_updates):
        pass


# ---- (a) bf16 autocast
def sandwich_step_losses(device: torch.device, dtype=None):
    """One sandwich step (max, 2 random, min; one backward each) under autocast `dtype` (None: fp32): its losses
    and whether every gradient is finite."""
    model = demo_supernet().to(device)
    task = SandwichTask(model, num_subnets=4, seed=0, verbose=False).to(device).train()
    x, y = fake_batches(1, device)[0]
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = task(x, y, 0, backward=lambda loss: loss.backward())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    losses = {k: float(v) for k, v in out.items() if k.startswith('loss_')}
    return losses, bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)


def test_bf16_sandwich_step_is_finite_and_close_to_fp32():
    fp32, fp32_finite = sandwich_step_losses(DEV)
    bf16, bf16_finite = sandwich_step_losses(DEV, torch.bfloat16)
    assert set(bf16) == {'loss_max', 'loss_random0', 'loss_random1', 'loss_min'}
    assert fp32_finite and bf16_finite
    assert all(math.isfinite(v) for v in (*fp32.values(), *bf16.values())), (fp32, bf16)
    # the same weights, batch and subnets: bf16 (8 bits of mantissa) moves the label loss by well under 5 %
    assert bf16['loss_max'] == pytest.approx(fp32['loss_max'], rel=0.05, abs=0.02), (fp32, bf16)


# ---- (b) fp16 + GradScaler through the trainer
@pytest.fixture()
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state whose mixed precision cannot change once set: start and leave clean."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def force_overflow(accelerator) -> None:
    """Make the next backward overflow: a loss scale of 2**100 keeps the (float32) scaled loss finite, while every
    float16 gradient becomes inf. (Scaling the batch instead does not: the first BatchNorm divides it out.)"""
    accelerator.scaler.update(new_scale=2.0 ** 100)


def test_fp16_sandwich_trains_through_train_one_epoch_and_grad_scaler_skips_overflow(fresh_accelerate_state):
    cfg = TrainConfig(space=DEMO_SPACE, mixed_precision='fp16', batch_size=8, lr=0.05, no_progress=True,
                      log_interval=10 ** 6)
    acc = build_accelerator(cfg)
    assert acc.device.type == 'cuda' and acc.scaler is not None
    model = build_model(cfg, acc, CLASSES)
    opt = build_optimizer(cfg, acc, model)
    model, opt = acc.prepare(model, opt)
    task = build_task(cfg, acc, model)
    assert isinstance(task, SandwichTask)
    state = TrainState()
    result = train_one_epoch(cfg, acc, task, fake_batches(4, acc.device), opt, _NoSchedule(), state, 4)
    assert (result.steps, state.step, state.nonfinite_in_row) == (4, 4, 0)
    supernet = task.supernet
    assert all(bool(torch.isfinite(p).all()) for p in supernet.parameters())

    force_overflow(acc)
    skips = state.scaler_skips
    before = [p.detach().clone() for p in supernet.parameters()]
    state.epoch, state.batch_in_epoch = 1, 0
    train_one_epoch(cfg, acc, task, fake_batches(1, acc.device, seed=1), opt, _NoSchedule(), state, 1)
    assert state.scaler_skips == skips + 1  # GradScaler skipped it ...
    assert state.nonfinite_in_row == 0 and state.step == 5  # ... not the trainer's non-finite-loss path
    for (name, p), b in zip(supernet.named_parameters(), before):
        assert torch.equal(p.detach(), b), name  # no update on the skipped step
    assert all(bool(torch.isfinite(p).all()) for p in supernet.parameters())


def test_fp16_grad_scaler_skip_leaves_a_kd_students_ema_alone(fresh_accelerate_state):
    # a weight EMA is for KD students (the trainer refuses it for a supernet): a skipped step must not update it
    cfg = TrainConfig(model='test_resnet', mixed_precision='fp16', model_ema=True, model_ema_decay=0.9, lr=0.05,
                      no_progress=True, log_interval=10 ** 6)
    acc = build_accelerator(cfg)
    student = tiny_classifier(0)
    opt = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=0.9)
    student, opt = acc.prepare(student, opt)
    task = AlphaDistillationTask(student, tiny_classifier(1), device=acc.device, verbose=False).to(acc.device)
    ema = build_ema(cfg, acc.unwrap_model(student), device=acc.device)
    state = TrainState()
    train_one_epoch(cfg, acc, task, fake_batches(3, acc.device), opt, _NoSchedule(), state, 3, ema=ema)
    assert state.step == 3 and state.nonfinite_in_row == 0
    assert all(bool(torch.isfinite(v).all()) for v in ema.module.state_dict().values() if v.is_floating_point())

    force_overflow(acc)
    skips = state.scaler_skips
    ema_before = copy.deepcopy(ema.module.state_dict())
    params_before = [p.detach().clone() for p in acc.unwrap_model(student).parameters()]
    state.epoch, state.batch_in_epoch = 1, 0
    train_one_epoch(cfg, acc, task, fake_batches(1, acc.device, seed=1), opt, _NoSchedule(), state, 1, ema=ema)
    assert state.scaler_skips == skips + 1 and state.nonfinite_in_row == 0
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, ema_before[k]), k  # the EMA was not updated (its BN statistics included)
    for p, b in zip(acc.unwrap_model(student).parameters(), params_before):
        assert torch.equal(p.detach(), b)


# ---- (c) compile_task
def compile_counts_with_supernet(device: torch.device, backend: str = 'eager', steps: int = 6):
    """`compile_task` on a SandwichTask with an external teacher, then `steps` steps with new subnets each
    (4 per step): (trainable module compiled whole?, teacher compiled?, dynamo frames compiled after each step)."""
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    task = SandwichTask(demo_supernet().to(device), num_subnets=4, seed=0, teacher=tiny_classifier(1),
                        verbose=False).to(device).train()
    counter = CompileCounterWithBackend(backend)
    compile_task(task, counter)
    x, y = fake_batches(1, device)[0]
    frames = []
    for step in range(steps):
        task.trainable_module.zero_grad(set_to_none=True)
        task(x, y, step, backward=lambda loss: loss.backward())
        frames.append(counter.frame_count)
    return (isinstance(task.trainable_module, OptimizedModule), isinstance(task.teacher.model, OptimizedModule),
            frames)


def compile_counts_with_kd_student(device: torch.device, backend: str = 'aot_eager', steps: int = 4):
    """`compile_task` on a KD task, then `steps` training steps of one fixed batch shape: (student compiled?,
    dynamo frames compiled after each step)."""
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    student = tiny_classifier(0).to(device)
    task = AlphaDistillationTask(student, tiny_classifier(1), device=device, verbose=False).to(device).train()
    counter = CompileCounterWithBackend(backend)
    compile_task(task, counter)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    frames = []
    for x, y in fake_batches(steps, device):
        opt.zero_grad(set_to_none=True)
        task(x, y)['loss'].backward()
        opt.step()
        frames.append(counter.frame_count)
    return isinstance(task.trainable_module, OptimizedModule), frames


def test_compile_task_compiles_a_supernets_norm_act_in_a_few_graphs_for_every_subnet():
    supernet_compiled, teacher_compiled, frames = compile_counts_with_supernet(DEV)
    assert not supernet_compiled and teacher_compiled  # the supernet's BN + activations only, the teacher whole
    # 24 subnets of the demo space: the first steps compile the teacher and the norm-act kinds (static, then dynamic
    # shapes); the last steps' new subnets compile nothing
    assert frames[0] > 0 and frames[-1] == frames[-3] and frames[-1] <= frames[0] + 8, frames


def test_compile_task_compiles_a_kd_student_once_for_fixed_shapes():
    student_compiled, frames = compile_counts_with_kd_student(DEV)
    assert student_compiled
    assert frames[0] > 0 and frames == [frames[0]] * len(frames), frames  # no recompiles after the first step


# ---- (d) DDP over NCCL
DDP_WORKER = textwrap.dedent('''
    import json, os, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from test_ddp import SPACE, batch, supernet  # noqa: F401 (SPACE: depths 1-2, the min subnet skips blocks)
    from timm_alphanet.task import SandwichTask
    cuda = torch.cuda.is_available()
    dist.init_process_group('nccl' if cuda else 'gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get('LOCAL_RANK', 0))
    dev = torch.device('cuda', local) if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(dev)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    task = SandwichTask(supernet().to(dev), num_subnets=4, seed=3, verbose=False).to(dev)
    task.prepare_distributed(device_ids=[local] if cuda else None, find_unused_parameters=True)
    task.train()
    ref = SandwichTask(supernet().to(dev), num_subnets=4, seed=3, verbose=False).to(dev).train()  # this rank alone
    x, y = (t.to(dev) for t in batch(rank))
    report = []
    for step in range(int(sys.argv[3])):
        for t in (task, ref):
            t.trainable_module.zero_grad(set_to_none=True)
            t(x, y, step=step, backward=lambda loss: loss.backward())
        wrong, none_differs, worst = [], [], 0.0
        with_grad = set()
        for (name, p), q in zip(task.supernet.named_parameters(), ref.supernet.parameters()):
            mean = q.grad.clone() if q.grad is not None else torch.zeros_like(q)
            dist.all_reduce(mean)  # every parameter on every rank: the collectives stay aligned
            mean /= world
            if (p.grad is None) != (q.grad is None):
                none_differs.append(name)
                continue
            if p.grad is None:
                continue
            with_grad.add(name)
            err = (p.grad - mean).abs()
            worst = max(worst, float((err / (mean.abs() + 1e-6)).max()))
            if not bool((err <= 1e-5 + 1e-3 * mean.abs()).all()):
                wrong.append(name)
        # parameters only the no_sync() subnets used (not the min subnet, whose backward DDP all-reduces)
        last = ref.subnets_for_step(step)[-1]
        ref.trainable_module.zero_grad(set_to_none=True)
        ref.supernet.set_subnet(last)
        ref.criterion(ref.supernet(ref.resize(x, last.resolution)), y).backward()
        used_by_min = {n for n, q in ref.supernet.named_parameters() if q.grad is not None}
        report.append(dict(step=step, world=world, compared=len(with_grad), wrong=wrong[:10],
                           none_differs=none_differs[:10], worst_rel_err=worst,
                           only_before_last=len(with_grad - used_by_min)))
    with open(os.path.join(sys.argv[1], f'rank{rank}.json'), 'w') as f:
        json.dump(report, f)
    dist.destroy_process_group()
''')


def run_ddp_worker(folder: Path, world: int = 2, steps: int = 3):
    """Run the DDP worker on `world` processes (NCCL on GPUs, gloo on CPU); returns each rank's report."""
    script = folder / 'ddp_worker.py'
    script.write_text(DDP_WORKER)
    env = {**os.environ, 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                           str(world), str(script), str(folder), str(ROOT / 'tests'), str(steps)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(folder))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads((folder / f'rank{r}.json').read_text()) for r in range(world)]


@two_gpus
def test_ddp_nccl_gradients_are_the_mean_of_the_per_rank_gradients(tmp_path):
    reports = run_ddp_worker(tmp_path, world=2)
    for rank, report in enumerate(reports):
        assert len(report) == 3
        for row in report:
            assert row['world'] == 2 and row['compared'] > 0, row
            assert not row['none_differs'] and not row['wrong'], (rank, row)
    # the check covers what torch < 2.4 dropped: parameters used only by the subnets run under no_sync()
    assert sum(row['only_before_last'] for row in reports[0]) > 0


# ---- (e) CUDA latency table
def latency_check(device: str, samples: int = 8):
    """A latency table of the demo space built on `device` with few repeats, and its validation."""
    from timm_alphanet.cost.latency import TimingConfig, build_latency_table, validate_latency_table
    timing = TimingConfig(warmup=3, repeats=10, trim=0.2)
    table = build_latency_table(DEMO_SPACE, device=device, num_classes=CLASSES, timing=timing, progress=False,
                                on_noise='ignore')
    return table, validate_latency_table(table, samples=samples, timing=timing, progress=False)


def test_cuda_latency_table_validates_on_the_demo_space():
    table, v = latency_check('cuda')
    assert 'cuda' in str(table.device['type']) and table.device['name'] == torch.cuda.get_device_name(0)
    assert table.entries and all(math.isfinite(ms) and ms >= 0 for ms in table.entries.values())
    assert len(v.predicted) == len(v.measured) == 8
    assert all(p > 0 for p in v.predicted) and all(m > 0 for m in v.measured), (v.predicted, v.measured)
    # generous: batch-1 forwards of a tiny model on a GPU are mostly launch latency, which sums less well than on CPU
    assert v.mape < 50.0, list(zip(v.predicted, v.measured))
