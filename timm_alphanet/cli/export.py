"""``alphanet-export``: subnets of a trained supernet as calibrated timm model folders, optionally on the Hub.

    alphanet-export runs/supernet --pareto runs/search/pareto.json --output exported --calib-data /data/imagenet
    alphanet-export hf-hub:me/supernet --arch a3 '{"resolution": 224, ...}' my_arch.yaml --output exported \\
        --calib-data /data/imagenet --onnx --push-to-hub me/alphanet
"""
import argparse
import os
import re
import shlex
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from ..utils import claim_folder
from ._calibration import RECIPE_FLAGS, add_recipe_arguments, recipe_fields
from ._common import HelpFormatter, int_at_least, user_errors_exit
from ._publish import Publishing

if TYPE_CHECKING:
    from ..calibration import CalibrationRecipe

__all__ = ['build_parser', 'main']

PROG = 'alphanet-export'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description='Export subnets of a supernet: per arch, BN calibration with the deterministic recipe, the static '
                    'timm model, metrics and a model card, in OUTPUT/<name>/ (load with '
                    "timm.create_model('local-dir:OUTPUT/<name>', pretrained=True)).",
        epilog='With --pareto the calibration recipe is the one the search recorded in pareto.json; without it, '
               'the one the supernet\'s training run recorded in final/ (when calibrating on the run\'s data), else '
               'the defaults with at most all images of the split; --calib-* options replace fields. Without '
               '--calib-data the images are those of the supernet\'s training run (its args.yaml), when it records '
               'an image folder or sklearn/digits. Each folder is then validated on that data\'s validation split '
               '(--no-eval skips it). The Hub token comes from `hf auth login` or HF_TOKEN.')
    parser.add_argument('supernet', help="a training run folder, a supernet model folder, local-dir:FOLDER, "
                                         "hf-hub:ORG/NAME, or an original AlphaNet .pth.tar checkpoint")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--arch', nargs='+', default=None, metavar='ARCH',
                      help='archs to export: max, min, a JSON object, or a JSON/YAML arch file; a0 .. a6 (AlphaNet '
                           'supernets); a width such as 0.35 (slimmable supernets)')
    what.add_argument('--pareto', default=None, metavar='FILE', help="alphanet-search's pareto.json")
    parser.add_argument('--points', default='all', help='with --pareto: all, or comma-separated indices (0,3,5)')
    parser.add_argument('--output', required=True, metavar='DIR', help='output folder (one sub-folder per model)')
    parser.add_argument('--overwrite', action='store_true', help='replace the models\' folders in a non-empty OUTPUT')
    parser.add_argument('--config', default=None,
                        help='original checkpoints only: the original YAML with the supernet_config it was trained '
                             'with (default: the one stored in the checkpoint, else the AlphaNet space)')
    calib = parser.add_argument_group('BN calibration')
    calib.add_argument('--calib-data', default=None,
                       help='image folder (with the recipe\'s split as a sub-folder, e.g. train/) or sklearn/digits '
                            '(default: the data of the supernet\'s training run)')
    calib.add_argument('--no-calib', action='store_true',
                       help='export with the supernet\'s BN statistics (the cards say UNCALIBRATED)')
    add_recipe_arguments(calib, split_note='; not with --pareto')
    evaluation = parser.add_argument_group('Evaluation')
    evaluation.add_argument('--no-eval', action='store_true',
                            help="do not measure the exported models (by default each folder is validated as "
                                 "alphanet-validate would, timm's eval pipeline, and its top-1 recorded)")
    evaluation.add_argument('--val-split', default=None,
                            help='split of the calibration data to validate on (default: the training run\'s '
                                 'validation split, else validation)')
    hub = parser.add_argument_group('Publishing')
    hub.add_argument('--push-to-hub', default=None, metavar='ORG[/PREFIX]',
                     help='push each folder to ORG/[PREFIX-]<name>; a Pareto front becomes a collection')
    hub.add_argument('--private', action='store_true', help='create private repositories')
    hub.add_argument('--revision', default=None, help='push to this branch (created when missing)')
    parser.add_argument('--onnx', action='store_true', help='also write model.onnx, checked with onnxruntime')
    parser.add_argument('--no-latency', action='store_true', help='do not measure batch-1 latency on --device')
    parser.add_argument('--device', default=None,
                        help='device for calibration and latency (default: cuda when available, else cpu)')
    parser.add_argument('-j', '--workers', type=int_at_least(0), default=min(4, os.cpu_count() or 1),
                        help='data loader processes')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser


