"""``alphanet-search``: evolutionary search of a trained supernet for its Pareto front of subnets.

    alphanet-search output/train/<run> --output output/search
    accelerate launch -m timm_alphanet.cli.search SUPERNET --output DIR --dataset "" --data-dir /data/imagenet
"""
import argparse
import dataclasses
import os
import shlex
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from ._common import HelpFormatter, int_at_least, user_errors_exit

DEFAULT_POPULATION = 100

__all__ = ['build_parser', 'main']

PROG = 'alphanet-search'


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number in [0, 1], got {text[:40]!r}') from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'expected a number in [0, 1], got {value}')
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text[:40]!r}') from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {value}')
    return value


def _mflops_range(text: str) -> Tuple[Optional[float], Optional[float]]:
    """``MIN:MAX``, ``MIN:`` or ``:MAX``."""
    lo, sep, hi = text.partition(':')
    try:
        if not sep:
            raise ValueError
        out = (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected MIN:MAX (either may be empty), e.g. 200:400, got {text[:40]!r}') \
            from None
    if out == (None, None):
        raise argparse.ArgumentTypeError('expected MIN:MAX with at least one bound, got ":"')
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description='Evolutionary search of a trained supernet: a non-dominated Pareto front of top-1 against '
                    'MFLOPs / params / latency, scored on held-out training images after BN calibration on other '
                    'training images; the validation split is used only for the final points. Writes pareto.json, '
                    'pareto.md, pareto.png and candidates.jsonl to --output, after every generation.',
        epilog='Run under `accelerate launch` or `torchrun` to share each generation among processes (any number); '
               'results are identical to one process. --resume continues a killed or finished search.')
    p.add_argument('supernet', help="a training run folder (its final/ model), a model folder or 'local-dir:DIR', "
                                    "'hf-hub:ORG/NAME', or an original AlphaNet .pth.tar checkpoint")
    p.add_argument('--output', required=True, metavar='DIR', help='output folder')
    p.add_argument('--space', default=None, metavar='YAML',
                   help='original-schema YAML of an original checkpoint\'s space (default: the stored one)')
    p.add_argument('--resume', action='store_true', help='continue the search in --output (same supernet and config)')

    g = p.add_argument_group('Data (defaults: the training run\'s args.yaml, else sklearn/digits)')
    g.add_argument('--dataset', default=None, help='timm create_dataset name ("" = image folder) or sklearn/digits')
    g.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root')
    g.add_argument('--train-split', default=None, help='split for calibration and selection images (train)')
    g.add_argument('--val-split', default=None, help='split for the final points\' top1_val (validation)')
    g.add_argument('--no-val', action='store_true', help='do not measure top1_val')
    g.add_argument('--class-map', default=None)
    g.add_argument('--dataset-download', action='store_true')
    g.add_argument('--workers', type=int_at_least(0), default=0, help='data loader processes (image decoding)')
    g.add_argument('--image-size', type=int_at_least(1), default=None,
                   help='side of the stored images (default: the space\'s largest resolution)')
    g.add_argument('--crop-pct', type=_fraction, default=None, help='eval centre crop (default: the supernet\'s)')
    g.add_argument('--interpolation', default=None, help='eval resize interpolation (default: the supernet\'s)')
    g.add_argument('--mean', type=float, nargs=3, default=None, help='default: the supernet\'s')
    g.add_argument('--std', type=float, nargs=3, default=None, help='default: the supernet\'s')

    g = p.add_argument_group('Scoring')
    g.add_argument('--calib-images', type=int_at_least(1), default=None,
                   help='BN calibration images from the training split (default: 2048, or half the split if smaller)')
    g.add_argument('--selection-images', type=int_at_least(1), default=None,
                   help='held-out training images that score candidates (default: 5000, or all the split\'s images '
                        'the calibration leaves if fewer; each image is 100/N points of top-1)')
    g.add_argument('--calib-batch-size', type=int_at_least(1), default=256, help='images per calibration batch')
    g.add_argument('--batch-size', type=int_at_least(1), default=256, help='images per scoring forward')
    g.add_argument('--data-seed', type=int, default=0, help='seed of the calibration/selection image subsets')

    g = p.add_argument_group('Objectives and limits')
    g.add_argument('--objectives', default='top1,mflops',
                   help='top1 plus one or more of mflops, params, latency (comma-separated)')
    g.add_argument('--mflops', type=_mflops_range, default=None, metavar='MIN:MAX', help='MFLOPs range')
    g.add_argument('--max-params', type=_positive, default=None, metavar='M', help='max parameters, in millions')
    g.add_argument('--latency-table', default=None, metavar='LUT', help='alphanet-latency table for this space')
    g.add_argument('--max-latency-ms', type=_positive, default=None, metavar='X', help='max predicted latency (ms)')

    g = p.add_argument_group('Evolution')
    g.add_argument('--population', type=int_at_least(3), default=None,
                   help=f'default: {DEFAULT_POPULATION}, or the number of subnets of a smaller space')
    g.add_argument('--generations', type=int_at_least(0), default=20, help='generations after the initial one')
    g.add_argument('--parents', type=_fraction, default=0.25, help='fraction of the population kept as parents')
    g.add_argument('--mutate-prob', type=_fraction, default=0.1, help='per-gene mutation probability')
    g.add_argument('--resolution-mutate-prob', type=_fraction, default=0.5)
    g.add_argument('--crossover', type=_fraction, default=0.5, help='fraction of children made by crossover')
    g.add_argument('--seed', type=int, default=0, help='seed of the evolution')
    g.add_argument('--predictor', action='store_true',
                   help='pre-rank children with an accuracy predictor trained on the scores so far')
    g.add_argument('--predictor-keep', type=_fraction, default=0.5,
                   help='with --predictor: fraction of the children evaluated')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def _datasets(args: argparse.Namespace, data: Dict[str, Any], recipe: Any) -> Tuple[Any, Any]:
    from ..data import open_image_dataset

    def open_split(split: str) -> Any:
        dataset = open_image_dataset(data.get('dataset') or '', data.get('data_dir'), split,
                                     download=args.dataset_download, class_map=data.get('class_map'),
                                     what='--data-dir')
        dataset.transform = recipe.transform()
        return dataset
    train = open_split(data.get('train_split') or 'train')
    val = None if args.no_val else open_split(data.get('val_split') or 'validation')
    return train, val


