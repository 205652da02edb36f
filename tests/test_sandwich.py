"""Sandwich sampling and SandwichTask (max on labels, in-place alpha-KD into the others) on a tiny CPU supernet."""
import copy
import random
from contextlib import contextmanager

import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import save_for_hf
from timm.task import TrainingTask

from timm_alphanet.spaces import SearchSpace
from timm_alphanet.loss import AdaptiveAlphaDivergence, KDOutput, KLDivergence
from timm_alphanet.task import sandwich_subnets
from timm_alphanet.task import SandwichTask

NUM_CLASSES = 10
TINY_SPACE = {  # original supernet_config schema; 2 resolutions x 2 x 2 x 4 x 16 = 512 subnets
    'use_v3_head': True,
    'resolutions': [32, 48],
    'first_conv': {'c': [8, 16], 'act_func': 'swish', 's': 2},
    'mb1': {'c': [8, 16], 'd': [1, 2], 'k': [3], 't': [1], 's': 1, 'act_func': 'swish', 'se': False},
    'mb2': {'c': [16, 24], 'd': [1, 2], 'k': [3, 5], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': True},
    'last_conv': {'c': [32, 48], 'act_func': 'swish'},
}
SPACE = SearchSpace.from_dict(TINY_SPACE)


def tiny_supernet(seed: int = 0, drop_rate: float = 0.2, drop_path_rate: float = 0.2) -> nn.Module:
    with torch.random.fork_rng():  # seeded init without touching the global RNG state
        torch.manual_seed(seed)
        return timm.create_model('alphanet_supernet', space=TINY_SPACE, num_classes=NUM_CLASSES,
                                 drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def batch(seed: int = 0, size: int = 8, resolution: int = 48):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, resolution, resolution, generator=g)
    return x, torch.randint(0, NUM_CLASSES, (size,), generator=g)


def grads(model: nn.Module):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def run_backward(loss: torch.Tensor) -> None:
    loss.backward()


# ---- sampling

def test_subnet_sequence_is_keyed_by_seed_and_step_only():
    a, b = SandwichTask(tiny_supernet(), seed=7, verbose=False), SandwichTask(tiny_supernet(1), seed=7, verbose=False)
    other = SandwichTask(tiny_supernet(), seed=8, verbose=False)
    steps = range(12)
    random.seed(1)
    seq_a = [a.subnets_for_step(s) for s in steps]
    random.seed(2)  # the global RNG plays no part ...
    state = random.getstate()
    seq_b = [b.subnets_for_step(s) for s in reversed(steps)][::-1]  # ... nor does the order of the calls
    assert random.getstate() == state  # ... and is left alone
    assert seq_a == seq_b
    assert seq_a != [other.subnets_for_step(s) for s in steps]
    assert seq_a == [sandwich_subnets(SPACE, 4, 7, s) for s in steps]  # a resumed run continues the sequence
    assert len({c for seq in seq_a for c in seq[1:-1]}) > 4  # the middle ones vary
    for seq in seq_a:
        assert len(seq) == 4 and seq[0] == SPACE.max_config() and seq[-1] == SPACE.min_config()
    assert sandwich_subnets(SPACE, 2, 0, 0) == [SPACE.max_config(), SPACE.min_config()]


@pytest.mark.parametrize('num_subnets', [1, 0, -3, 2.0, True])
def test_num_subnets_below_two_is_rejected(num_subnets):
    with pytest.raises(ValueError, match='num_subnets must be an int >= 2'):
        sandwich_subnets(SPACE, num_subnets, 0, 0)
    with pytest.raises(ValueError, match='num_subnets must be an int >= 2'):
        SandwichTask(tiny_supernet(), num_subnets=num_subnets, verbose=False)


# ---- SandwichTask

def test_three_steps_reduce_the_loss_and_log_the_parts():
    task = SandwichTask(tiny_supernet(), num_subnets=4, seed=0, verbose=False).train()
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.2, momentum=0.9)
    x, y = batch()
    objectives = []
    with torch.random.fork_rng():
        torch.manual_seed(0)  # dropout / drop path masks
        for step in range(4):  # 3 updates, then one more forward to see their effect
            optimizer.zero_grad()
            result = task(x, y, step, backward=run_backward)
            parts = ['loss_max', 'loss_random0', 'loss_random1', 'loss_min']
            for key in ['loss', 'task_loss', 'kd_divergence', 'kd_alpha_max_frac', *parts]:
                assert result[key].ndim == 0 and torch.isfinite(result[key]), key
                assert not result[key].requires_grad, key
            assert 'loss_random2' not in result and 'teacher_kd_loss' not in result
            torch.testing.assert_close(result['loss'], sum(result[k] for k in parts))
            torch.testing.assert_close(result['loss_max'], result['task_loss'])
            assert result['output'].shape == (8, NUM_CLASSES) and not result['output'].requires_grad
            assert result['subnets'] == task.subnets_for_step(step)
            assert result['kd_divergence'] >= 0 and 0.0 <= result['kd_alpha_max_frac'] <= 1.0
            # the KD values are surrogates (they may be negative); what descends is CE + divergence
            objectives.append((result['task_loss'] + result['kd_divergence']).item())
            if step < 3:
                optimizer.step()
    assert objectives[-1] < objectives[0], objectives


