"""The trainer's pieces in-process: every build_* function, train_one_epoch on fake loaders, and run(cfg) on a tiny
space and the digits (supernet and teacher KD)."""
import copy
import hashlib
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from timm_alphanet import save_pretrained
from timm_alphanet.archs import ALPHANET_ARCHS
from timm_alphanet.layers.sync_bn import SyncDynamicBatchNormAct2d
from timm_alphanet.models import is_supernet
from timm_alphanet.spaces import SearchSpace
from timm_alphanet.task import TeacherOutputError
from timm_alphanet.testing.host_reads import count_host_reads
from timm_alphanet.task import AlphaDistillationTask, SandwichTask, sandwich_subnets
from timm_alphanet.data import build_digits_folder
from timm_alphanet.train import (NonFiniteLossError, TrainConfig, TrainState, build_accelerator, build_data,
                                 build_loaders, build_model, build_optimizer, build_scheduler,
                                 build_task, data_config_for, init_classifier, model_is_supernet, run,
                                 train_one_epoch, validation_archs)

from test_train_run import TINY_SPACE  # one tiny space for the trainer's tests


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return str(build_digits_folder(tmp_path_factory.mktemp('data') / 'digits32'))


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    import timm
    folder = tmp_path_factory.mktemp('teacher') / 'resnet10t'
    torch.manual_seed(0)
    save_pretrained(timm.create_model('resnet10t', num_classes=10), folder)
    return f'local-dir:{folder}'


def _cfg(digits, **changes):
    base = dict(space=TINY_SPACE, data_dir=digits, no_aug=True, batch_size=32, bn_calib_batches=2, lr=0.1,
                no_progress=True, workers=0)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope='module')
def acc():
    return build_accelerator(TrainConfig())


def test_build_accelerator_is_one_cpu_process_and_checks_the_launcher(acc, monkeypatch):
    assert acc.num_processes == 1 and acc.device.type == 'cpu' and acc.mixed_precision == 'no'
    monkeypatch.setenv('WORLD_SIZE', '3')
    with pytest.raises(ValueError, match=r'started 3 processes \(WORLD_SIZE\) but the Accelerator has 1'):
        build_accelerator(TrainConfig())


def test_build_data_counts_classes_and_needs_a_root(acc, digits, tmp_path):
    data = build_data(_cfg(digits), acc)
    assert data.num_classes == 10 and len(data.train) + len(data.val) == 1797 and len(data.val) < len(data.train)
    assert build_data(_cfg(digits, num_classes=12), acc).num_classes == 12
    with pytest.raises(ValueError, match=r"dataset '' needs data_dir"):
        build_data(TrainConfig(dataset=''), acc)
    with pytest.raises(FileNotFoundError, match='nowhere'):
        build_data(TrainConfig(dataset='', data_dir=str(tmp_path / 'nowhere')), acc)


def test_model_is_supernet_decides_the_mode(teacher_dir):
    assert model_is_supernet(TrainConfig()) is True
    assert model_is_supernet(TrainConfig(model='mobilenetv2_050', teacher=teacher_dir)) is False
    with pytest.raises(ValueError, match="'mobilenetv2_050' is not a supernet.*needs a teacher"):
        model_is_supernet(TrainConfig(model='mobilenetv2_050'))
    with pytest.raises(ValueError, match=r"unknown timm model 'alphanet_supernett'; did you mean \['alphanet_supernet'"):
        model_is_supernet(TrainConfig(model='alphanet_supernett'))
    with pytest.raises(ValueError, match='sync_bn: .* GPUs only'):
        model_is_supernet(TrainConfig(model='mobilenetv2_050', teacher=teacher_dir, sync_bn=True))


def test_build_model_supernet_student_seed_sync_bn_channels_last(acc, digits, teacher_dir):
    cfg = _cfg(digits)
    a, b = build_model(cfg, acc, 10), build_model(cfg, acc, 10)
    assert is_supernet(a) and a.space == SearchSpace.from_dict(TINY_SPACE) and a.num_classes == 10
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k  # the seed fixes the initial weights
    other = build_model(cfg.replace(seed=1), acc, 10)
    assert not torch.equal(other.conv_stem.weight, a.conv_stem.weight)
    synced = build_model(cfg.replace(sync_bn=True), acc, 10)
    assert any(isinstance(m, SyncDynamicBatchNormAct2d) for m in synced.modules())
    assert cfg.channels_last and a.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    plain = build_model(cfg.replace(channels_last=False), acc, 10)
    assert not plain.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(v.is_contiguous() for v in a.state_dict().values())  # what safetensors can save
    student = build_model(_cfg(digits, model='mobilenetv2_050', teacher=teacher_dir), acc, 7)
    assert not is_supernet(student) and student.num_classes == 7


