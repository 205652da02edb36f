"""AlphaDistillationTask: timm's LogitDistillationTask with the adaptive alpha-divergence, on tiny CPU models."""
import os
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # never download: every model here is pretrained=False or local

import pytest
import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.task import LogitDistillationTask

from timm_alphanet.task import AlphaDistillationTask
from timm_alphanet.loss import AdaptiveAlphaDivergence

NUM_CLASSES = 10


def tiny_model(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():  # seeded init without touching the global RNG state
        torch.manual_seed(seed)
        return timm.create_model('resnet10t', pretrained=False, num_classes=NUM_CLASSES)


def batch(seed: int = 0, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (size,), generator=g)


def test_three_steps_reduce_the_loss_and_log_the_parts():
    task = AlphaDistillationTask(tiny_model(0), tiny_model(1), criterion_kwargs=dict(smoothing=0.1), verbose=False)
    task.train()
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.01)
    x, y = batch()
    objectives = []
    for step in range(4):  # 3 updates, then one more forward to see their effect
        result = task(x, y)
        for key in ('loss', 'task_loss', 'kd_loss', 'kd_divergence', 'kd_alpha_max_frac'):
            assert result[key].ndim == 0 and torch.isfinite(result[key]), key
        torch.testing.assert_close(result['loss'], result['task_loss'] + result['kd_loss'])
        assert result['output'].shape == (8, NUM_CLASSES)
        assert result['kd_divergence'] >= 0  # the larger of D_-1 and KL, and KL >= 0
        assert 0.0 <= result['kd_alpha_max_frac'] <= 1.0
        assert not result['kd_divergence'].requires_grad and not result['kd_alpha_max_frac'].requires_grad
        # 'kd_loss' is the surrogate (its value may even be negative); what descends is CE + divergence
        objectives.append((result['task_loss'] + result['kd_divergence']).item())
        if step < 3:
            optimizer.zero_grad()
            result['loss'].backward()
            optimizer.step()
    assert objectives[-1] < objectives[0]


def _as_image_stats(model: torch.nn.Module):
    cfg = model.pretrained_cfg
    return torch.tensor(cfg['mean']).view(1, 3, 1, 1), torch.tensor(cfg['std']).view(1, 3, 1, 1)


def test_teacher_module_is_frozen_and_kd_term_matches_the_loss():
    student, teacher = tiny_model(0), tiny_model(1)
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, 'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25)}
    task = AlphaDistillationTask(
        student, teacher, kd_loss='alpha', alpha_min=-0.5, alpha_max=1.0, clip=3.0, temperature=2.0,
        distill_loss_weight=0.7, task_loss_weight=0.2, verbose=False)
    task.train()
    assert task.teacher.model is teacher and not teacher.training  # inherited: teacher stays in eval mode
    x, y = batch()
    result = task(x, y)
    result['loss'].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())

    (mean_s, std_s), (mean_t, std_t) = _as_image_stats(student), _as_image_stats(teacher)
    assert not torch.equal(mean_s, mean_t)
    with torch.no_grad():
        expected_kd = AdaptiveAlphaDivergence(-0.5, 1.0, clip=3.0, temperature=2.0).forward_with_stats(
            result['output'], teacher((x * std_s + mean_s - mean_t) / std_t))  # timm's fix-up
        kd = expected_kd.loss
        task_loss = torch.nn.functional.cross_entropy(result['output'], y)
    torch.testing.assert_close(result['kd_loss'], kd)
    torch.testing.assert_close(result['task_loss'], task_loss)
    torch.testing.assert_close(result['loss'], 0.2 * task_loss + 0.7 * kd)
    torch.testing.assert_close(result['kd_alpha_max_frac'], expected_kd.branch.float().mean())
    torch.testing.assert_close(result['kd_divergence'], expected_kd.divergence.mean())


def test_kl_option_matches_timm_logit_distillation():
    student, teacher = tiny_model(0), tiny_model(1)
    ours = AlphaDistillationTask(student, teacher, kd_loss='kl', temperature=2.0, task_loss_weight=0.3,
                                 verbose=False).eval()
    timm_task = LogitDistillationTask(student, teacher, temperature=2.0, task_loss_weight=0.3, verbose=False).eval()
    x, y = batch()
    result, expected = ours(x, y), timm_task(x, y)
    assert 'kd_alpha_max_frac' not in result
    for key in ('loss', 'task_loss', 'kd_loss', 'output'):
        torch.testing.assert_close(result[key], expected[key], msg=key)
    torch.testing.assert_close(result['kd_divergence'] * 4.0, result['kd_loss'])  # T^2 = 4, mean KL