def test_backward_per_subnet_equals_one_backward_of_the_sum():
    model = tiny_supernet()
    x, y = batch(1)
    results, gradients = [], []
    for backward in (run_backward, None):
        task = SandwichTask(copy.deepcopy(model), num_subnets=4, seed=3, verbose=False).train()
        with torch.random.fork_rng():
            torch.manual_seed(0)  # same dropout / drop path masks in both runs (same forwards in the same order)
            result = task(x, y, step=5, backward=backward)
        if backward is None:
            assert result['loss'].requires_grad
            result['loss'].backward()
        else:
            assert not result['loss'].requires_grad
        results.append(result)
        gradients.append(grads(task.supernet))
    per_subnet, summed = gradients
    assert per_subnet.keys() == summed.keys() and len(summed) > 10
    for name in summed:
        torch.testing.assert_close(per_subnet[name], summed[name], rtol=1e-5, atol=1e-6, msg=name)
    for key in ('loss', 'loss_max', 'loss_random0', 'loss_random1', 'loss_min', 'kd_divergence'):
        torch.testing.assert_close(results[0][key], results[1][key].detach())


class _UndetachedKL(nn.Module):
    """KL(teacher || student) that lets gradient reach the teacher logits (unlike our loss modules)."""

    def forward_with_stats(self, student_logits, teacher_logits):
        kl = F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1),
                      reduction='none', log_target=True).sum(-1)
        return KDOutput(kl.mean(), kl.detach(), None)

    def forward(self, student_logits, teacher_logits):
        return self.forward_with_stats(student_logits, teacher_logits).loss


@pytest.mark.parametrize('backward', [run_backward, None], ids=['per_subnet', 'summed'])
def test_kd_targets_are_detached(backward):
    """With [max, min]: the gradient is CE's through the max plus KD's through the min only."""
    model = tiny_supernet(drop_rate=0.0, drop_path_rate=0.0)
    x, y = batch(2)
    task = SandwichTask(copy.deepcopy(model), num_subnets=2, verbose=False).train()
    task.kd_criterion = _UndetachedKL()  # so only the task's own detach keeps the max's forward out of KD
    result = task(x, y, step=0, backward=backward)
    if backward is None:
        result['loss'].backward()
    got = grads(task.supernet)

    def reference(detach: bool):
        ref = copy.deepcopy(model).train()
        with ref.regularized():
            max_logits = ref(x)
        ref.set_subnet(SPACE.min_config())
        min_logits = ref(F.interpolate(x, size=(32, 32), mode='bicubic', align_corners=False))
        kd = _UndetachedKL()(min_logits, max_logits.detach() if detach else max_logits)
        (task.criterion(max_logits, y) + kd).backward()
        return grads(ref)

    expected, leaky = reference(detach=True), reference(detach=False)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    # the check can fail: gradient through the targets would change the max subnet's gradient
    assert any(not torch.allclose(leaky[n], expected[n], rtol=1e-4, atol=1e-6) for n in expected)


