"""Alpha-divergence distillation losses (AlphaNet, arXiv:2102.07954).

``D_alpha(p || q) = E_q[w^alpha - 1] / (alpha (alpha - 1))`` with ``p`` the teacher's softmax, ``q`` the
student's and ``w = p / q``. Its limits are KL(p || q) at alpha -> 1 and KL(q || p) at alpha -> 0. The
gradient is replaced by ``-1/alpha * E_q[clip(w^alpha) grad log q]``. We follow the original code
(AlphaNet ``loss_ops.f_divergence``) branch for branch, but in log space and in float32 or wider, so the
result equals the original's wherever the original is finite and stays finite for any finite logits.

Each branch yields a per-sample *divergence* (for logging and for the adaptive choice; it carries no
gradient) and a per-sample *surrogate*: the value the original returns, whose gradient w.r.t. the
student logits is the clipped gradient above. Backpropagate the surrogate, log the divergence.

Masked classes: a logit of -inf (e.g. a class masked out of the teacher) follows ``0 * log 0 = 0`` (xlogy): a
class with zero probability on the weighting side contributes nothing, so masked teachers, and classes masked on
both sides, give the same numbers as dropping those classes. A -inf logit is taken to lie `MASKED_LOGIT` (1e30)
below its row's largest logit, which keeps every product finite. Where the true divergence is infinite -- KL(p||q)
(alpha = 1) when the student masks a class the teacher gives probability, KL(q||p) (alpha = 0) when the teacher
masks a class the student gives probability -- the result is therefore huge (about 1e30 times that probability)
but finite. The alpha = 1 gradient stays exactly ``q - p``; the alpha = 0 one is huge, so do not pair alpha = 0
with masked teachers. Other alphas are finite whatever is masked (the clip bounds the importance weight). Every
row needs a finite logit on each side; NaN or +inf logits give NaN (a diverging student's NaN is for the training
loop to skip; the tasks refuse such logits from a frozen teacher, naming the rows: `task.check_teacher_logits`).

The functions return the loss together with its per-sample statistics (`KDOutput`); the modules' call returns
only the loss, and their `forward_with_stats` the whole `KDOutput`.
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from .utils import as_float

__all__ = ['AlphaDivergenceOutput', 'KDOutput', 'alpha_divergence', 'adaptive_alpha_divergence', 'kl_divergence',
           'AdaptiveAlphaDivergence', 'KLDivergence', 'KD_LOSSES', 'MASKED_LOGIT', 'create_kd_loss']

_REDUCTIONS = ('mean', 'sum', 'none')
KD_LOSSES = ('alpha', 'kl')  # names for `create_kd_loss` (and train.py's --kd-loss)
MASKED_LOGIT = 1e30  # a -inf logit counts as this far below its row's max: 0 * log 0 = 0 without NaN
_BRANCH_TOL = 1e-3  # the original treats alpha within 1e-3 of 0 or 1 as that limit


class AlphaDivergenceOutput(NamedTuple):
    """Per-sample results of `alpha_divergence`, shaped like the logits without the class dim."""
    divergence: torch.Tensor  # D_alpha(p || q) at the given clip; no gradient
    surrogate: torch.Tensor  # the original's returned value; its gradient is the clipped gradient


class KDOutput(NamedTuple):
    """What a KD loss returns: the loss to backpropagate and per-sample statistics to log (detached)."""
    loss: torch.Tensor  # reduced as asked and scaled by temperature ** 2
    divergence: torch.Tensor  # per sample, unscaled: the divergence whose surrogate `loss` holds
    branch: Optional[torch.Tensor]  # per sample (int64), adaptive loss only: 1 = alpha_max, 0 = alpha_min


def alpha_divergence(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        alpha: float,
        clip: float = 5.0,
        temperature: float = 1.0,
) -> AlphaDivergenceOutput:
    """Per-sample alpha-divergence D_alpha(teacher || student) and its gradient surrogate.

    Semantics of the original, per branch (``w = p / q``, ``p``/``q`` the softmaxes at `temperature`):

    - ``|alpha - 1| < 1e-3``: divergence ``sum p log(p / q)`` (KL), no clipping; surrogate
      ``-sum p log q``, whose gradient is the KL gradient.
    - ``|alpha| < 1e-3``: ``w`` clipped to at most `clip`; divergence ``-sum q log w``; surrogate
      ``-sum q (log w - 1) log q``.
    - otherwise: ``w^alpha`` clipped to at most `clip`; divergence ``sum q (w^alpha - 1) / (alpha (alpha - 1))``;
      surrogate ``-sum q (w^alpha / alpha + 1 / (alpha (alpha - 1))) log q``.

    In every surrogate ``q`` and ``w`` are constants, so only ``log q`` carries gradient (the constant added to
    the weight leaves the gradient unchanged, since ``sum q grad log q = 0``, but it is part of the value the
    original returns). The teacher never receives a gradient. -inf logits are masked classes (module docstring).

    Args:
        student_logits: Student logits, classes in the last dim. Any float dtype; computed in float32 or wider,
            also under autocast.
        teacher_logits: Teacher logits, same shape.
        alpha: Divergence order; 0.0 and 1.0 select the KL(q || p) and KL(p || q) limits.
        clip: Upper bound on the importance weight ``w^alpha`` (``w`` at alpha = 0); must be > 0. It may be inf
            (no clipping), but then results are finite only where the unclipped ``w^alpha`` is.
        temperature: Both logits are divided by it before the softmax (no T^2 factor here).

    Returns:
        AlphaDivergenceOutput(divergence, surrogate), per sample, in float32 (float64 for float64 input).
    """
    alpha = _check_alpha(alpha, 'alpha')
    clip, temperature = _check_clip(clip), _check_temperature(temperature)
    divergences, surrogate, _ = _alpha_surrogate(student_logits, teacher_logits, (alpha,), clip, temperature)
    return AlphaDivergenceOutput(divergences[0], surrogate)


def adaptive_alpha_divergence(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        alpha_min: float = -1.0,
        alpha_max: float = 1.0,
        clip: float = 5.0,
        temperature: float = 1.0,
        reduction: str = 'mean',
) -> KDOutput:
    """Adaptive alpha-divergence: per sample, the surrogate of whichever of D_alpha_min, D_alpha_max is larger.

    Ties go to `alpha_max`, as in the original. The loss is the reduced surrogate, scaled by ``temperature ** 2``
    like Hinton KD and timm's ``LogitDistillationTask`` (so gradient magnitudes stay comparable across
    temperatures; the paper's T = 1 leaves it unchanged).

    Args:
        student_logits: Student logits, classes in the last dim (see `alpha_divergence`).
        teacher_logits: Teacher logits, same shape; detached.
        alpha_min: Lower divergence order (paper: -1).
        alpha_max: Upper divergence order (paper: +1); must be >= alpha_min.
        clip: Upper bound on the importance weight ``w^alpha`` (paper: 5); must be > 0.
        temperature: Softmax temperature for both logits; must be > 0.
        reduction: 'mean', 'sum' or 'none' over samples.

    Returns:
        KDOutput(loss, divergence, branch): `divergence` is the larger of the two per-sample divergences
        (unscaled, at the temperature) and `branch` the chosen one (1: alpha_max, 0: alpha_min), both detached.
    """
    alpha_min, alpha_max = _check_alpha_range(alpha_min, alpha_max)
    return _adaptive(student_logits, teacher_logits, alpha_min, alpha_max, _check_clip(clip),
                     _check_temperature(temperature), _check_reduction(reduction))


def kl_divergence(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        temperature: float = 1.0,
        reduction: str = 'mean',
) -> KDOutput:
    """KL(teacher || student), the standard KD loss (the value and gradient of timm's ``LogitDistillationTask``).

    In float32 or wider, also under autocast, scaled by ``temperature ** 2``; -inf logits are masked classes
    (module docstring).

    Returns:
        KDOutput(loss, divergence, None): `divergence` is the per-sample KL (unscaled, at the temperature).
    """
    return _kl(student_logits, teacher_logits, _check_temperature(temperature), _check_reduction(reduction))


class AdaptiveAlphaDivergence(nn.Module):
    """The adaptive alpha-divergence (`adaptive_alpha_divergence`) as a loss module.

    Calling it returns the reduced surrogate to backpropagate; `forward_with_stats` returns the whole `KDOutput`
    (with the per-sample divergence and chosen branch to log).

    Args:
        alpha_min: Lower divergence order (paper: -1).
        alpha_max: Upper divergence order (paper: +1); must be >= alpha_min.
        clip: Upper bound on the importance weight ``w^alpha`` (paper: 5); must be > 0.
        temperature: Softmax temperature for both logits; must be > 0.
        reduction: 'mean', 'sum' or 'none' over samples.
    """

    def __init__(
            self,
            alpha_min: float = -1.0,
            alpha_max: float = 1.0,
            clip: float = 5.0,
            temperature: float = 1.0,
            reduction: str = 'mean',
    ):
        super().__init__()
        self.alpha_min, self.alpha_max = _check_alpha_range(alpha_min, alpha_max)
        self.clip = _check_clip(clip)
        self.temperature = _check_temperature(temperature)
        self.reduction = _check_reduction(reduction)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Return the reduced surrogate loss for student logits distilled from (detached) teacher logits."""
        return self.forward_with_stats(student_logits, teacher_logits).loss

    def forward_with_stats(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> KDOutput:
        """The loss with its per-sample divergence and branch (see `adaptive_alpha_divergence`)."""
        return _adaptive(student_logits, teacher_logits, self.alpha_min, self.alpha_max, self.clip, self.temperature,
                         self.reduction)

    def extra_repr(self) -> str:
        return (f'alpha_min={self.alpha_min}, alpha_max={self.alpha_max}, clip={self.clip}, '
                f'temperature={self.temperature}, reduction={self.reduction!r}')


class KLDivergence(nn.Module):
    """KL(teacher || student) baseline (`kl_divergence`) with the interface of `AdaptiveAlphaDivergence`.

    Args:
        temperature: Softmax temperature for both logits; must be > 0.
        reduction: 'mean', 'sum' or 'none' over samples.
    """

    def __init__(self, temperature: float = 1.0, reduction: str = 'mean'):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.reduction = _check_reduction(reduction)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Return the reduced KL(p || q) for student logits distilled from (detached) teacher logits."""
        return self.forward_with_stats(student_logits, teacher_logits).loss

    def forward_with_stats(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> KDOutput:
        """The loss with its per-sample KL (see `kl_divergence`)."""
        return _kl(student_logits, teacher_logits, self.temperature, self.reduction)

    def extra_repr(self) -> str:
        return f'temperature={self.temperature}, reduction={self.reduction!r}'


def create_kd_loss(name: str, alpha_min: float = -1.0, alpha_max: float = 1.0, clip: float = 5.0,
                   temperature: float = 1.0) -> nn.Module:
    """The KD criterion `name`: 'alpha' (`AdaptiveAlphaDivergence`) or 'kl' (`KLDivergence`; the alpha arguments
    are then unused)."""
    if name == 'alpha':
        return AdaptiveAlphaDivergence(alpha_min, alpha_max, clip=clip, temperature=temperature)
    if name == 'kl':
        return KLDivergence(temperature=temperature)
    raise ValueError(f'unknown KD loss {name!r:.40}; allowed: {list(KD_LOSSES)}')


def _adaptive(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha_min: float, alpha_max: float,
              clip: float, temperature: float, reduction: str) -> KDOutput:
    (div_min, div_max), surrogate, use_max = _alpha_surrogate(
        student_logits, teacher_logits, (alpha_min, alpha_max), clip, temperature)
    return KDOutput(_scale_t2(_reduce(surrogate, reduction), temperature), torch.maximum(div_min, div_max),
                    use_max.long())


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, reduction: str) -> KDOutput:
    # the alpha = 1 branch: its divergence is KL(p || q) and its surrogate, cross-entropy -sum p log q, differs from
    # it by the teacher's entropy, a constant; so KL's value with the surrogate's gradient is exactly KL's autograd
    # (F.kl_div's) value and gradient, with the masking of every other branch and no graph through the softmaxes
    (kl,), surrogate, _ = _alpha_surrogate(student_logits, teacher_logits, (1.0,), math.inf, temperature)
    kl_with_grad = surrogate + (kl - surrogate).detach()
    return KDOutput(_scale_t2(_reduce(kl_with_grad, reduction), temperature), kl, None)


def _alpha_surrogate(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        alphas: Tuple[float, ...],
        clip: float,
        temperature: float,
) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor, Optional[torch.Tensor]]:
    """Divergences for one or two alphas, the surrogate of the chosen branch and, for two, `use_max` (bool).

    With two alphas (alpha_min, alpha_max), a sample uses alpha_max unless its alpha_min divergence is strictly
    larger (ties go to alpha_max).
    """
    _check_logits(student_logits, teacher_logits)
    batch_shape, num_classes = student_logits.shape[:-1], student_logits.shape[-1]
    with _no_autocast(student_logits):
        *divs, surrogate, use_max = _AlphaSurrogateFn.apply(
            student_logits.reshape(-1, num_classes), teacher_logits.detach().reshape(-1, num_classes),
            alphas, clip, temperature)
    if use_max is not None:
        use_max = use_max.reshape(batch_shape)
    return tuple(d.reshape(batch_shape) for d in divs), surrogate.reshape(batch_shape), use_max


class _AlphaSurrogateFn(torch.autograd.Function):
    """All branches from one softmax per side, with the surrogate's gradient in closed form.

    For a surrogate ``-sum_i q_i rho_i log q_i`` with q and rho constant, d/dz_j = ``q_j (E_q[rho] - rho_j)``.
    Computing this directly (no autograd graph through softmax, weights and both branches), with per-row
    constants kept out of the (batch, classes) passes, is what keeps the adaptive loss about as cheap as plain
    KL. A per-row constant added to rho leaves the gradient unchanged; each branch picks the form for which
    identical logits give an exactly zero gradient.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, alphas: Tuple[float, ...], clip: float,
                temperature: float):
        ctx.set_materialize_grads(False)  # the divergences get no gradient: skip zero-filling theirs
        dtype = _compute_dtype(student, teacher)
        z_s, z_t = _scaled(student, temperature, dtype), _scaled(teacher, temperature, dtype)
        q, max_s, log_q_max = _softmax_stats(z_s)
        p, max_t, log_p_max = _softmax_stats(z_t)
        # log q = log_q_c + log q_max and log(p / q) = log_w_c + shift, with shift = log p_max - log q_max small.
        # Centred on each row's max first, like log_softmax: accurate for large logits and for nearly equal p and
        # q (incl. their confident classes), exactly 0 for equal logits, finite for any finite logits. The floor
        # makes a masked (-inf) class finite, so its zero probability zeroes its terms instead of making NaN
        log_q_c = torch.sub(z_s, max_s).clamp_(min=-MASKED_LOGIT)
        log_w_c = torch.sub(z_t, max_t).clamp_(min=-MASKED_LOGIT).sub_(log_q_c)
        shift = log_p_max - log_q_max
        scratch = torch.empty_like(q)  # one (batch, classes) buffer for every row-wise dot product
        branches = [_branch(a, q, p, log_w_c, shift, clip, scratch) for a in alphas]
        if len(branches) == 1:
            (div, q_rho, row_sum, scale, offset), = branches
            divs, use_max = (div,), None
        else:
            (div_min, q_rho, sum_min, scale_min, offset_min), (div_max, q_rho_max, sum_max, scale_max, offset_max) = \
                branches
            divs, use_max = (div_min, div_max), torch.le(div_min, div_max)  # ties (and NaN) go to alpha_max
            # lerp with a 0/1 weight returns one end exactly, and unlike a broadcast torch.where works in place
            q_rho = q_rho.lerp_(q_rho_max, use_max.unsqueeze(-1).to(dtype))
            row_sum = torch.where(use_max, sum_max, sum_min)
            scale = torch.where(use_max, scale_max, scale_min)
            offset = torch.where(use_max, offset_max, offset_min)
        # q_rho holds q * rho / scale, row_sum its row sums. The value is the original's,
        # -sum q (rho + offset) log q (rho + offset is its full weight), with log q = log_q_c + log q_max
        log_q_max = log_q_max.squeeze(-1)
        q_rho_log_q = _rowdot(q_rho, log_q_c, scratch).addcmul_(log_q_max, row_sum).mul_(scale)
        q_log_q = _rowdot(q, log_q_c, scratch).add_(log_q_max)
        surrogate = q_rho_log_q.add_(q_log_q * offset).neg_()
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(q_rho.addcmul_(q, row_sum.unsqueeze(-1), value=-1.0))  # -grad / scale
            # d/d(logits) = d/dz / T; per row, so applied to the (N,) incoming gradient, not to (N, C)
            factor = scale * (-1.0 / temperature)
            ctx.factor = factor.unsqueeze(-1) if isinstance(factor, torch.Tensor) else factor
        ctx.mark_non_differentiable(*divs, *([] if use_max is None else [use_max]))
        return (*divs, surrogate, use_max)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        grad_surrogate = grad_outputs[-2]  # outputs: divergence(s), surrogate, use_max
        if grad_surrogate is None:
            return None, None, None, None, None
        neg_grad, = ctx.saved_tensors
        return neg_grad * (grad_surrogate.unsqueeze(-1) * ctx.factor), None, None, None, None


def _branch(
        alpha: float,
        q: torch.Tensor,
        p: torch.Tensor,
        log_w_c: torch.Tensor,
        shift: torch.Tensor,
        clip: float,
        scratch: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """One alpha, with ``log w = log_w_c + shift`` (shift per row).

    Returns the per-sample divergence; ``q * rho / scale`` (rho: the gradient weight), its row sums and `scale`;
    and the constant that turns rho into the original's weight. The (batch, classes) result is a new tensor or
    p itself (never modified here).
    """
    if abs(alpha - 1.0) < _BRANCH_TOL:
        # KL(p || q), unclipped as in the original; q * w is p, so rho = w, row sum 1 (exact: sum p = 1), offset 0
        div = _rowdot(p, log_w_c, scratch).add_(shift.squeeze(-1))
        return div, p, torch.ones_like(div), 1.0, 0.0
    if abs(alpha) < _BRANCH_TOL:
        # KL(q || p) with w clipped; rho = log w (offset -1)
        q_rho = torch.add(log_w_c, shift).clamp_(max=math.log(clip)).mul_(q)
        row_sum = q_rho.sum(-1)
        return -row_sum, q_rho, row_sum, 1.0, -1.0
    # exp overflow to inf is clamped to `clip`; NOTE: torch.expm1 would be more exact near w == 1 but is
    # ~10x slower than exp on CPU, and exp(0) - 1 is still exactly 0 where p == q
    q_w = torch.add(shift * alpha, log_w_c, alpha=alpha).exp_().clamp_(max=clip).sub_(1.0).mul_(q)
    row_sum = q_w.sum(-1)  # sum q (w^alpha - 1)
    # rho = (w^alpha - 1) / alpha; the original's weight w^alpha / alpha + 1 / (alpha (alpha - 1)) adds 1 / (alpha - 1)
    return row_sum / (alpha * (alpha - 1.0)), q_w, row_sum, 1.0 / alpha, 1.0 / (alpha - 1.0)


def _rowdot(x: torch.Tensor, y: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """sum(x * y, -1) through a reused buffer: on CPU a fresh (batch, classes) temporary per call (as
    torch.linalg.vecdot makes) costs more in allocation and page faults than the arithmetic."""
    return torch.mul(x, y, out=scratch).sum(-1)


def _softmax_stats(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax(z), max(z) and log(max softmax(z)) (both keepdim): log_softmax(z) = z - max z + log max softmax.

    One softmax and two cheap reductions instead of softmax + log_softmax. The largest probability,
    1 / sum(exp(z - max z)), is at least 1 / num_classes, so its log is accurate.
    """
    q = torch.softmax(z, dim=-1)
    return q, torch.amax(z, dim=-1, keepdim=True), torch.amax(q, dim=-1, keepdim=True).log_()


def _compute_dtype(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.dtype:
    """float32, or float64 if either input is: fp16/bf16 are upcast."""
    return torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)


def _scaled(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    logits = logits.to(dtype)
    return logits if temperature == 1.0 else logits / temperature


def _scale_t2(loss: torch.Tensor, temperature: float) -> torch.Tensor:
    return loss if temperature == 1.0 else loss * temperature ** 2  # Hinton: keeps gradient size across T


def _no_autocast(x: torch.Tensor):
    # defensive: whatever an autocast op list holds on any device, everything here must stay in float32
    return torch.autocast(device_type=x.device.type, enabled=False)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == 'mean':
        return x.mean()
    if reduction == 'sum':
        return x.sum()
    return x


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.ndim == 0 or student_logits.shape[-1] == 0:
        raise ValueError(
            f'student and teacher logits must have the same shape (..., num_classes > 0), got '
            f'{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}')
    if not (student_logits.is_floating_point() and teacher_logits.is_floating_point()):
        raise ValueError(f'logits must be floating point, got {student_logits.dtype} and {teacher_logits.dtype}')


def _check_alpha(alpha: float, name: str) -> float:
    return as_float(name, alpha, high_open=True, low_open=True)  # finite


def _check_alpha_range(alpha_min: float, alpha_max: float) -> Tuple[float, float]:
    alpha_min, alpha_max = _check_alpha(alpha_min, 'alpha_min'), _check_alpha(alpha_max, 'alpha_max')
    if alpha_min > alpha_max:
        raise ValueError(f'alpha_min must be <= alpha_max, got alpha_min={alpha_min:g}, alpha_max={alpha_max:g}')
    return alpha_min, alpha_max


def _check_clip(clip: float) -> float:
    return as_float('clip', clip, 0., low_open=True)  # inf allowed: no clipping


def _check_temperature(temperature: float) -> float:
    return as_float('temperature', temperature, 0., low_open=True, high_open=True)


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f'reduction must be one of {_REDUCTIONS}, got {reduction!r:.40}')
    return reduction
