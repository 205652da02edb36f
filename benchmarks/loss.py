"""Forward+backward time and accuracy of the adaptive alpha-divergence vs KL and a naive p/q version.

Run from the repository root: ``python benchmarks/loss.py [--batch 256 --classes 1000 --repeats 200]``.
Implementations are timed side by side (interleaved in every round, so machine load hits them alike);
medians are reported. Accuracy is the max abs difference from a float64 direct p/q reference.
"""
import argparse
import os
import statistics
import sys
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run without installing
from _results import add_json_argument, write_json  # noqa: E402
from _timing import time_interleaved  # noqa: E402
from timm_alphanet.loss import AdaptiveAlphaDivergence, KLDivergence  # noqa: E402
from timm_alphanet.testing.reference_loss import original_adaptive as naive_adaptive  # noqa: E402
from timm_alphanet.testing.reference_loss import original_pq as naive_f_divergence  # noqa: E402

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def timm_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The KD term of timm's LogitDistillationTask (T = 1): plain autograd through both log-softmaxes."""
    return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), reduction='batchmean', log_target=True)


def make_logits(batch: int, classes: int, seed: int, scale: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits and a student whose per-row sharpness varies, so both branches get chosen."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(batch, classes, generator=g) * 3.0
    sharpness = torch.empty(batch, 1).uniform_(0.3, 2.0, generator=g)
    student = teacher * sharpness + torch.randn(batch, classes, generator=g)
    return student * scale, teacher * scale


def time_side_by_side(
        fns: Dict[str, LossFn], student: torch.Tensor, teacher: torch.Tensor, repeats: int, warmup: int,
) -> Dict[str, List[float]]:
    """Forward+backward seconds per implementation and repeat, interleaved round by round (a fresh leaf each call,
    made outside the timing)."""
    return time_interleaved({name: (lambda x, fn=fn: fn(x, teacher).backward()) for name, fn in fns.items()},
                            repeats, warmup, device=student.device,
                            setup=lambda name: student.detach().clone().requires_grad_())


def max_abs_diffs(fn: LossFn, ref_fn: LossFn, student: torch.Tensor, teacher: torch.Tensor) -> Tuple[float, float]:
    """Max abs difference of per-sample values and of gradients w.r.t. student logits (sum reduction)."""
    x = student.detach().clone().requires_grad_()
    value = fn(x, teacher)
    value.sum().backward()
    x_ref = student.detach().double().requires_grad_()
    value_ref = ref_fn(x_ref, teacher.double())
    value_ref.sum().backward()
    return ((value.double() - value_ref).abs().max().item(), (x.grad.double() - x_ref.grad).abs().max().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--repeats', type=int, default=200)
    parser.add_argument('--warmup', type=int, default=20)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--seed', type=int, default=0)
    add_json_argument(parser)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    adaptive = AdaptiveAlphaDivergence()
    kl = KLDivergence()
    fns = {'kl': kl, 'kl_autograd': timm_kl, 'adaptive': adaptive, 'naive_pq': naive_adaptive}
    student, teacher = make_logits(args.batch, args.classes, args.seed)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, logits {args.batch}x{args.classes} float32, '
          f'{args.repeats} repeats')

    times = time_side_by_side(fns, student, teacher, args.repeats, args.warmup)
    medians = {name: statistics.median(v) for name, v in times.items()}
    mins = {name: min(v) for name, v in times.items()}  # least disturbed by other load on the machine
    for name in fns:
        print(f'  {name:10s} fwd+bwd median {medians[name] * 1e3:7.3f} ms (ratio to kl '
              f'{medians[name] / medians["kl"]:5.2f})   min {mins[name] * 1e3:7.3f} ms (ratio '
              f'{mins[name] / mins["kl"]:5.2f})')
    branch = adaptive.forward_with_stats(student, teacher).branch
    print(f'  adaptive picks alpha_max for {branch.float().mean().item():.1%} of samples')

    print('accuracy vs float64 reference (max abs diff of per-sample value / of gradient):')
    accuracy = {}
    for scale in (1.0, 10.0):  # x10: float32 p/q under- and overflows, float64 does not
        accuracy[f'x{scale:g}'] = report_accuracy(*make_logits(args.batch, args.classes, args.seed, scale=scale),
                                                  label=f'logits x{scale:g}')
    write_json(args.json, 'loss', {f'{name} / kl (median fwd+bwd)': medians[name] / medians['kl'] for name in fns
                                  if name != 'kl'},
               {'median_s': medians, 'min_s': mins, 'alpha_max_fraction': branch.float().mean().item(),
                'max_abs_error_vs_float64': accuracy, 'logits': [args.batch, args.classes]},
               {'*': 'time relative to our KL; < 1 is faster'})


def report_accuracy(student: torch.Tensor, teacher: torch.Tensor, label: str) -> Dict[str, Tuple[float, float]]:
    """Values (the surrogate for the alpha losses) and gradients of each float32 implementation vs float64; returns
    {name: (value error, gradient error)}."""
    adaptive = AdaptiveAlphaDivergence(reduction='none')
    use_max = adaptive.forward_with_stats(student, teacher).branch.bool()
    div_lo, _ = naive_f_divergence(student.double(), teacher.double(), -1.0, 5.0)
    div_hi, _ = naive_f_divergence(student.double(), teacher.double(), 1.0, 5.0)
    flips = (use_max != (div_lo <= div_hi)).sum().item()
    # the alpha references use our branch per sample: at a near-tie float32 may pick the other one (counted)
    same_branch = lambda s, t: forced_branch(s, t, use_max)  # noqa: E731
    rows = [
        ('kl', KLDivergence(reduction='none'), KLDivergence(reduction='none')),
        ('adaptive', adaptive, same_branch),
        ('naive_pq', lambda s, t: naive_adaptive(s, t, reduction='none'), same_branch),
    ]
    errors = {}
    for name, fn, ref in rows:
        value_err, grad_err = errors[name] = max_abs_diffs(fn, ref, student, teacher)
        print(f'  {label:12s} {name:10s} value {value_err:9.2e}   grad {grad_err:9.2e}')
    print(f'  {label:12s} adaptive branch differs from float64 on {flips} of {len(use_max)} samples (near-ties)')
    return errors


def forced_branch(student: torch.Tensor, teacher: torch.Tensor, use_max: torch.Tensor) -> torch.Tensor:
    """The original's per-sample surrogate with a given branch choice (alpha_min=-1, alpha_max=1, clip=5)."""
    _, sur_lo = naive_f_divergence(student, teacher, -1.0, 5.0)
    _, sur_hi = naive_f_divergence(student, teacher, 1.0, 5.0)
    return torch.where(use_max, sur_hi, sur_lo)


if __name__ == '__main__':
    main()