def test_each_subnet_sees_its_resolution_and_only_the_max_is_regularized():
    task = SandwichTask(tiny_supernet(), num_subnets=6, seed=1, verbose=False).train()
    supernet = task.supernet
    previous = SPACE.sample(random.Random(0))
    supernet.set_subnet(previous)
    seen = []

    def record(module, args):
        drop_path = [b.drop_path_enabled for b in module.modules() if hasattr(b, 'drop_path_enabled')]
        seen.append((args[0], module.active_subnet, module.drop_rate, any(drop_path), all(drop_path)))

    supernet.register_forward_pre_hook(record)
    for size in (48, 40):  # at the max resolution, and neither resolution
        seen.clear()
        x, y = batch(3, resolution=size)
        result = task(x, y, step=11, backward=run_backward)
        subnets = result['subnets']
        assert {s.resolution for s in subnets} == {32, 48}  # this step resizes both ways
        assert [s[1] for s in seen] == subnets
        for (inp, subnet, *_), first in zip(seen, [True] + [False] * 5):
            r = subnet.resolution
            assert inp.shape == (8, 3, r, r)
            if r == size:
                assert inp is x  # no resize at the native size
            else:
                torch.testing.assert_close(
                    inp, F.interpolate(x, size=(r, r), mode='bicubic', align_corners=False, antialias=False))
        assert seen[0][2:] == (0.2, True, True)  # max: dropout at the model's rate, drop path on
        assert all(s[2:] == (0.0, False, False) for s in seen[1:])
        assert supernet.active_subnet == previous and supernet.drop_rate == 0.0  # restored


def test_external_teacher_module_is_renormalised_frozen_and_weighted():
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, NUM_CLASSES))
    teacher.pretrained_cfg = {'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25)}
    teacher_inputs = []
    teacher.register_forward_pre_hook(lambda m, args: teacher_inputs.append(args[0]))
    task = SandwichTask(tiny_supernet(drop_rate=0.0), num_subnets=3, kd_loss='kl', temperature=2.0,
                        teacher=teacher, teacher_weight=0.5, verbose=False).train()
    assert task.teacher.model is teacher and not teacher.training
    x, y = batch(4, resolution=56)  # the teacher sees the batch as given, the subnets their resolutions
    result = task(x, y, step=0, backward=run_backward)
    assert all(p.grad is None for p in teacher.parameters())

    cfg = task.supernet.pretrained_cfg
    mean_s, std_s = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ('mean', 'std'))
    expected_input = (x * std_s + mean_s - 0.5) / 0.25  # timm's student -> teacher fix-up
    torch.testing.assert_close(teacher_inputs[-1], expected_input)
    with torch.no_grad():
        kd = KLDivergence(temperature=2.0)(result['output'], teacher(expected_input))
    torch.testing.assert_close(result['teacher_kd_loss'], kd)
    torch.testing.assert_close(result['loss_max'], result['task_loss'] + 0.5 * kd)
    assert 'kd_alpha_max_frac' not in result and result['teacher_kd_divergence'] >= 0
    assert not any(k.startswith('teacher') for k in task.get_checkpoint_state()['state_dict'])


def test_teacher_by_local_dir_name(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        source = timm.create_model('resnet10t', num_classes=NUM_CLASSES).eval()
    save_for_hf(source, tmp_path / 'teacher')
    task = SandwichTask(tiny_supernet(), teacher=f'local-dir:{tmp_path / "teacher"}', verbose=False)
    assert isinstance(task.teacher.model, type(source))
    x, y = batch(8)
    torch.testing.assert_close(task.teacher_logits(x), source(x))  # same normalisation: no fix-up
    assert torch.isfinite(task(x, y, step=0)['teacher_kd_loss'])


def test_timm_task_api_sees_the_supernet():
    supernet = tiny_supernet()
    task = SandwichTask(supernet, verbose=False).train()
    assert isinstance(task, TrainingTask)
    assert task.get_trainable_module() is supernet and task.get_eval_model() is supernet
    assert isinstance(task.criterion, LabelSmoothingCrossEntropy) and task.criterion.smoothing == 0.1
    kd = task.kd_criterion  # the paper's defaults
    assert isinstance(kd, AdaptiveAlphaDivergence) and (kd.alpha_min, kd.alpha_max, kd.clip) == (-1.0, 1.0, 5.0)
    assert type(SandwichTask(tiny_supernet(), smoothing=0.0, verbose=False).criterion) is nn.CrossEntropyLoss
    assert task.get_checkpoint_state()['state_dict'].keys() == supernet.state_dict().keys()
    ema = task.setup_ema(decay=0.5)
    before = copy.deepcopy(ema.module.state_dict())
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.1)
    x, y = batch(5)
    task(x, y, step=0, backward=run_backward)
    optimizer.step()
    task.update_ema(step=1)
    after = ema.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert task.get_checkpoint_state(ema=True)['state_dict_ema'].keys() == before.keys()