def test_head_init_zero_zeroes_only_the_classifier_and_default_leaves_it(acc, digits, teacher_dir):
    for cfg in (_cfg(digits), _cfg(digits, model='mobilenetv2_050', teacher=teacher_dir)):  # supernet, student
        default, zero = build_model(cfg, acc, 10), build_model(cfg.replace(head_init='zero'), acc, 10)
        head, zero_head = default.get_classifier(), zero.get_classifier()
        assert torch.count_nonzero(head.weight) > 0  # the default keeps the model's own (non-zero) init ...
        assert torch.equal(zero_head.weight, torch.zeros_like(zero_head.weight))  # ... 'zero' sets it to exactly 0
        assert torch.equal(zero_head.bias, torch.zeros_like(zero_head.bias))
        names = {n for n, _ in zero.named_parameters() if n.startswith(('classifier.', 'head.'))}
        assert names  # everything else is the seed's init, unchanged
        for (n, v), w in zip(default.state_dict().items(), zero.state_dict().values()):
            assert torch.equal(v, w) or n in names, n
    two, heads = nn.Module(), (nn.Linear(3, 2), nn.Linear(3, 2))
    two.get_classifier = lambda: heads  # a tuple, as DeiT's head and distillation head
    init_classifier(two, 'zero')
    assert all(torch.count_nonzero(p) == 0 for h in heads for p in h.parameters())
    assert init_classifier(nn.Linear(2, 2), 'default').weight.abs().sum() > 0
    with pytest.raises(ValueError, match=r"head_init: 'xavier' is not allowed; choose from \['default', 'zero'\]"):
        TrainConfig(head_init='xavier')
    with pytest.raises(ValueError, match=r"head_init: 'one' is not allowed; choose from \['default', 'zero'\]"):
        init_classifier(nn.Linear(2, 2), 'one')
    with pytest.raises(ValueError, match="'zero' needs a classifier with weights.*Linear has none"):
        init_classifier(nn.Linear(2, 2), 'zero')