def test_label_smoothing_comes_from_timm_loss():
    task = AlphaDistillationTask(tiny_model(0), tiny_model(1), criterion_kwargs=dict(smoothing=0.1),
                                 verbose=False).eval()
    x, y = batch()
    result = task(x, y)
    torch.testing.assert_close(result['task_loss'], LabelSmoothingCrossEntropy(0.1)(result['output'], y))


def test_teacher_by_name_loads_a_local_weights_file(tmp_path):
    source = tiny_model(1)
    path = tmp_path / 'teacher.pth'
    torch.save(source.state_dict(), path)
    task = AlphaDistillationTask(tiny_model(0), 'resnet10t', teacher_pretrained_path=str(path), verbose=False)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(task.teacher.model.state_dict()[name], value, msg=name)
    x, _ = batch()
    torch.testing.assert_close(task.teacher_logits(x), source.eval()(x))


def test_checkpoint_and_ema_state_hold_the_student_only():
    student = tiny_model(0)
    task = AlphaDistillationTask(student, tiny_model(1), verbose=False)
    task.setup_ema(decay=0.5)
    x, y = batch()
    task(x, y)['loss'].backward()
    task.update_ema(step=1)
    state = task.get_checkpoint_state()
    assert set(state['state_dict']) == set(student.state_dict())
    assert set(task.get_checkpoint_state(ema=True)['state_dict_ema']) == set(student.state_dict())


def test_invalid_kd_loss_names_the_choices():
    with pytest.raises(ValueError, match=r"\('alpha', 'kl'\)"):
        AlphaDistillationTask(tiny_model(0), tiny_model(1), kd_loss='mse', verbose=False)
    with pytest.raises(ValueError, match='clip'):
        AlphaDistillationTask(tiny_model(0), tiny_model(1), clip=0.0, verbose=False)


def test_both_tasks_share_one_teacher_helper():
    """Same teacher, same batch: both tasks re-normalise alike and give the same frozen teacher's logits."""
    from timm_alphanet.task import SandwichTask
    from timm_alphanet.task._teacher import create_teacher
    teacher = tiny_model(1)
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, 'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25)}
    supernet = timm.create_model('alphanet_supernet', num_classes=NUM_CLASSES, space={
        'resolutions': [32], 'first_conv': {'c': [8]}, 'mb1': {'c': [8], 'd': [1], 'k': [3], 't': [1]},
        'last_conv': {'c': [16]}})
    distill = AlphaDistillationTask(tiny_model(0), teacher, verbose=False)
    sandwich = SandwichTask(supernet, teacher=teacher, verbose=False)
    assert distill.teacher.model is teacher and sandwich.teacher.model is teacher
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x, _ = batch()
    mean_s, std_s = _as_image_stats(tiny_model(0))
    with torch.no_grad():
        expected = teacher((x * std_s + mean_s - 0.5) / 0.25)
    torch.testing.assert_close(distill.teacher_logits(x), expected)
    torch.testing.assert_close(sandwich.teacher_logits(x), expected)
    assert not distill.teacher_logits(x.requires_grad_()).requires_grad
    wrapped = create_teacher(distill.teacher, tiny_model(0))
    assert wrapped is distill.teacher  # a DistillationTeacher is used as is


