"""SandwichTask on a slimmable MobileNet: max / random / min widths, in-place KD (alpha or KL) or labels only,
checked against a hand-written loop over the same model."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy

from timm_alphanet.loss import AdaptiveAlphaDivergence, KLDivergence
from timm_alphanet.spaces import WidthConfig
from timm_alphanet.task import SandwichTask

NUM_CLASSES = 10
SPACE = {'widths': [0.35, 0.5, 0.75, 1.0], 'resolutions': [32, 48]}


def tiny_slimmable(seed: int = 0, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model('slimmable_mobilenetv2_100', space=SPACE, num_classes=NUM_CLASSES, **kwargs)


def batch(seed: int = 0, size: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 48, 48, generator=g), torch.randint(0, NUM_CLASSES, (size,), generator=g)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def hand_written_step(model, subnets, x, y, kd):
    """One sandwich step written out: max on labels (smoothing 0.1), the others on `kd(logits, max logits)` or,
    with kd None, on the labels too. Returns the per-subnet losses; gradients are left in `model`."""
    ce = LabelSmoothingCrossEntropy(0.1)
    losses = []
    for i, subnet in enumerate(subnets):
        model.set_subnet(subnet)
        r = subnet.resolution
        xi = x if r == x.shape[-1] else F.interpolate(x, size=(r, r), mode='bicubic', align_corners=False)
        logits = model(xi)
        if i == 0:
            teacher = logits.detach()
        loss = ce(logits, y) if i == 0 or kd is None else kd(logits, teacher)
        loss.backward()
        losses.append(loss.detach())
    return losses


@pytest.mark.parametrize('kd_loss, inplace_kd', [('alpha', True), ('kl', True), ('alpha', False)])
def test_a_step_equals_the_hand_written_sandwich(kd_loss, inplace_kd):
    model = tiny_slimmable().train()
    x, y = batch(1)
    task = SandwichTask(copy.deepcopy(model), num_subnets=4, seed=3, kd_loss=kd_loss, inplace_kd=inplace_kd,
                        verbose=False).train()
    result = task(x, y, step=5, backward=lambda loss: loss.backward())
    subnets = result['subnets']
    assert subnets[0] == WidthConfig(1.0, 48) and subnets[-1] == WidthConfig(0.35, 32)
    assert all(task.supernet.space.contains(s) for s in subnets)

    kd = None if not inplace_kd else AdaptiveAlphaDivergence() if kd_loss == 'alpha' else KLDivergence()
    ref = copy.deepcopy(model).train()
    expected = hand_written_step(ref, subnets, x, y, kd)
    names = ['loss_max', 'loss_random0', 'loss_random1', 'loss_min']
    torch.testing.assert_close([result[n] for n in names], expected)
    got, want = grads(task.supernet), grads(ref)
    assert got.keys() == want.keys() == {n for n, _ in model.named_parameters()}  # the max width uses every weight
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7, msg=n)
    assert ('kd_divergence' in result) == inplace_kd
    assert task.supernet.active_subnet == WidthConfig(1.0, 48)  # the active subnet is restored


def test_without_inplace_kd_the_small_widths_learn_from_labels_not_from_the_max():
    """The same step with and without in-place KD differs only in the non-max subnets' losses."""
    model = tiny_slimmable().train()
    x, y = batch(2)
    results = {}
    for inplace_kd in (True, False):
        task = SandwichTask(copy.deepcopy(model), num_subnets=2, inplace_kd=inplace_kd, verbose=False).train()
        results[inplace_kd] = task(x, y, step=0, backward=lambda loss: loss.backward())
    torch.testing.assert_close(results[True]['loss_max'], results[False]['loss_max'])
    assert not torch.allclose(results[True]['loss_min'], results[False]['loss_min'])
    with torch.no_grad():
        model.set_subnet(WidthConfig(0.35, 32))
        min_logits = model(F.interpolate(x, size=(32, 32), mode='bicubic', align_corners=False))
    torch.testing.assert_close(results[False]['loss_min'], LabelSmoothingCrossEntropy(0.1)(min_logits, y))


def test_three_training_steps_equal_three_hand_written_steps():
    model = tiny_slimmable().train()
    task = SandwichTask(copy.deepcopy(model), num_subnets=3, seed=0, verbose=False).train()
    ref = copy.deepcopy(model).train()
    opt_task = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.01, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    widths = set()
    for step in range(3):
        x, y = batch(10 + step)
        opt_task.zero_grad()
        opt_ref.zero_grad()
        subnets = task(x, y, step, backward=lambda loss: loss.backward())['subnets']
        hand_written_step(ref, subnets, x, y, AdaptiveAlphaDivergence())
        opt_task.step()
        opt_ref.step()
        widths.update(s.width for s in subnets)
    assert len(widths) >= 3  # max, min and at least one random width were trained
    trained, expected = task.supernet.state_dict(), ref.state_dict()
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in trained.items())
    for k, v in expected.items():
        torch.testing.assert_close(trained[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_inplace_kd_must_be_a_bool():
    with pytest.raises(ValueError, match="inplace_kd must be True or False, got 'no'"):
        SandwichTask(tiny_slimmable(), inplace_kd='no', verbose=False)
