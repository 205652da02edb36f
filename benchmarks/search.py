"""Search speed: per-candidate cost vs its floor, and candidates per minute, on the demo and full AlphaNet spaces.

The floor of a candidate is the pure forward time of its calibration images (train mode) and its selection images
(eval mode) through that subnet, on tensors already at its resolution. The candidate's cost is what the search
pays: `set_subnet`, the resize of the stored images when the resolution changes (candidates run grouped by
resolution, as a search process runs them), BN reset + calibration, scoring. Both are timed interleaved on the same
subnets (random supernet weights: speed does not depend on them; random images). Candidates per minute is a real
`run_search` (population, 1 generation, no validation) timed end to end, including the one-off image loading.

    python benchmarks/search.py [--threads 2] [--spaces demo alphanet]
"""
import argparse
import random
import statistics
import tempfile

import timm
import torch
from torch.utils.data import TensorDataset

import timm_alphanet  # noqa: F401  (registers the models)
from _results import add_json_argument, write_json
from _timing import timed
from timm_alphanet.archs import DEMO_SPACE, resolve_space
from timm_alphanet.calibration import CalibrationRecipe, resize_to
from timm_alphanet.search import EvolutionConfig, SearchConfig, run_search
from timm_alphanet.search.scoring import Scorer
from timm_alphanet.testing import randomize_bn_stats

# space -> (space spec, classes, calibration images, selection images, batch)
SETTINGS = {
    'demo': (DEMO_SPACE, 10, 721, 144, 256),  # the defaults on the digits training split (1442 images)
    'alphanet': (None, 1000, 64, 64, 32),  # ImageNet-size subnets on CPU: few images per candidate
}


@torch.no_grad()
def floor_time(supernet, arch, calib, images, calib_batch, batch):
    """Pure forwards of the candidate's images, already resized: train mode for calibration, eval for scoring."""
    supernet.set_subnet(arch)

    def forwards():
        supernet.train()
        for x in calib.split(calib_batch):
            supernet(x)
        supernet.eval()
        for x in images.split(batch):
            supernet(x)
    return timed(forwards)[1]


def bench_space(name, candidates, threads):
    spec, classes, n_calib, n_sel, batch = SETTINGS[name]
    space = resolve_space(spec)
    torch.manual_seed(0)
    supernet = timm.create_model('alphanet_supernet', space=space, num_classes=classes)
    randomize_bn_stats(supernet, torch.Generator().manual_seed(0))
    side = max(space.resolutions)
    gen = torch.Generator().manual_seed(1)
    calib = torch.randn(n_calib, 3, side, side, generator=gen)
    images = torch.randn(n_sel, 3, side, side, generator=gen)
    targets = torch.randint(0, classes, (n_sel,), generator=gen)
    rng = random.Random(0)
    archs = sorted((space.sample(rng) for _ in range(candidates)), key=lambda a: a.resolution)  # runner order
    scorer = Scorer(supernet, calib, images, targets, batch, batch)
    scorer.top1(archs[0])  # warm-up (allocator, first-call costs)
    floor(supernet, archs[0], calib, images, batch)
    cost, pure = [], []
    for arch in archs:
        cost.append(timed(lambda: scorer.top1(arch))[1])
        pure.append(floor(supernet, arch, calib, images, batch))
    ratio = sum(cost) / sum(pure)

    # candidates per minute: a real search, end to end
    data = TensorDataset(torch.cat([calib, images]), torch.randint(0, classes, (n_calib + n_sel,), generator=gen))
    recipe = CalibrationRecipe(num_images=n_calib, batch_size=batch, image_size=side)
    config = SearchConfig(evolution=EvolutionConfig(population=candidates, generations=0), calibration=recipe,
                          selection_images=n_sel, batch_size=batch)
    with tempfile.TemporaryDirectory() as out:
        result, wall = timed(lambda: run_search(supernet, data, out, config, progress=False, log=lambda msg: None))
    per_min = 60 * result.evaluated / wall
    print(f'{name:<9} {classes:>5} {n_calib:>6} {n_sel:>6} {batch:>5} {statistics.median(pure) * 1e3:>10.1f} '
          f'{statistics.median(cost) * 1e3:>10.1f} {ratio:>7.3f}x {per_min:>9.1f}')
    return {'ratio': ratio, 'candidates_per_min': per_min, 'floor_ms_median': statistics.median(pure) * 1e3,
            'candidate_ms_median': statistics.median(cost) * 1e3, 'candidates': candidates}


def floor(supernet, arch, calib, images, batch):
    res = arch.resolution
    return floor_time(supernet, arch, resize_to(calib, res), resize_to(images, res), batch, batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--spaces', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--candidates', type=int, nargs='+', default=[24, 6],
                        help='candidates per space (same order as --spaces)')
    add_json_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, CPU, {args.threads} threads; random weights and images')
    print(f'{"space":<9} {"cls":>5} {"calib":>6} {"select":>6} {"batch":>5} {"floor ms":>10} {"cand. ms":>10} '
          f'{"ratio":>8} {"cand/min":>9}')
    details = {name: bench_space(name, n, args.threads) for name, n in zip(args.spaces, args.candidates)}
    print('ratio = summed candidate time / summed floor (goal <= 1.3x); ms columns are medians per candidate')
    write_json(args.json, 'search', {f'{name}: candidate time / floor': d['ratio'] for name, d in details.items()},
               details, {'*': 'goal <= 1.3 (the rest of a candidate\'s cost over its pure forwards)'})


if __name__ == '__main__':
    main()