def tiny_distilled_deit(seed: int) -> torch.nn.Module:
    """timm's DeiT with a distillation token and head, shrunk to 32 px (no dropout: train and eval forwards agree)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model('deit_tiny_distilled_patch16_224', pretrained=False, num_classes=NUM_CLASSES,
                                 img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def test_deit_distillation_head_learns_from_the_teacher_and_the_class_head_from_labels():
    student, teacher = tiny_distilled_deit(0), tiny_model(1)
    task = AlphaDistillationTask(student, teacher, kd_loss='alpha', distill_loss_weight=0.5, task_loss_weight=0.5,
                                 verbose=False)
    assert task.distillation_head and student.distilled_training
    task.train()
    x, y = batch()
    result = task(x, y)
    with torch.no_grad():
        class_logits, distill_logits = student(x)  # the two heads, as DeiT trains them
        mean_s, std_s = _as_image_stats(student)
        mean_t, std_t = _as_image_stats(teacher)
        teacher_out = teacher((x * std_s + mean_s - mean_t) / std_t)
        expected_kd = AdaptiveAlphaDivergence().forward_with_stats(distill_logits, teacher_out)
        expected_task = torch.nn.functional.cross_entropy(class_logits, y)
    assert not torch.allclose(class_logits, distill_logits)  # two different heads, or the test proves nothing
    torch.testing.assert_close(result['task_loss'], expected_task)
    torch.testing.assert_close(result['kd_loss'], expected_kd.loss)
    torch.testing.assert_close(result['kd_divergence'], expected_kd.divergence.mean())
    torch.testing.assert_close(result['loss'], 0.5 * expected_task + 0.5 * expected_kd.loss)
    torch.testing.assert_close(result['output'], (class_logits + distill_logits) / 2)

    task.eval()  # DeiT's prediction: the model averages its heads itself
    torch.testing.assert_close(task(x, y)['output'], (class_logits + distill_logits) / 2)


@pytest.mark.parametrize('kd_loss', ['alpha', 'kl'])
def test_deit_heads_get_gradients_only_from_their_own_loss(kd_loss):
    x, y = batch()
    grads = {}
    for name, weights in (('labels only', dict(task_loss_weight=1.0, distill_loss_weight=0.0)),
                          ('teacher only', dict(task_loss_weight=0.0, distill_loss_weight=1.0))):
        student = tiny_distilled_deit(0)
        task = AlphaDistillationTask(student, tiny_model(1), kd_loss=kd_loss, verbose=False, **weights).train()
        task(x, y)['loss'].backward()
        grads[name] = (student.head.weight.grad.abs().sum().item(), student.head_dist.weight.grad.abs().sum().item())
    assert grads['labels only'][0] > 0 and grads['labels only'][1] == 0
    assert grads['teacher only'][0] == 0 and grads['teacher only'][1] > 0


RECIPES = Path(__file__).resolve().parent.parent / 'train_configs'


@pytest.mark.parametrize('name, student', [('kd_mobilenetv2_050_in1k.yaml', 'mobilenetv2_050'),
                                           ('kd_mobilenetv2_035_in1k.yaml', 'mobilenetv2_035')])
def test_mobilenetv2_kd_recipes_parse(name, student):
    from timm_alphanet.cli.train import parse_args
    from timm_alphanet.train import learning_rate, model_is_supernet
    cfg = parse_args(['-c', str(RECIPES / name)])
    assert (cfg.model, cfg.teacher, cfg.kd_loss) == (student, 'mobilenetv2_100.ra_in1k', 'alpha')
    assert (cfg.alpha_min, cfg.alpha_max, cfg.alpha_clip, cfg.kd_weight, cfg.task_weight) == (-1.0, 1.0, 5.0, 1.0, 1.0)
    assert not model_is_supernet(cfg)  # teacher KD, not sandwich training
    assert learning_rate(cfg, 8) == pytest.approx(0.1 * 128 * 8 / 256)
    assert parse_args(['-c', str(RECIPES / name), '--kd-loss', 'kl']).kd_loss == 'kl'  # the comparison it names


def test_deit_tiny_recipe_parses_with_deits_settings_and_a_distillation_head():
    from timm_alphanet.cli.train import parse_args
    from timm_alphanet.train import learning_rate, model_is_supernet
    cfg = parse_args(['-c', str(RECIPES / 'kd_deit_tiny_in1k.yaml')])
    assert (cfg.model, cfg.teacher) == ('deit_tiny_distilled_patch16_224', 'regnety_160.deit_in1k')
    assert (cfg.kd_weight, cfg.task_weight, cfg.kd_temperature, cfg.kd_loss) == (0.5, 0.5, 1.0, 'alpha')
    assert (cfg.opt, cfg.weight_decay, cfg.epochs, cfg.warmup_epochs, cfg.smoothing, cfg.drop_path) == \
        ('adamw', 0.05, 300, 5.0, 0.1, 0.1)
    assert (cfg.mixup, cfg.cutmix, cfg.reprob, cfg.aa) == (0.8, 1.0, 0.25, 'rand-m9-mstd0.5-inc1')
    assert learning_rate(cfg, 8) == pytest.approx(1e-3)  # DeiT: 5e-4 x 1024 / 512
    assert not model_is_supernet(cfg)
    with torch.device('meta'):
        assert hasattr(timm.create_model(cfg.model), 'set_distilled_training')  # the task takes the two-head path
