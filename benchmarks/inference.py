"""Inference throughput of AlphaNet A0-A6 next to timm's mobilenetv3_large_100 and efficientnet_b0.

For every A model, at its own resolution: images/s in eager mode, with channels_last, and with
torch.compile; the two timm baselines run at the same resolution in the same process, so the ratios are
measured side by side. "img/s/GFLOP" = throughput x GMACs (the paper's FLOPs), i.e. work done per second.

    python benchmarks/inference.py                      # all models, CPU, batch 8
    python benchmarks/inference.py --models a0 a3 --no-compile --device cuda --batch-size 256 --amp
"""
import argparse
from typing import Any, Callable, Dict, List

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import timm_alphanet
from _results import add_json_argument, write_json
from _timing import median_seconds
from timm_alphanet import ALPHANET_ARCHS

BASELINES = ['mobilenetv3_large_100', 'efficientnet_b0']


def measure_macs(model: torch.nn.Module, res: int) -> float:
    """MACs of one image by torch's FlopCounterMode (which counts 2 FLOPs per MAC)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, res, res))
    return counter.get_total_flops() / 2


def images_per_second(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int, warmup: int,
                      device: str) -> float:
    """Median images/s over `iters` timed calls after `warmup` untimed ones."""
    with torch.inference_mode():
        return x.shape[0] / median_seconds(lambda: fn(x), iters, warmup, device)


def bench_model(name: str, res: int, args) -> Dict[str, float]:
    model = timm.create_model(name, num_classes=1000).eval()
    macs = measure_macs(model, res)
    model = model.to(args.device)
    x = torch.randn(args.batch_size, 3, res, res, device=args.device)
    autocast = torch.autocast(args.device.split(':')[0], dtype=torch.bfloat16, enabled=args.amp)
    out = {'gmacs': macs / 1e9}

    def run(m, inp):
        with autocast:
            return m(inp)

    out['eager'] = images_per_second(lambda t: run(model, t), x, args.iters, args.warmup, args.device)
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out['channels_last'] = images_per_second(lambda t: run(model_cl, t), x_cl, args.iters, args.warmup, args.device)
    if not args.no_compile:
        compiled = torch.compile(model_cl)
        out['compile'] = images_per_second(lambda t: run(compiled, t), x_cl, args.iters, args.warmup + 2, args.device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(ALPHANET_ARCHS), choices=list(ALPHANET_ARCHS))
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--no-compile', action='store_true')
    add_json_argument(parser)
    args = parser.parse_args()
    print(f'torch {torch.__version__}, timm {timm.__version__}, timm_alphanet {timm_alphanet.__version__}, '
          f'device {args.device}, threads {torch.get_num_threads()}, batch {args.batch_size}, amp {args.amp}')

    modes = ['eager', 'channels_last'] + ([] if args.no_compile else ['compile'])
    header = f'{"model":<24}{"res":>5}{"GMACs":>7}' + ''.join(f'{m + " img/s":>20}' for m in modes) + \
        f'{"best img/s/GFLOP":>18}{"vs mnv3":>9}{"vs effb0":>9}'
    print(header)
    baseline_cache: Dict[int, Dict[str, Dict[str, float]]] = {}
    ratios: Dict[str, float] = {}
    details: Dict[str, Any] = {}
    for short in args.models:
        res = ALPHANET_ARCHS[short].resolution
        if res not in baseline_cache:
            baseline_cache[res] = {b: bench_model(b, res, args) for b in BASELINES}
        rows: List = [(f'alphanet_{short}', bench_model(f'alphanet_{short}', res, args))]
        rows += [(b, baseline_cache[res][b]) for b in BASELINES]
        for name, r in rows:
            best = max(r[m] for m in modes)
            ratio = [best / max(baseline_cache[res][b][m] for m in modes) for b in BASELINES]
            print(f'{name:<24}{res:>5}{r["gmacs"]:>7.3f}' + ''.join(f'{r[m]:>20.1f}' for m in modes) +
                  f'{best * r["gmacs"]:>18.1f}{ratio[0]:>9.2f}{ratio[1]:>9.2f}')
            details[f'{name}@{res}'] = r
            if name.startswith('alphanet_'):
                ratios.update({f'{name} / {b} (best img/s, {res} px)': q for b, q in zip(BASELINES, ratio)})
        print()
    write_json(args.json, 'inference', ratios, details,
               {'*': 'images/s of the A model over the baseline at the same resolution, best mode each; > 1 is faster'})


if __name__ == '__main__':
    main()
