"""What the optional accuracy predictor buys on a real supernet: its rank correlation on held-out archs, and the
evaluations a search needs to reach the front quality (hypervolume) of a search without it.

For each seed, two searches of the same supernet (same data, population, seed): without the predictor for
`--generations`, and with it (the best `--keep` of each generation's children evaluated) for twice as many. The hypervolume of the front
after every generation (from candidates.jsonl) gives, for the predictor run, the evaluations it needed to reach the
plain run's final hypervolume. The rank correlation is measured on the plain run's candidates: the predictor is fit
on the first half (in evaluation order) and ranks the second half.

    python benchmarks/search_predictor.py output/train/<run> [--seeds 0 1 2] [--generations 10]
"""
import argparse
import json
import os
import tempfile

import torch
from scipy.stats import kendalltau

from _results import add_json_argument, write_json
from _timing import timed
from timm_alphanet.cli.search import main as search_main
from timm_alphanet.cost import count_macs_and_params
from timm_alphanet.search.pareto import hypervolume, objective_vector, pareto_front
from timm_alphanet.search.predictor import AccuracyPredictor
from timm_alphanet.sources import load_supernet


def _records(out):
    with open(os.path.join(out, 'candidates.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['kind'] == 'selection']


def _hv_by_generation(records, ref):
    """[(evaluations so far, hypervolume of their front)] after each generation."""
    out = []
    for g in sorted({r['generation'] for r in records}):
        seen = [r for r in records if r['generation'] <= g]
        front = pareto_front(seen, ('top1', 'mflops'))
        out.append((len(seen), hypervolume([objective_vector(r, ('top1', 'mflops')) for r in front], ref)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('supernet', help='a trained supernet (e.g. the demo run folder)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--population', type=int, default=50)
    parser.add_argument('--generations', type=int, default=10)
    parser.add_argument('--keep', type=float, default=0.5)
    parser.add_argument('--calib-images', type=int, default=500)
    parser.add_argument('--selection-images', type=int, default=500)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    add_json_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    supernet, _ = load_supernet(args.supernet)
    space = supernet.space
    ref = (0.0, 1.05 * count_macs_and_params(space.max_config(), space, supernet.num_classes)[0] / 1e6)
    common = ['--population', str(args.population), '--calib-images',
              str(args.calib_images), '--selection-images', str(args.selection_images), '--no-val', '--no-progress']
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs, seconds = {}, {}
            # the predictor run gets twice the generations: it evaluates fewer children in each
            for name, extra in (('plain', ['--generations', str(args.generations)]),
                                ('predictor', ['--generations', str(2 * args.generations), '--predictor',
                                               '--predictor-keep', str(args.keep)])):
                out = os.path.join(tmp, f'{name}{seed}')
                seconds[name] = timed(lambda: search_main([args.supernet, '--output', out, '--seed', str(seed),
                                                           *common, *extra]))[1]
                runs[name] = _records(out)
            plain, pred = runs['plain'], runs['predictor']
            half = len(plain) // 2
            model = AccuracyPredictor(space, seed).fit([space.validate(r['arch']) for r in plain[:half]],
                                                       [r['top1'] for r in plain[:half]])
            tau = kendalltau(model.predict([space.validate(r['arch']) for r in plain[half:]]),
                             [r['top1'] for r in plain[half:]]).statistic
            hv_plain = _hv_by_generation(plain, ref)
            target, evals_plain = hv_plain[-1][1], hv_plain[-1][0]
            first = next(n for n, hv in hv_plain if hv >= target)
            hv_pred = _hv_by_generation(pred, ref)
            reached = next((n for n, hv in hv_pred if hv >= target), None)
            rows.append((seed, tau, first, evals_plain, reached, len(pred), hv_pred[-1][1] / target,
                         seconds['predictor'] / seconds['plain']))
    print(f'{"seed":>4} {"tau":>6} {"plain: evals to its final HV":>29} {"predictor: evals to it":>23} '
          f'{"pred. final HV / plain":>23} {"wall pred./plain":>17}')
    for seed, tau, first, total, reached, total_pred, ratio, wall in rows:
        shown = f'{reached} of {total_pred}' if reached is not None else f'not in {total_pred}'
        print(f'{seed:>4} {tau:>6.3f} {f"{first} of {total}":>29} {shown:>23} {ratio:>23.4f} {wall:>17.2f}')
    keys = ('seed', 'kendall_tau', 'plain_evals_to_final_hv', 'plain_evals', 'predictor_evals_to_it',
            'predictor_evals', 'final_hv_predictor_over_plain', 'wall_predictor_over_plain')
    write_json(args.json, 'search_predictor',
               {f'seed {r[0]}: final HV predictor / plain': r[6] for r in rows}
               | {f'seed {r[0]}: wall predictor / plain': r[7] for r in rows},
               {'rows': [dict(zip(keys, r)) for r in rows]},
               {'*': 'HV ratio >= 1: the predictor run reached at least the plain front; wall: both searches timed'})


if __name__ == '__main__':
    main()
