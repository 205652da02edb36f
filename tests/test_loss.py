"""Alpha-divergence losses against float64 references written here from the formulas (DESIGN 1.7)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from timm_alphanet.loss import (AdaptiveAlphaDivergence, KDOutput, KLDivergence, adaptive_alpha_divergence,
                                 alpha_divergence, kl_divergence)
from timm_alphanet.testing.reference_loss import original_pq, reference_alpha_divergence as reference

ALPHAS = [-1.0, -0.5, 0.0, 5e-4, 0.3, 0.5, 1.0 - 5e-4, 1.0, 2.0]


def logits(batch=16, classes=50, seed=0, scale=3.0, dtype=torch.float32):
    """Teacher/student logits whose per-row sharpness differs, so both adaptive branches occur."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale
    sharpness = torch.linspace(0.2, 2.5, batch, dtype=torch.float64).unsqueeze(-1)
    student = teacher * sharpness + torch.randn(batch, classes, generator=g, dtype=torch.float64)
    return student.to(dtype), teacher.to(dtype)


def run(student, teacher, alpha, clip=5.0, temperature=1.0):
    """Our divergence, surrogate and gradient of the summed surrogate."""
    x = student.detach().clone().requires_grad_()
    divergence, surrogate = alpha_divergence(x, teacher, alpha, clip=clip, temperature=temperature)
    surrogate.sum().backward()
    return divergence, surrogate.detach(), x.grad


def extreme_logits(dtype=torch.float32):
    """±1e4 logits, a confident student, and a row where student == teacher."""
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(4, 10, generator=g).clamp(-3, 3) * 1e4  # within float16's range
    student = torch.randn(4, 10, generator=g).clamp(-3, 3) * 1e4
    student[1] = -1e4
    student[1, 0] = 1e4  # one-hot confident student
    student[2] = teacher[2]
    return student.to(dtype), teacher.to(dtype)