def _recipe(args, supernet, front, run_recipe: Optional[dict] = None) -> 'CalibrationRecipe':
    """pareto.json's recipe; else the training run's recorded one (`run_recipe`), else `recipe_for`'s defaults,
    with the --calib-* options given replacing their fields."""
    from ..calibration import CalibrationRecipe, recipe_for

    given = recipe_fields(args)
    if front is not None:
        if given:
            raise ValueError(f'{"/".join(RECIPE_FLAGS[k] for k in given)} cannot be combined with --pareto: the '
                             'recipe is the one the search recorded in pareto.json')
        return front.recipe
    if run_recipe is not None:
        return CalibrationRecipe.from_dict({**run_recipe, **given})
    return recipe_for(supernet, **given)


def _recorded_calib_data(supernet: str, pareto: Optional[str]) -> Optional[Tuple[str, str]]:
    """(images, the run folder that recorded them): the data of the supernet's training run (its args.yaml, found
    from SUPERNET or from the supernet path pareto.json records) when it is an image folder or sklearn/digits."""
    from ..data import DIGITS
    from ..search.pareto_file import read_pareto_file
    from ..sources import training_data

    folders = [supernet]
    if pareto is not None:
        try:
            folders.append(str(read_pareto_file(pareto).document['supernet']['path']))
        except (ValueError, TypeError, KeyError, OSError):
            pass  # read_pareto names what is wrong with it later
    for folder in folders:
        try:
            data = training_data(folder)
        except ValueError:  # an unreadable args.yaml records nothing; the message then asks for --calib-data
            continue
        dataset, root = data.get('dataset'), data.get('data_dir')
        if dataset == DIGITS or (dataset == '' and root):
            return root or DIGITS, folder
    return None


def _prefix(supernet) -> str:
    """Exported models are named after their family: alphanet_..., or e.g. slimmable_mobilenetv2_... ."""
    arch = str((getattr(supernet, 'pretrained_cfg', None) or {}).get('architecture', 'alphanet_supernet'))
    return 'alphanet' if arch.startswith('alphanet_') else re.sub(r'_(100|supernet)$', '', arch)