def _num_classes(dataset: Any) -> Optional[int]:
    from ..data import num_classes_of

    try:
        return num_classes_of(dataset)
    except ValueError:  # a dataset that names no classes: the supernet's head is taken on trust
        return None


def next_steps(supernet: str, output: str) -> str:
    """The closing ``next:`` lines, as training prints them: look at the front, export it."""
    q = shlex.quote
    return '\n'.join([
        'next:',
        f'  read:   {q(os.path.join(output, "pareto.md"))} and pareto.png (the front, with 95 % intervals)',
        f'  export: alphanet-export {q(supernet)} --pareto {q(os.path.join(output, "pareto.json"))} '
        f'--output {q(os.path.join(output, "export"))}',
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``alphanet-search``; exits with status 2 and a one-line message on bad input."""
    args = build_parser().parse_args(argv)
    if args.max_latency_ms is not None and args.latency_table is None:
        build_parser().error('--max-latency-ms needs --latency-table')

    def run() -> int:
        from ..calibration import CalibrationRecipe, recipe_for
        from ..cost.latency import LatencyTable
        from ..search import EvolutionConfig, Limits, SearchConfig, run_search
        from ..search.evolution import check_search_size
        from ..search.pareto import check_objectives
        from ..search.pareto_report import pareto_markdown, separation_note
        from ..search.runner import default_image_counts, process_state
        from ..sources import RUN_DATA_KEYS, load_supernet, training_data
        from ..data import DIGITS

        objectives = check_objectives(args.objectives)
        if 'latency' in objectives and args.latency_table is None:
            raise ValueError('--objectives with latency needs --latency-table')
        lo, hi = args.mflops or (None, None)
        limits = Limits(mflops_min=lo, mflops_max=hi, max_params_m=args.max_params, max_latency_ms=args.max_latency_ms)
        evolution = EvolutionConfig(population=args.population or DEFAULT_POPULATION, parents=args.parents, mutate_prob=args.mutate_prob,
                                    resolution_mutate_prob=args.resolution_mutate_prob, crossover=args.crossover,
                                    generations=args.generations, seed=args.seed,
                                    predictor_keep=args.predictor_keep if args.predictor else 1.0)
        table = LatencyTable.load(args.latency_table) if args.latency_table else None
        supernet, source = load_supernet(args.supernet, space=args.space)
        size = getattr(supernet.space, 'size', None)
        if args.population is None and isinstance(size, int) and size < evolution.population:
            evolution = dataclasses.replace(evolution, population=size)  # the default fits a small space
        check_search_size(supernet.space, evolution)  # an explicit one is refused: before any data is read
        if table is not None:
            table.check_covers(supernet.space, supernet.num_classes, getattr(supernet, 'in_chans', 3))

        state = process_state()
        say = print if state.is_main_process else (lambda *a, **k: None)
        data = dict(training_data(args.supernet))
        run = f'the training run of {args.supernet[:300]}'
        given = {k: getattr(args, k) for k in RUN_DATA_KEYS if getattr(args, k) is not None}
        if data and not given:
            origin = f'recorded by {run}; --dataset/--data-dir override'
        elif data:
            origin = f'{", ".join("--" + k.replace("_", "-") for k in given)} given, the rest recorded by {run}'
        elif not given:
            origin = 'the default: the supernet comes with no training run args.yaml; give --dataset/--data-dir'
        else:
            origin = 'given'
        data = {'dataset': DIGITS, **data, **given}
        where = f'{data["dataset"] or "image folder"} {data.get("data_dir") or ""}'.strip()
        say(f'data: {where} ({origin})', flush=True)
        recipe = recipe_for(
            supernet, split=data.get('train_split') or 'train', num_images=1, batch_size=args.calib_batch_size,
            seed=args.data_seed, image_size=args.image_size, interpolation=args.interpolation, crop_pct=args.crop_pct,
            mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None)
        train, val = _datasets(args, data, recipe)
        classes = _num_classes(train)
        if classes is not None and classes != supernet.num_classes:
            raise ValueError(f'the dataset {data["dataset"]!r} has {classes} classes, the supernet '
                             f'{supernet.num_classes}: search it on the data it was trained for (--dataset/--data-dir)')
        calib, selection = default_image_counts(len(train), args.calib_images, args.selection_images,
                                                names=('--calib-images', '--selection-images'))
        recipe = CalibrationRecipe(**{**recipe.to_dict(), 'num_images': calib})
        config = SearchConfig(objectives=objectives, limits=limits, evolution=evolution, calibration=recipe,
                              selection_images=selection, batch_size=args.batch_size, predictor=args.predictor)

        say(f'data: {len(train)} training '
            f'images -> {calib} for BN calibration + {selection} for selection; '
            + (f'{len(val)} validation images for the final points' if val is not None else 'no validation split'))
        say(f'search: population {evolution.population}, {evolution.generations} generations, seed {evolution.seed}, '
            f'objectives {",".join(objectives)}, on {state.num_processes} process(es)')
        result = run_search(supernet, train, args.output, config, val_data=val,
                            val_split=data.get('val_split') or 'validation', dataset=where, source=source.to_dict(),
                            latency_table=table, resume=args.resume, workers=args.workers,
                            progress=not args.no_progress,
                            log=lambda msg: print(msg, flush=True))
        say('\n' + pareto_markdown(result.document))
        say(separation_note(result.document))
        say(f'\n{result.evaluated} subnets evaluated; pareto.json, pareto.md, pareto.png and candidates.jsonl in '
            f'{args.output}')
        say(next_steps(args.supernet, args.output))
        return 0

    return user_errors_exit(PROG, run)


if __name__ == '__main__':
    sys.exit(main())
