"""Cost of weight sharing: one sandwich step on the supernet vs the same four subnets as static models.

A step = max + 2 random + min subnets, batch 8 of 224 px images resized (bicubic) to each subnet's
resolution, cross-entropy on the max subnet, KL to the max's detached logits on the others, backward per
subnet, one SGD step. The static side runs the same four subnets as separate static models (extracted
once, outside the timing). Time is measured interleaved in one process; peak RSS in two child processes.

    python benchmarks/supernet_step.py [--steps 10] [--batch-size 8] [--device cpu]
"""
import argparse
import json
import random
import resource
import statistics
import subprocess
import sys

import timm
import torch
import torch.nn.functional as F

import timm_alphanet  # noqa: F401
from _results import add_json_argument, write_json
from _timing import time_interleaved
from timm_alphanet import extract_subnet


def _subnets(model, seed):
    rng = random.Random(seed)
    return [model.sample_subnet('max'), model.sample_subnet('random', rng), model.sample_subnet('random', rng),
            model.sample_subnet('min')]


def _step(models_or_supernet, archs, x, y, opt, supernet: bool):
    opt.zero_grad(set_to_none=True)
    teacher = None
    for i, arch in enumerate(archs):
        model = models_or_supernet if supernet else models_or_supernet[i]
        if supernet:
            model.set_subnet(arch)
        inp = F.interpolate(x, size=arch.resolution, mode='bicubic', align_corners=False)
        out = model(inp)
        if i == 0:
            loss = F.cross_entropy(out, y)
            teacher = out.detach()
        else:
            loss = F.kl_div(F.log_softmax(out, -1), F.log_softmax(teacher, -1), reduction='batchmean', log_target=True)
        loss.backward()
    opt.step()


def _setup(args, mode):
    torch.manual_seed(0)
    supernet = timm.create_model('alphanet_supernet').to(args.device).train()
    archs = _subnets(supernet, 0)
    x = torch.randn(args.batch_size, 3, 224, 224, device=args.device)
    y = torch.randint(0, 1000, (args.batch_size,), device=args.device)
    if mode == 'supernet':
        return supernet, archs, x, y, torch.optim.SGD(supernet.parameters(), lr=1e-3), True
    statics = [extract_subnet(supernet, a).train() for a in archs]
    del supernet
    params = [p for m in statics for p in m.parameters()]
    return statics, archs, x, y, torch.optim.SGD(params, lr=1e-3), False


def memory_child(args, mode):
    """Run `args.steps` steps of one mode and print its peak RSS (MiB) as JSON."""
    m, archs, x, y, opt, sup = _setup(args, mode)
    for _ in range(args.steps):
        _step(m, archs, x, y, opt, sup)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {'peak_rss_mib': peak}
    if args.device.startswith('cuda'):
        out['peak_cuda_mib'] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--memory-child', choices=['supernet', 'static'], help=argparse.SUPPRESS)
    add_json_argument(parser)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args, args.memory_child)

    print(f'torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, '
          f'batch {args.batch_size}, steps {args.steps}')
    sup = _setup(args, 'supernet')
    sta = _setup(args, 'static')
    print('subnets:', ', '.join(f'{a.resolution}px {timm_alphanet.mflops(a):.0f}MF' for a in sup[1]))
    times = time_interleaved({'supernet': lambda: _step(*sup), 'static': lambda: _step(*sta)}, args.steps,
                             args.warmup, args.device)  # interleaved, so machine noise hits both sides alike
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f'{"":<10}{"median s/step":>15}{"steps/s":>10}')
    for k in ('supernet', 'static'):
        print(f'{k:<10}{med[k]:>15.4f}{1 / med[k]:>10.2f}')
    print(f'time overhead supernet / static-sum: {med["supernet"] / med["static"]:.3f}x (goal <= 1.1x)')

    mem = {}
    for mode in ('supernet', 'static'):
        cmd = [sys.executable, __file__, '--memory-child', mode, '--steps', str(max(2, args.steps // 3)),
               '--batch-size', str(args.batch_size), '--device', args.device]
        mem[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    for key in mem['supernet']:
        print(f'{key}: supernet {mem["supernet"][key]:.0f}, static {mem["static"][key]:.0f}, '
              f'ratio {mem["supernet"][key] / mem["static"][key]:.3f}x')
    ratios = {'time supernet / static-sum': med['supernet'] / med['static'],
              **{f'{k} supernet / static': mem['supernet'][k] / mem['static'][k] for k in mem['supernet']}}
    write_json(args.json, 'supernet_step', ratios, {'median_s_per_step': med, 'memory_mib': mem},
               {'time supernet / static-sum': 'goal <= 1.1', '*': 'weight sharing cost; < 1 is cheaper'})


if __name__ == '__main__':
    main()