@pytest.mark.parametrize('alpha', ALPHAS)
def test_float32_matches_float64_reference(alpha):
    student, teacher = logits()
    divergence, surrogate, grad = run(student, teacher, alpha)
    ref_div, ref_sur, ref_grad = reference(student, teacher, alpha)
    assert divergence.dtype == surrogate.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(divergence.double(), ref_div, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(surrogate.double(), ref_sur, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('alpha', ALPHAS)
@pytest.mark.parametrize('clip', [5.0, 1.5, math.inf])
def test_float64_matches_reference_and_original(alpha, clip):
    student, teacher = logits(dtype=torch.float64)
    divergence, surrogate, grad = run(student, teacher, alpha, clip=clip)
    ref_div, ref_sur, ref_grad = reference(student, teacher, alpha, clip=clip)
    torch.testing.assert_close(divergence, ref_div, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(surrogate, ref_sur, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    # the original's p / q is finite for these logits in float64: values and gradient agree with it
    x = student.clone().requires_grad_()
    orig_div, orig_sur = original_pq(x, teacher, alpha, clip=clip)
    orig_sur.sum().backward()
    assert torch.isfinite(orig_div).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(divergence, orig_div.detach(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(surrogate, orig_sur.detach(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(grad, x.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('alpha', [-1.0, 0.0, 0.5, 1.0])
def test_float32_accurate_for_logits_with_a_large_common_offset(alpha):
    student, teacher = logits()
    student, teacher = student + 1e4, teacher - 3e3  # softmax ignores it; a naive log p - log q would not
    divergence, surrogate, grad = run(student, teacher, alpha)
    ref_div, ref_sur, ref_grad = reference(student, teacher, alpha)  # float64 from the same float32 values
    torch.testing.assert_close(divergence.double(), ref_div, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(surrogate.double(), ref_sur, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


def test_adaptive_picks_branch_with_larger_divergence():
    student, teacher = logits(batch=32)
    lo_div, lo_sur, lo_grad = reference(student, teacher, -1.0)
    hi_div, hi_sur, hi_grad = reference(student, teacher, 1.0)
    use_lo = lo_div > hi_div
    assert 0 < use_lo.sum() < len(use_lo), 'the test logits must exercise both branches'

    loss_fn = AdaptiveAlphaDivergence()
    x = student.clone().requires_grad_()
    out = loss_fn.forward_with_stats(x, teacher)
    loss = out.loss
    loss.backward()
    torch.testing.assert_close(loss.double(), torch.where(use_lo, lo_sur, hi_sur).mean(), rtol=1e-5, atol=1e-6)
    expected_grad = torch.where(use_lo.unsqueeze(-1), lo_grad, hi_grad) / len(use_lo)
    torch.testing.assert_close(x.grad.double(), expected_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.branch, (~use_lo).long())
    torch.testing.assert_close(out.divergence.double(), torch.maximum(lo_div, hi_div), rtol=1e-5, atol=1e-6)
    assert not out.divergence.requires_grad
    # the call, the method and the function agree; nothing is kept on the module
    torch.testing.assert_close(loss_fn(student, teacher), loss.detach())
    functional = adaptive_alpha_divergence(student, teacher)
    assert isinstance(functional, KDOutput)
    assert all(torch.equal(a, b.detach()) for a, b in zip(functional, out))
    assert not any(n.startswith('last_') for n in vars(loss_fn))


def test_adaptive_matches_original_module_in_float64():
    student, teacher = logits(batch=32, dtype=torch.float64)
    x, x_orig = student.clone().requires_grad_(), student.clone().requires_grad_()
    AdaptiveAlphaDivergence(clip=5.0)(x, teacher).backward()
    lo_div, lo_sur = original_pq(x_orig, teacher, -1.0)
    hi_div, hi_sur = original_pq(x_orig, teacher, 1.0)
    ind = torch.gt(lo_div, hi_div).double()  # AdaptiveLossSoft.forward, reduction 'mean'
    (ind * lo_sur + (1.0 - ind) * hi_sur).mean().backward()
    torch.testing.assert_close(x.grad, x_orig.grad, rtol=1e-9, atol=1e-12)


def test_zero_alpha_is_used_not_replaced_by_default():
    student, teacher = logits()
    loss_fn = AdaptiveAlphaDivergence(alpha_min=0.0, alpha_max=1.0)
    loss, divergence, _ = loss_fn.forward_with_stats(student, teacher)
    zero_div, zero_sur, _ = reference(student, teacher, 0.0)
    one_div, one_sur, _ = reference(student, teacher, 1.0)
    assert loss_fn.alpha_min == 0.0
    torch.testing.assert_close(divergence.double(), torch.maximum(zero_div, one_div), rtol=1e-5, atol=1e-6)
    expected = torch.where(zero_div > one_div, zero_sur, one_sur).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_ties_go_to_alpha_max():
    student, _ = logits()
    out = adaptive_alpha_divergence(student, student, alpha_min=-1.0, alpha_max=2.0)  # all divergences 0: ties
    assert (out.branch == 1).all()
    assert (out.divergence == 0).all()
    same = AdaptiveAlphaDivergence(alpha_min=0.5, alpha_max=0.5).forward_with_stats(*logits())
    assert (same.branch == 1).all()


@pytest.mark.parametrize('alpha', ALPHAS)
def test_zero_gradient_and_divergence_when_student_equals_teacher(alpha):
    student, _ = logits()
    divergence, _, grad = run(student, student.clone(), alpha)
    assert (divergence == 0).all()
    assert (grad == 0).all()


@pytest.mark.parametrize('limit', [0.0, 1.0])
@pytest.mark.parametrize('sign', [-1.0, 1.0])
def test_alpha_near_a_limit_converges_to_the_limit_branch(limit, sign):
    student, teacher = logits(scale=1.0, dtype=torch.float64)
    # no clipping: the branches clip differently (w vs w^alpha), the limits hold for the unclipped divergence
    at_limit = run(student, teacher, limit, clip=math.inf)

    def rel_err(offset):
        near = run(student, teacher, limit + sign * offset, clip=math.inf)
        return [((a - b).norm() / b.norm()).item() for a, b in zip(near, at_limit)]

    (div_far, sur_far, grad_far), (div_near, sur_near, grad_near) = rel_err(1e-2), rel_err(2e-3)
    assert div_far < 5e-2 and grad_far < 5e-2
    assert 0 < div_near < div_far / 3 and 0 < grad_near < grad_far / 3  # first order in alpha - limit
    if limit == 0.0:  # the original's surrogate value is continuous at 0 (its weight diverges at 1)
        assert sur_near < sur_far / 3


def test_branch_tolerance_is_1e3():
    student, teacher = logits(scale=6.0)  # confident: the clip matters, so the branches differ visibly
    at_one = run(student, teacher, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(run(student, teacher, 1.0 - 5e-4), at_one))
    assert not torch.allclose(run(student, teacher, 1.0 - 2e-3)[0], at_one[0], rtol=1e-2)
    at_zero = run(student, teacher, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(run(student, teacher, -5e-4), at_zero))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('alpha', [-1.0, 0.0, 0.5, 1.0, 2.0])
def test_finite_for_extreme_logits(alpha, dtype):
    student, teacher = extreme_logits(dtype)
    divergence, surrogate, grad = run(student, teacher, alpha)
    assert divergence.dtype == torch.float32 and grad.dtype == dtype
    assert torch.isfinite(divergence).all() and torch.isfinite(surrogate).all() and torch.isfinite(grad).all()
    assert divergence[2] == 0 and (grad[2] == 0).all()
    # same numbers as float32 on the (rounded) low-precision values
    torch.testing.assert_close(divergence, run(student.float(), teacher.float(), alpha)[0])
    # the original's direct p / q in float32 is NaN or inf here
    x = student.float().requires_grad_()
    orig_div, orig_sur = original_pq(x, teacher.float(), alpha)
    orig_sur.sum().backward()
    assert not (torch.isfinite(orig_div).all() and torch.isfinite(orig_sur).all() and torch.isfinite(x.grad).all())


def test_finite_for_extreme_logits_under_autocast():
    student, teacher = extreme_logits()
    head = torch.nn.Linear(10, 10)
    with torch.no_grad():
        head.weight.copy_(torch.eye(10))
        head.bias.zero_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = head(student)  # bf16 logits, as a model under autocast produces
        assert low.dtype == torch.bfloat16
        loss, divergence, _ = AdaptiveAlphaDivergence().forward_with_stats(low, teacher)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0
    assert torch.isfinite(divergence).all()
    torch.testing.assert_close(loss, AdaptiveAlphaDivergence()(low.detach().float(), teacher))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2 ** 16),
    alpha=st.sampled_from(ALPHAS) | st.floats(-3.0, 3.0),
    scale=st.floats(0.1, 8.0),
    classes=st.integers(2, 40),
    clip=st.floats(1.01, 20.0),
)
def test_property_matches_reference(seed, alpha, scale, classes, clip):
    student, teacher = logits(batch=4, classes=classes, seed=seed, scale=scale, dtype=torch.float64)
    divergence, surrogate, grad = run(student, teacher, alpha, clip=clip)
    ref_div, ref_sur, ref_grad = reference(student, teacher, alpha, clip=clip)
    torch.testing.assert_close(divergence, ref_div, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(surrogate, ref_sur, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-10)
    # a softmax gradient has zero sum over classes; shifting a row of logits changes nothing
    torch.testing.assert_close(grad.sum(-1), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    shifted = run(student + 7.0, teacher - 3.0, alpha, clip=clip)
    torch.testing.assert_close(shifted[0], divergence, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(shifted[2], grad, rtol=1e-9, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 16), scale=st.floats(0.1, 8.0))
def test_property_adaptive_divergence_is_the_larger_one(seed, scale):
    student, teacher = logits(batch=8, classes=20, seed=seed, scale=scale, dtype=torch.float64)
    loss, divergence, branch = AdaptiveAlphaDivergence(reduction='none').forward_with_stats(student, teacher)
    lo, hi = reference(student, teacher, -1.0), reference(student, teacher, 1.0)
    use_lo = lo[0] > hi[0]
    torch.testing.assert_close(divergence, torch.maximum(lo[0], hi[0]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss, torch.where(use_lo, lo[1], hi[1]), rtol=1e-9, atol=1e-12)
    assert torch.equal(branch, (~use_lo).long())


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_kl_divergence_matches_reference_and_timm(temperature):
    student, teacher = logits()
    x = student.clone().requires_grad_()
    loss_fn = KLDivergence(temperature=temperature)
    loss, divergence, branch = loss_fn.forward_with_stats(x, teacher)
    loss.backward()
    assert branch is None and not divergence.requires_grad
    torch.testing.assert_close(loss_fn(student, teacher), loss.detach())
    torch.testing.assert_close(kl_divergence(student, teacher, temperature).loss, loss.detach())
    ref_div, _, ref_grad = reference(student / temperature, teacher / temperature, 1.0)
    torch.testing.assert_close(divergence.double(), ref_div, rtol=1e-5, atol=1e-6)
    # timm LogitDistillationTask's KD term: batchmean KL at T, times T^2
    x_timm = student.clone().requires_grad_()
    timm_loss = F.kl_div(F.log_softmax(x_timm / temperature, -1), F.log_softmax(teacher / temperature, -1),
                         reduction='batchmean', log_target=True) * temperature ** 2
    timm_loss.backward()
    torch.testing.assert_close(loss, timm_loss)
    torch.testing.assert_close(x.grad, x_timm.grad)
    torch.testing.assert_close(x.grad.double(), ref_grad * temperature / len(student), rtol=1e-4, atol=1e-7)


def test_adaptive_at_alpha_one_has_kl_gradient():
    student, teacher = logits()
    x_kl, x_alpha = student.clone().requires_grad_(), student.clone().requires_grad_()
    KLDivergence()(x_kl, teacher).backward()
    AdaptiveAlphaDivergence(alpha_min=1.0, alpha_max=1.0)(x_alpha, teacher).backward()
    torch.testing.assert_close(x_alpha.grad, x_kl.grad, rtol=1e-5, atol=1e-8)


def test_temperature_scales_logits_and_loss_by_t_squared():
    student, teacher = logits()
    t = 3.0
    x, x_scaled = student.clone().requires_grad_(), student.clone().requires_grad_()
    with_t = AdaptiveAlphaDivergence(temperature=t).forward_with_stats(x, teacher)
    with_t.loss.backward()
    plain = AdaptiveAlphaDivergence().forward_with_stats(x_scaled / t, teacher / t)
    expected = plain.loss * t ** 2
    expected.backward()
    torch.testing.assert_close(with_t.loss, expected)
    torch.testing.assert_close(x.grad, x_scaled.grad)
    torch.testing.assert_close(with_t.divergence, plain.divergence)  # unscaled divergence at T
    torch.testing.assert_close(alpha_divergence(student, teacher, -1.0, temperature=t).divergence,
                               alpha_divergence(student / t, teacher / t, -1.0).divergence)


def test_reductions_and_batch_shape():
    student, teacher = logits(batch=6)
    per_sample = AdaptiveAlphaDivergence(reduction='none')(student, teacher)
    assert per_sample.shape == (6,)
    torch.testing.assert_close(AdaptiveAlphaDivergence(reduction='sum')(student, teacher), per_sample.sum())
    torch.testing.assert_close(AdaptiveAlphaDivergence()(student, teacher), per_sample.mean())
    torch.testing.assert_close(KLDivergence(reduction='sum')(student, teacher),
                               KLDivergence(reduction='none')(student, teacher).sum())
    out = alpha_divergence(student.view(2, 3, -1), teacher.view(2, 3, -1), -1.0)
    flat = alpha_divergence(student, teacher, -1.0)
    torch.testing.assert_close(out.divergence, flat.divergence.view(2, 3))
    torch.testing.assert_close(out.surrogate, flat.surrogate.view(2, 3))


def test_teacher_gets_no_gradient_and_divergence_none():
    student, teacher = logits()
    x, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    divergence, surrogate = alpha_divergence(x, t, -1.0)
    assert not divergence.requires_grad and surrogate.requires_grad
    (surrogate.sum() + AdaptiveAlphaDivergence()(x, t) + KLDivergence()(x, t)).backward()
    assert t.grad is None and x.grad is not None


@pytest.mark.parametrize('make, match', [
    (lambda: AdaptiveAlphaDivergence(reduction='avg'), r"\('mean', 'sum', 'none'\)"),
    (lambda: KLDivergence(reduction='batchmean'), r"\('mean', 'sum', 'none'\)"),
    (lambda: AdaptiveAlphaDivergence(clip=0.0), 'clip'),
    (lambda: AdaptiveAlphaDivergence(clip=float('nan')), 'clip'),
    (lambda: AdaptiveAlphaDivergence(temperature=-1.0), 'temperature'),
    (lambda: KLDivergence(temperature=0.0), 'temperature'),
    (lambda: AdaptiveAlphaDivergence(alpha_min=1.0, alpha_max=-1.0), 'alpha_min'),
    (lambda: AdaptiveAlphaDivergence(alpha_max=float('inf')), 'alpha_max'),
    (lambda: alpha_divergence(torch.zeros(2, 3), torch.zeros(2, 4), 0.5), 'same shape'),
    (lambda: alpha_divergence(torch.zeros(2, 3), torch.zeros(2, 3), 0.5, clip=-2.0), 'clip'),
])
def test_invalid_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---- masked classes (-inf logits): 0 * log 0 = 0

def masked_reference(student, teacher, alpha, clip=5.0):
    """float64 (divergence, surrogate, grad) from the formulas with explicit masks: a term whose weight (p for KL,
    q otherwise) is 0 is 0, and a class masked on both sides has w = 1. True infinities are kept."""
    s = student.detach().double().requires_grad_()
    log_q = F.log_softmax(s, dim=-1)
    log_p = F.log_softmax(teacher.detach().double(), dim=-1)
    q, p, log_qd = log_q.exp().detach(), log_p.exp(), log_q.detach()
    log_w = torch.where((p == 0) & (q == 0), 0.0, log_p - log_qd)
    if abs(alpha - 1.0) < 1e-3:
        divergence = torch.where(p > 0, p * log_w, 0.0).sum(-1)
        surrogate = -torch.where(p > 0, p * log_q, 0.0).sum(-1)  # -sum q w log q = -sum p log q
    else:
        if abs(alpha) < 1e-3:
            log_w = log_w.clamp(max=math.log(clip))
            term, weight = -log_w, log_w - 1.0
            scale = 1.0
        else:
            w_alpha = torch.exp(alpha * log_w).clamp(max=clip)
            term, weight = w_alpha - 1.0, w_alpha / alpha + 1.0 / (alpha * (alpha - 1.0))
            scale = 1.0 / (alpha * (alpha - 1.0))
        divergence = torch.where(q > 0, q * term, 0.0).sum(-1) * scale
        surrogate = -torch.where(q > 0, q * weight * log_q, 0.0).sum(-1)
    grad, = torch.autograd.grad(surrogate.sum(), s)
    return divergence.detach(), surrogate.detach(), grad


def masked_logits(dtype=torch.float32):
    """Rows with classes masked in the teacher only, in both, and (last row) nowhere."""
    student, teacher = logits(batch=8, classes=12, seed=5, scale=2.0, dtype=dtype)
    teacher[:6, :3] = -math.inf  # the teacher rules out classes 0-2 for most rows
    teacher[2:4, 5] = -math.inf
    student[2:4, 5] = -math.inf  # ... and student and teacher both rule out class 5 here
    return student, teacher


@pytest.mark.parametrize('alpha', [-1.0, -0.5, 0.3, 0.5, 1.0, 2.0])
def test_masked_teacher_matches_the_masked_float64_reference(alpha):
    student, teacher = masked_logits()
    divergence, surrogate, grad = run(student, teacher, alpha)
    ref_div, ref_sur, ref_grad = masked_reference(student, teacher, alpha)
    assert torch.isfinite(ref_div).all() and torch.isfinite(ref_grad).all()
    torch.testing.assert_close(divergence.double(), ref_div, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(surrogate.double(), ref_sur, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
    assert (grad[2:4, 5] == 0).all()  # a class masked on both sides gets no gradient


@pytest.mark.parametrize('alpha', [-1.0, 0.0, 0.5, 1.0])
def test_class_masked_on_both_sides_is_the_same_as_dropped(alpha):
    student, teacher = logits(batch=6, classes=10, seed=8, dtype=torch.float64)
    keep = [i for i in range(10) if i not in (2, 7)]
    masked_s, masked_t = student.clone(), teacher.clone()
    masked_s[:, [2, 7]] = masked_t[:, [2, 7]] = -math.inf
    divergence, surrogate, grad = run(masked_s, masked_t, alpha)
    dropped = run(student[:, keep], teacher[:, keep], alpha)
    torch.testing.assert_close(divergence, dropped[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(surrogate, dropped[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad[:, keep], dropped[2], rtol=1e-10, atol=1e-12)
    assert (grad[:, [2, 7]] == 0).all()


def test_adaptive_loss_with_a_masked_teacher_uses_both_branches():
    student, teacher = logits(batch=32, seed=6)
    teacher[:, :10] = -math.inf  # a teacher trained on 40 of the 50 classes
    lo, hi = masked_reference(student, teacher, -1.0), masked_reference(student, teacher, 1.0)
    use_lo = lo[0] > hi[0]
    assert 0 < use_lo.sum() < len(use_lo), 'the test logits must exercise both branches'
    x = student.clone().requires_grad_()
    loss, divergence, branch = adaptive_alpha_divergence(x, teacher)
    loss.backward()
    assert torch.equal(branch, (~use_lo).long())  # a NaN KL would send every sample to alpha_min
    torch.testing.assert_close(divergence.double(), torch.maximum(lo[0], hi[0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss.double(), torch.where(use_lo, lo[1], hi[1]).mean(), rtol=1e-5, atol=1e-6)
    expected_grad = torch.where(use_lo.unsqueeze(-1), lo[2], hi[2]) / len(use_lo)
    torch.testing.assert_close(x.grad.double(), expected_grad, rtol=1e-5, atol=1e-7)


def test_kl_module_with_a_masked_teacher_matches_the_reference():
    student, teacher = masked_logits()
    x = student.clone().requires_grad_()
    loss, divergence, _ = kl_divergence(x, teacher, reduction='sum')
    loss.backward()
    ref_div, _, ref_grad = masked_reference(student, teacher, 1.0)
    torch.testing.assert_close(divergence.double(), ref_div, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double()[torch.isfinite(student)], ref_grad[torch.isfinite(student)],
                               rtol=1e-5, atol=1e-6)


def test_infinite_divergences_are_huge_but_finite():
    """The documented decision: where the true divergence is infinite the result is ~1e30 x the mass, not NaN."""
    student, teacher = logits(batch=4, classes=8, seed=9, dtype=torch.float64)
    student[:, 0] = -math.inf  # the student rules out a class the teacher gives probability
    p0 = F.softmax(teacher, -1)[:, 0]
    divergence, surrogate, grad = run(student, teacher, 1.0)
    assert torch.isinf(masked_reference(student, teacher, 1.0)[0]).all()
    torch.testing.assert_close(divergence, p0 * 1e30, rtol=1e-6, atol=0)
    assert torch.isfinite(surrogate).all()
    # the KL gradient q - p is finite, and exact
    torch.testing.assert_close(grad, F.softmax(student, -1) - F.softmax(teacher, -1), rtol=1e-10, atol=1e-12)
    for alpha in (-1.0, 0.0, 0.5, 2.0):  # the clip bounds every other alpha: these match the reference
        ours, ref = run(student, teacher, alpha), masked_reference(student, teacher, alpha)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    student, teacher = teacher.clone(), student.clone()  # alpha = 0: the teacher rules out the student's mass
    q0 = F.softmax(student, -1)[:, 0]
    divergence, _, grad = run(student, teacher, 0.0)
    assert torch.isinf(masked_reference(student, teacher, 0.0)[0]).all()
    assert torch.isfinite(divergence).all() and (divergence >= q0 * 1e29).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize('bad', [math.nan, math.inf])
def test_nan_and_plus_inf_logits_still_give_nan(bad):
    for side in ('student', 'teacher'):
        s, t = logits(batch=4, classes=8)
        (s if side == 'student' else t)[1, 3] = bad
        out = adaptive_alpha_divergence(s, t, reduction='none')
        assert torch.isnan(out.loss[1]) and torch.isfinite(out.loss[[0, 2, 3]]).all()
        assert torch.isnan(kl_divergence(s, t, reduction='none').loss[1])


def test_numpy_numbers_are_accepted_as_arguments():
    np = pytest.importorskip('numpy')
    student, teacher = logits()
    loss_fn = AdaptiveAlphaDivergence(alpha_min=np.float32(-1.0), alpha_max=np.int64(1), clip=np.float16(5.0),
                                      temperature=np.int32(1))
    assert (loss_fn.alpha_min, loss_fn.alpha_max, loss_fn.clip, loss_fn.temperature) == (-1.0, 1.0, 5.0, 1.0)
    assert all(type(v) is float for v in (loss_fn.alpha_min, loss_fn.alpha_max, loss_fn.clip, loss_fn.temperature))
    torch.testing.assert_close(loss_fn(student, teacher), AdaptiveAlphaDivergence()(student, teacher))
    torch.testing.assert_close(alpha_divergence(student, teacher, np.float64(0.5)).divergence,
                               alpha_divergence(student, teacher, 0.5).divergence)
    with pytest.raises(ValueError, match='alpha must be a number'):
        alpha_divergence(student, teacher, np.bool_(True))
    with pytest.raises(ValueError, match='temperature'):
        KLDivergence(temperature='2')