class _FakeDDP(nn.Module):
    """Records whether each forward ran under no_sync (the DDP contract SandwichTask relies on)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module, self.syncing, self.calls = module, True, []

    @contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, x):
        self.calls.append(self.syncing)
        return self.module(x)


def test_only_the_last_backward_synchronises():
    wrapper = _FakeDDP(tiny_supernet())
    task = SandwichTask(wrapper, num_subnets=4, verbose=False).train()
    assert task.supernet is wrapper.module
    x, y = batch(6)
    backward_calls = []
    task(x, y, step=0, backward=lambda loss: backward_calls.append(wrapper.syncing) or loss.backward())
    assert wrapper.calls == backward_calls == [False, False, False, True]
    wrapper.calls.clear()
    task(x, y, step=0)
    assert wrapper.calls == [True] * 4  # one backward by the caller: nothing to skip


def test_real_ddp_accumulates_like_a_single_process(tmp_path):
    model = tiny_supernet(drop_rate=0.0, drop_path_rate=0.0)
    x, y = batch(7)
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        ddp_task = SandwichTask(copy.deepcopy(model), num_subnets=4, seed=2, verbose=False)
        ddp_task.prepare_distributed(find_unused_parameters=True)
        ddp_task.train()
        for step in range(2):  # a second step: DDP must have finished the first step's reduction
            ddp_task.trainable_module.zero_grad()
            ddp_task(x, y, step=step, backward=run_backward)
        with pytest.raises(RuntimeError, match='pass backward='):  # DDP allows one forward per backward
            ddp_task(x, y, step=2)
    finally:
        dist.destroy_process_group()
    task = SandwichTask(copy.deepcopy(model), num_subnets=4, seed=2, verbose=False).train()
    for step in range(2):
        task.trainable_module.zero_grad()
        task(x, y, step=step, backward=run_backward)
    expected, got = grads(task.supernet), grads(ddp_task.supernet)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match='kd_loss'):
        SandwichTask(tiny_supernet(), kd_loss='js', verbose=False)
    with pytest.raises(ValueError, match='interpolation'):
        SandwichTask(tiny_supernet(), interpolation='lanczos', verbose=False)
    with pytest.raises(ValueError, match='smoothing'):
        SandwichTask(tiny_supernet(), smoothing=1.0, verbose=False)
    with pytest.raises(ValueError, match='teacher_weight'):
        SandwichTask(tiny_supernet(), teacher_weight=-1.0, verbose=False)
    with pytest.raises(TypeError, match='supernet'):
        SandwichTask(timm.create_model('resnet10t', num_classes=NUM_CLASSES), verbose=False)


def test_numpy_numbers_are_accepted_for_counts_seeds_and_weights():
    np = pytest.importorskip('numpy')
    assert sandwich_subnets(SPACE, np.int64(4), np.int32(7), np.int64(3)) == sandwich_subnets(SPACE, 4, 7, 3)
    task = SandwichTask(tiny_supernet(), num_subnets=np.int64(3), seed=np.int64(7), smoothing=np.float32(0.25),
                        teacher_weight=np.float64(0.5), verbose=False)
    assert task.subnets_for_step(3) == sandwich_subnets(SPACE, 3, 7, 3)
    assert task.criterion.smoothing == 0.25 and task.teacher_weight == 0.5
    with pytest.raises(ValueError, match='seed must be an int'):
        sandwich_subnets(SPACE, 4, np.float64(7.0), 0)