def test_data_config_and_loaders(acc, digits, teacher_dir):
    cfg = _cfg(digits, batch_size=16, validation_batch_size=50)
    supernet = build_model(cfg, acc, 10)
    dc = data_config_for(cfg, supernet)
    assert dc['input_size'] == (3, 16, 16) and dc['crop_pct'] == 1.0 and tuple(dc['mean']) == IMAGENET_DEFAULT_MEAN
    data = build_data(cfg, acc)
    train, val = build_loaders(cfg, data, supernet)
    x, y = next(iter(train))
    assert x.shape == (16, 3, 16, 16) and y.shape == (16,) and next(iter(val))[0].shape == (50, 3, 16, 16)
    assert len(train) == len(data.train) // 16 and len(data.train) % 16  # drop_last drops a partial batch
    student_cfg = _cfg(digits, model='mobilenetv2_050', teacher=teacher_dir, input_size=(3, 20, 20),
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    student = build_model(student_cfg, acc, 10)
    train, _ = build_loaders(student_cfg, build_data(student_cfg, acc), student)
    x, _ = next(iter(train))
    assert x.shape == (32, 3, 20, 20)
    assert student.pretrained_cfg['mean'] == (0.5, 0.5, 0.5)  # what the teacher's re-normalisation reads
    assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6  # (v - 0.5) / 0.25 for v in [0, 1]
    with pytest.raises(ValueError, match='fewer than one batch of 5000'):
        build_loaders(cfg.replace(batch_size=5000), build_data(cfg, acc), supernet)


def test_build_optimizer_scales_lr_and_spares_bn_and_bias(acc, digits):
    cfg = _cfg(digits, lr=None, lr_base=0.1, lr_base_size=256, weight_decay=1e-4)
    model = build_model(cfg, acc, 10)
    opt = build_optimizer(cfg, acc, model)
    assert type(opt).__name__ == 'SGD' and opt.param_groups[0]['nesterov']
    assert all(g['lr'] == pytest.approx(0.1 * 32 / 256) for g in opt.param_groups)
    decay = {id(p) for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.ndim > 1), name  # no decay on BN weights and biases
    with pytest.raises(ValueError, match=r"unknown optimizer 'sgdd'; did you mean \['sgd'"):
        build_optimizer(cfg.replace(opt='sgdd'), acc, model)


def test_build_scheduler_warms_up_and_decays(acc, digits):
    cfg = _cfg(digits, lr=0.1, warmup_lr=1e-3, warmup_epochs=1.0, epochs=3, min_lr=1e-4)
    opt = build_optimizer(cfg, acc, build_model(cfg, acc, 10))
    sched, epochs = build_scheduler(cfg, opt, steps_per_epoch=10)
    assert epochs == 3 and opt.param_groups[0]['lr'] == pytest.approx(1e-3)
    sched.step_update(num_updates=30)
    assert opt.param_groups[0]['lr'] == pytest.approx(1e-4)
    per_epoch, _ = build_scheduler(cfg.replace(sched_on_updates=False), opt, steps_per_epoch=10)
    per_epoch.step_update(num_updates=5)  # ignored: this schedule steps at epoch ends only
    assert opt.param_groups[0]['lr'] == pytest.approx(1e-3)


def test_build_task_follows_the_model(acc, digits, teacher_dir):
    cfg = _cfg(digits, smoothing=0.1)
    task = build_task(cfg, acc, build_model(cfg, acc, 10))
    assert isinstance(task, SandwichTask) and isinstance(task.criterion, LabelSmoothingCrossEntropy)
    assert task.num_subnets == 4 and task.seed == cfg.seed and task.teacher is None
    mixed = build_task(cfg.replace(mixup=0.2), acc, build_model(cfg, acc, 10))
    assert isinstance(mixed.criterion, SoftTargetCrossEntropy)
    kd_cfg = _cfg(digits, model='mobilenetv2_050', teacher=teacher_dir, kd_weight=0.5, kd_loss='kl')
    kd = build_task(kd_cfg, acc, build_model(kd_cfg, acc, 10))
    assert isinstance(kd, AlphaDistillationTask) and kd.distill_loss_weight == 0.5 and kd.loss_type == 'kl'
    assert not any(p.requires_grad for p in kd.teacher.parameters())
    assert all(p.requires_grad for p in kd.trainable_module.parameters())


def test_validation_archs_and_spaces(acc, digits, tmp_path):
    space = SearchSpace.from_dict(TINY_SPACE)
    arch = space.sample(random.Random(3))
    cfg = _cfg(digits, eval_archs=('max', arch.to_dict(), 'alphanet_min'))
    named = validation_archs(cfg, build_model(cfg, acc, 10))
    assert [n for n, _ in named] == ['max', 'min', 'max', 'arch1', 'min']
    assert named[0][1] == space.max_config() and named[1][1] == space.min_config() and named[3][1] == arch
    assert validation_archs(cfg, nn.Linear(2, 2)) == []
    with pytest.raises(ValueError, match=r"eval_archs: arch 'a3' is not in this search space"):
        validation_archs(TrainConfig(eval_archs=('a3',)), build_model(TrainConfig(), acc, 10))  # demo: too small
    paper = TrainConfig(space=None, eval_archs=('a0',))
    with torch.device('meta'):  # the paper's space, without allocating it
        named = validation_archs(paper, build_model(paper, acc, 10))
    assert named[2] == ('a0', ALPHANET_ARCHS['a0'])
    with pytest.raises(ValueError, match=r"space: not a WidthSpace, the space of model 'slimmable_mobilenetv2_100'"):
        build_model(_cfg(digits, model='slimmable_mobilenetv2_100'), acc, 10)  # the demo's AlphaNet space


# ---- train_one_epoch with fake loaders
class _Scheduler:
    def __init__(self):
        self.updates = []

    def step_update(self, num_updates):
        self.updates.append(num_updates)


def _batches(n, nan=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 3, 16, 16, generator=g)
        out.append((x * float('nan') if nan else x, torch.randint(0, 10, (8,), generator=g)))
    return out


def _supernet_task(acc, digits, **changes):
    cfg = _cfg(digits, **changes)
    model = build_model(cfg, acc, 10)
    model.max_drop_rate = 0.5  # dropout on the max subnet: the per-step RNG seeding matters
    return cfg, model, build_task(cfg, acc, model)


def _epoch(cfg, acc, task, batches, state, opt=None, **kw):
    opt = opt or torch.optim.SGD(task.trainable_module.parameters(), lr=0.1)
    return train_one_epoch(cfg, acc, task, batches, opt, kw.pop('sched', _Scheduler()), state, len(batches), **kw)


def test_train_one_epoch_counts_steps_keys_subnets_and_saves(acc, digits):
    cfg, model, task = _supernet_task(acc, digits, checkpoint_interval=2, log_interval=1)
    before = copy.deepcopy(model.state_dict())
    state, sched, saved = TrainState(), _Scheduler(), []
    result = _epoch(cfg, acc, task, _batches(5), state, sched=sched, save_checkpoint=saved.append)
    assert (result.steps, result.completed, state.step, state.batch_in_epoch) == (5, True, 5, 5)
    assert sched.updates == [1, 2, 3, 4, 5] and saved == [2, 4] and state.nonfinite_in_row == 0
    digest = ''
    for step in range(5):  # the subnets of each step come from (seed, step) only
        subnets = sandwich_subnets(model.space, cfg.num_subnets, cfg.seed, step)
        digest = hashlib.sha1((digest + repr(subnets)).encode()).hexdigest()
    assert state.subnet_digest == digest
    assert not torch.equal(before['conv_stem.weight'], model.conv_stem.weight) and result.train_loss > 0


def test_train_one_epoch_stops_at_max_train_steps(acc, digits):
    cfg, _, task = _supernet_task(acc, digits, max_train_steps=3)
    state = TrainState()
    result = _epoch(cfg, acc, task, _batches(5), state)
    assert (result.steps, result.completed, state.step, state.batch_in_epoch) == (3, False, 3, 3)


def test_train_one_epoch_split_at_any_step_gives_the_same_weights(acc, digits):
    cfg, model, task = _supernet_task(acc, digits)
    start = copy.deepcopy(model.state_dict())
    batches = _batches(4)
    _epoch(cfg, acc, task, batches, TrainState())
    whole = copy.deepcopy(model.state_dict())
    model.load_state_dict(start)
    state = TrainState()
    _epoch(cfg.replace(max_train_steps=2), acc, task, batches, state)  # stops after 2 steps, as a kill would
    _epoch(cfg, acc, task, batches[2:], state)  # resumes with the remaining batches
    for k, v in whole.items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_train_one_epoch_clips_gradients_by_value(acc, digits):
    cfg, model, task = _supernet_task(acc, digits, clip_grad=1e-6, clip_mode='value', weight_decay=0.0)
    start = [p.detach().clone() for p in model.parameters()]
    _epoch(cfg, acc, task, _batches(1), TrainState(), opt=torch.optim.SGD(model.parameters(), lr=1.0))
    eps = torch.finfo(torch.float32).eps  # |w - g| rounds to the float32 grid around w
    for p, s in zip(model.parameters(), start):
        assert ((p.detach() - s).abs() <= 1e-6 + eps * torch.maximum(p.detach().abs(), s.abs())).all()
    assert any(not torch.equal(p.detach(), s) for p, s in zip(model.parameters(), start))
    cfg, model, task = _supernet_task(acc, digits, weight_decay=0.0)  # unclipped: far larger steps
    start = [p.detach().clone() for p in model.parameters()]
    _epoch(cfg, acc, task, _batches(1), TrainState(), opt=torch.optim.SGD(model.parameters(), lr=1.0))
    assert max((p.detach() - s).abs().max().item() for p, s in zip(model.parameters(), start)) > 1e-3


def test_train_one_epoch_skips_then_stops_on_nonfinite_losses(acc, digits):
    cfg, model, task = _supernet_task(acc, digits, max_nonfinite=2)
    before = copy.deepcopy(model.state_dict())
    state = TrainState()
    with pytest.raises(NonFiniteLossError, match=r'stopped: 2 non-finite losses in a row \(last at step 1, epoch 0\)'):
        _epoch(cfg, acc, task, _batches(4, nan=True), state)
    assert state.nonfinite_in_row == 2 and state.step == 1
    for k, v in before.items():
        assert torch.equal(v, model.state_dict()[k]), k  # skipped steps change nothing


@pytest.mark.parametrize('channels_last', [False, True])
def test_train_one_epoch_feeds_the_memory_format(acc, digits, channels_last):
    cfg, model, task = _supernet_task(acc, digits, channels_last=channels_last)
    seen = []
    model.conv_stem.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    _epoch(cfg, acc, task, _batches(1), TrainState())
    assert len(seen) == cfg.num_subnets and all(s == channels_last for s in seen)


# ---- run(cfg) in-process
def test_run_supernet_writes_a_run_folder_that_round_trips(tmp_path, digits):
    cfg = _cfg(digits, batch_size=128, epochs=1, output=str(tmp_path), experiment='r', eval_archs=('min',))
    results = run(cfg)
    assert set(results) == {'max', 'min'} and all(0 <= r['top1'] <= 100 for r in results.values())
    folder = tmp_path / 'r'
    assert TrainConfig.from_yaml(folder / 'args.yaml') == cfg
    summary = yaml.safe_load((folder / 'summary.json').read_text())
    assert [row['step'] for row in summary] == [11]  # 1442 training images // 128
    assert summary[0]['max_top1'] == results['max']['top1']
    assert sorted(p.name for p in (folder / 'checkpoints').iterdir()) == ['index.json', 'step_00000011']
    weights = load_file(str(folder / 'final' / 'supernet' / 'model.safetensors'))
    assert weights['conv_stem.weight'].shape == (8, 3, 3, 3)


def test_run_kd_validates_the_student(tmp_path, digits, teacher_dir):
    cfg = _cfg(digits, model='mobilenetv2_050', teacher=teacher_dir, input_size=(3, 16, 16), batch_size=256,
               epochs=1, output=str(tmp_path), experiment='kd', val_teacher=True)
    results = run(cfg)
    assert set(results) == {'student'} and 0 <= results['student']['top1'] <= 100
    summary = yaml.safe_load((tmp_path / 'kd' / 'summary.json').read_text())
    assert summary[0]['epoch'] == -1 and set(summary[0]['teacher']) == {'top1', 'top5', 'loss'}
    assert Path(tmp_path / 'kd' / 'final' / 'config.json').exists()


def test_train_one_epoch_reads_the_device_once_per_step_outside_log_steps(acc, digits):
    # one read per step (are all losses finite?) and one where the loss is shown: no float(loss) per step, no
    # .item() in the sandwich or the KD loss
    cfg, _, task = _supernet_task(acc, digits, log_interval=1000)
    state = TrainState()
    opt = torch.optim.SGD(task.trainable_module.parameters(), lr=0.1)
    batches = _batches(5)
    with count_host_reads() as reads:
        train_one_epoch(cfg, acc, task, batches, opt, _Scheduler(), state, 1000)  # no log step in 5 batches
    assert len(reads) == 5 + 1, reads  # 5 finite checks + the epoch-end read of the summed loss
    assert state.loss_steps == 5 and math.isfinite(state.loss_sum)


def test_a_teacher_adds_no_host_read_per_step_and_its_nan_stops_the_epoch_naming_the_rows(acc, digits, teacher_dir):
    cfg, _, task = _supernet_task(acc, digits, log_interval=1000, teacher=teacher_dir)
    assert task.defer_teacher_check
    opt = torch.optim.SGD(task.trainable_module.parameters(), lr=0.1)
    with count_host_reads() as reads:
        train_one_epoch(cfg, acc, task, _batches(3), opt, _Scheduler(), TrainState(), 1000)
    assert len(reads) == 3 + 1, reads  # as without a teacher: its rows are read only on a non-finite loss

    model = task.teacher.model
    forward = model.forward

    def broken(x):  # rows 2 and 5 without a distribution
        out = forward(x).clone()
        out[[2, 5], 1] = float('nan')
        return out
    model.forward = broken
    state = TrainState()
    with pytest.raises(TeacherOutputError, match=r'unusable logits for 2 of 8 images in this batch \(rows 2, 5\)'):
        train_one_epoch(cfg, acc, task, _batches(2), opt, _Scheduler(), state, 1000)
    assert state.step == 0 and state.nonfinite_in_row == 0  # refused, not skipped as a bad step


def test_nonfinite_check_log_reads_the_device_only_where_the_loss_is_read_and_stops_on_nan(acc, digits):
    cfg, _, task = _supernet_task(acc, digits, log_interval=1000, nonfinite_check='log')
    opt = torch.optim.SGD(task.trainable_module.parameters(), lr=0.1)
    state = TrainState()
    with count_host_reads() as reads:
        train_one_epoch(cfg, acc, task, _batches(5), opt, _Scheduler(), state, 1000)
    assert len(reads) == 2, reads  # the epoch end only: the summed loss and the all-process non-finite count
    assert state.step == 5 and state.loss_steps == 5 and math.isfinite(state.loss_sum)

    batches = _batches(3)
    batches[1] = _batches(1, nan=True)[0]
    with pytest.raises(NonFiniteLossError, match=r'a non-finite loss between steps 5 and 7 \(epoch 0; '
                                                 r'nonfinite_check: log'):
        train_one_epoch(cfg, acc, task, batches, opt, _Scheduler(), state, 1000)
    assert state.loss_steps == 5  # the window with the NaN is not added to the epoch's loss
