"""Independent references for the alpha-divergence: float64 log-space formulas, and the original's p/q form.

Neither shares code with `timm_alphanet.loss`; tests compare against them, and the loss benchmark times the
original's form next to ours.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ['reference_alpha_divergence', 'original_pq', 'original_adaptive']


def reference_alpha_divergence(student: torch.Tensor, teacher: torch.Tensor, alpha: float,
                               clip: float = 5.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (divergence, surrogate, grad of the surrogate) in log space, straight from the paper's formulas."""
    s = student.detach().double().requires_grad_()
    log_q = F.log_softmax(s, dim=-1)
    log_p = F.log_softmax(teacher.detach().double(), dim=-1)
    q, log_w = log_q.exp().detach(), (log_p - log_q).detach()
    if abs(alpha - 1.0) < 1e-3:  # KL(p || q), weight w, no clip
        divergence = (log_p.exp() * log_w).sum(-1)
        weight = log_w.exp()
    elif abs(alpha) < 1e-3:  # KL(q || p), w clipped, weight log w - 1
        log_w = log_w.clamp(max=math.log(clip))
        divergence = -(q * log_w).sum(-1)
        weight = log_w - 1.0
    else:
        w_alpha = torch.exp(alpha * log_w).clamp(max=clip)
        divergence = (q * (w_alpha - 1.0)).sum(-1) / (alpha * (alpha - 1.0))
        weight = w_alpha / alpha + 1.0 / (alpha * (alpha - 1.0))
    surrogate = -(q * weight * log_q).sum(-1)
    grad, = torch.autograd.grad(surrogate.sum(), s)
    return divergence.detach(), surrogate.detach(), grad


def original_pq(student: torch.Tensor, teacher: torch.Tensor, alpha: float,
                clip: float = 5.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The original's direct p / q formulation (AlphaNet loss_ops.f_divergence): (divergence, surrogate) in the
    logits' dtype, with autograd through the surrogate."""
    q = F.softmax(student, dim=1).detach()
    p = F.softmax(teacher, dim=1).detach()
    log_q = F.log_softmax(student, dim=1)
    w = p / q
    if abs(alpha) < 1e-3:
        w = w.clamp(0, clip)
        f, f_base, rho = -w.log(), 0.0, w.log() - 1.0
    elif abs(alpha - 1.0) < 1e-3:
        f, f_base, rho = w * w.log(), 0.0, w
    else:
        w_alpha = w.pow(alpha).clamp(0, clip)
        f_base = 1.0 / alpha / (alpha - 1.0)
        f, rho = w_alpha / alpha / (alpha - 1.0), w_alpha / alpha + f_base
    return (q * (f - f_base)).sum(1), -(q * rho * log_q).sum(1)


def original_adaptive(student: torch.Tensor, teacher: torch.Tensor, alpha_min: float = -1.0,
                      alpha_max: float = 1.0, clip: float = 5.0, reduction: str = 'mean') -> torch.Tensor:
    """The original's AdaptiveLossSoft: two full p/q passes, autograd through both; ties go to alpha_max."""
    div_lo, sur_lo = original_pq(student, teacher, alpha_min, clip)
    div_hi, sur_hi = original_pq(student, teacher, alpha_max, clip)
    use_lo = torch.gt(div_lo, div_hi).to(sur_lo.dtype)
    loss = use_lo * sur_lo + (1.0 - use_lo) * sur_hi
    return loss.mean() if reduction == 'mean' else loss