def next_steps(folders: Sequence[str], data: Optional[str], pushed: bool, split: Optional[str] = None) -> str:
    """The closing ``next:`` lines, as training prints them: load, evaluate and publish the first folder."""
    if not folders:
        return 'next: nothing was exported'
    spec = shlex.quote(f'local-dir:{folders[0]}')
    lines = ['next:', f"  load:     timm.create_model({f'local-dir:{folders[0]}'!r}, pretrained=True) after "
                      '`import timm_alphanet`']
    if data is not None:
        where = f' --split {shlex.quote(split)}' if split and split != 'validation' else ''
        lines.append(f'  evaluate: alphanet-validate --model {spec} --data-dir {shlex.quote(data)}{where}')
    if os.path.basename(folders[0]).startswith('alphanet'):  # alphanet-classify reports AlphaNet models only
        lines.append(f'  classify: alphanet-classify -m {spec} --pretrained')
    if not pushed:
        lines.append('  publish:  `hf auth login`, then this command again with --push-to-hub ORG[/PREFIX] '
                     '--overwrite')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``alphanet-export``; exits with status 2 and a one-line message on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    recorded = None
    if args.calib_data is None:  # the run's data also validates uncalibrated exports
        recorded = _recorded_calib_data(args.supernet, args.pareto)
        if recorded is None and not args.no_calib:
            parser.error('give --calib-data (BN calibration images) or --no-calib (export uncalibrated): the '
                         'supernet comes with no training run that records an image folder or sklearn/digits')
    if args.calib_data is not None and args.no_calib:
        parser.error('--calib-data and --no-calib exclude each other')
    if args.pareto is None and args.points != 'all':
        parser.error('--points needs --pareto')
    publishing: List[Publishing] = []

    def run() -> int:
        # torch and the library only now: --help and flag errors are answered without them
        import torch

        from ..calibration import CalibrationRecipe, calibration_images
        from ..data import data_name, dataset_and_root, open_image_dataset
        from ..export.folder import check_output_folder
        from ..export.hub import push_folders
        from ..export.subnets import export_subnets, resolve_requests
        from ..processes import check_device
        from ..search.pareto_file import read_pareto
        from ..sources import load_supernet

        if args.device is None:
            args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
        check_device(args.device)  # before the slow work, not in torch after it
        check_output_folder(args.output, args.overwrite, flag='--overwrite')
        publishing.append(Publishing(PROG, args.push_to_hub, args.private, args.revision, args.output))
        publisher = publishing[0].publisher
        supernet, source = load_supernet(args.supernet, args.config)
        front = read_pareto(args.pareto, supernet.space, source.sha256, CalibrationRecipe.from_dict) \
            if args.pareto else None
        requests = resolve_requests(supernet.space, args.arch or (), front, args.points, prefix=_prefix(supernet),
                                    cost=supernet.macs_and_params)
        from ..calibration import fit_recipe
        from ..export.subnets import open_validation
        from ..sources import training_data, training_recipe

        images = None
        calib_data = args.calib_data
        # the run's own recipe with the run's own data: an export of max is then the run's final/max
        run_recipe = training_recipe(recorded[1]) if recorded is not None and front is None else None
        recipe = _recipe(args, supernet, front, run_recipe)
        if recorded is not None:
            calib_data = recorded[0]
            override = '' if args.no_calib else '; --calib-data overrides'
            print(f'{"data" if args.no_calib else "calibration data"}: {calib_data} (recorded by the training run of '
                  f'{recorded[1]}{override})', flush=True)
        validation, val_split = None, None
        if not args.no_eval and calib_data is not None:  # opened first: a missing split fails before the slow work
            val_split = args.val_split or (training_data(recorded[1]).get('val_split') if recorded else None) \
                or 'validation'
            validation = open_validation(*dataset_and_root(calib_data), val_split,
                                         data_name(calib_data), workers=args.workers, what='--calib-data')
        elif not args.no_eval:
            print('not evaluated: no data to validate on (' + ('the supernet records no training run\'s data; '
                  'alphanet-validate measures a folder on any data)' if args.no_calib else 'give --calib-data)'),
                  flush=True)
        if not args.no_calib:
            dataset = open_image_dataset(*dataset_and_root(calib_data), recipe.split, what='--calib-data')
            if front is None and run_recipe is None and 'num_images' not in recipe_fields(args):
                fitted = fit_recipe(recipe, len(dataset))  # the default count on a smaller split: all of it
                if fitted != recipe:
                    print(f'calibration images: all {fitted.num_images} of split {recipe.split!r} (the default '
                          f'{recipe.num_images} is more than it holds; --calib-images sets it)', flush=True)
                recipe = fitted
            elif run_recipe is not None:
                print(f'calibration recipe: the training run\'s ({recipe.num_images} images of split '
                      f'{recipe.split!r}, seed {recipe.seed}, batches of {recipe.batch_size}); --calib-* override it',
                      flush=True)
            images = calibration_images(dataset, recipe, workers=args.workers, progress=not args.no_progress)
        calib_name = None if calib_data is None else data_name(calib_data)
        with claim_folder(args.output, 'export output folder'):  # one export into a folder at a time
            folders = export_subnets(
                supernet, requests, args.output, source=source.to_dict(), calib_images=images, recipe=recipe,
                calib_data=calib_name, front=front, validation=validation, onnx=args.onnx, overwrite=args.overwrite,
                measure_latency=not args.no_latency, device=args.device, progress=not args.no_progress,
                log=lambda msg: print(msg, flush=True))
        if publisher is not None:
            title = collection_description = None
            if front is not None:
                title = f'{publisher.prefix or "AlphaNet"} Pareto front {front.supernet_sha256[:8]}'
                collection_description = (f'{len(folders)} models of the Pareto front found by alphanet-search on '
                                          f'the supernet with weights sha256 {front.supernet_sha256[:16]}')
            repos = push_folders(publisher, folders, collection=title, description=collection_description)
            print('pushed: ' + ', '.join(repos), flush=True)
        print(next_steps([str(f) for f in folders], calib_data, pushed=publisher is not None, split=val_split),
              flush=True)
        return 0

    status = user_errors_exit(PROG, run)
    return publishing[0].finish(status) if publishing else status


if __name__ == '__main__':
    sys.exit(main())
