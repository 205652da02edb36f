"""``alphanet-convert``: an original AlphaNet/AttentiveNAS checkpoint to timm model folders.

    alphanet-convert alphanet.pth.tar --out converted --subnets all --calib-data /data/imagenet/train
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence

from ..archs import ALPHANET_ARCHS
from ._calibration import RECIPE_FLAGS, add_recipe_arguments, recipe_fields
from ._common import HelpFormatter, int_at_least, user_errors_exit
from ._publish import Publishing

__all__ = ['build_parser', 'main']

PROG = 'alphanet-convert'
SUBNET_NAMES = (*ALPHANET_ARCHS, 'max', 'min')  # original.convert's; that module imports torch, the parser must not


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description='Convert an original AlphaNet/AttentiveNAS checkpoint into timm model directories: '
                    'OUT/supernet and OUT/alphanet_<name> per subnet (load with '
                    "timm.create_model('local-dir:OUT/alphanet_a0', pretrained=True)).",
        epilog='Without --calib-data the subnets keep the checkpoint\'s BatchNorm statistics, which are '
               'meaningless (the original trains with BN momentum 0): calibrate before evaluating.')
    parser.add_argument('checkpoint', help='original checkpoint (.pth / .pth.tar; read without running code)')
    parser.add_argument('--config', default=None,
                        help='original YAML with the supernet_config the checkpoint was trained with '
                             '(default: the one stored in the checkpoint, else the AlphaNet space)')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--subnets', default=None,
                        help=f"comma-separated subnets to export: {', '.join(SUBNET_NAMES)}, 'all' (a0..a6), "
                             'or paths to JSON/YAML arch files (default: none, only the supernet)')
    calib = parser.add_argument_group('BN calibration (the recipe alphanet-export uses)')
    calib.add_argument('--calib-data', default=None,
                       help="image folder (e.g. ImageNet train, or one with the recipe's split as a sub-folder) or "
                            'sklearn/digits, for BN calibration of each subnet')
    add_recipe_arguments(calib)
    parser.add_argument('--workers', type=int_at_least(0), default=min(4, os.cpu_count() or 1),
                        help='data loader processes')
    parser.add_argument('--device', default=None,
                        help='device for calibration (default: cuda when available, else cpu)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--push-to-hub', default=None, metavar='ORG',
                        help='push the supernet and the (calibrated) subnets; a0..a6 go to ORG/alphanet_<name>.in1k, '
                             'the repositories pretrained=True loads when ORG is timm_alphanet.models.HF_HUB_ORG')
    parser.add_argument('--private', action='store_true', help='with --push-to-hub: create private repositories')
    parser.add_argument('--revision', default=None, help='with --push-to-hub: push to this branch')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``alphanet-convert``; exits with status 2 and a one-line message on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = recipe_fields(args)
    if args.calib_data is None and given:
        parser.error(f'{"/".join(RECIPE_FLAGS[k] for k in given)} need{"s" * (len(given) == 1)} --calib-data')

    publishing: List[Publishing] = []

    def convert() -> int:
        import torch  # only now: --help and flag errors are answered without it

        from ..export.hub import push_converted
        from ..original.convert import convert_checkpoint, resolve_subnets
        from ..processes import check_device

        if args.device is None:
            args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
        resolve_subnets(args.subnets)  # fail before the (slow) checkpoint read
        check_device(args.device)
        if args.push_to_hub and args.subnets and args.calib_data is None:
            raise ValueError('--push-to-hub publishes the subnets where pretrained=True finds them: calibrate them '
                             '(--calib-data), or push only the supernet (no --subnets)')
        publishing.append(Publishing(PROG, args.push_to_hub, args.private, args.revision, args.out))
        publisher = publishing[0].publisher
        result = convert_checkpoint(
            args.checkpoint, args.out, config=args.config, subnets=args.subnets, calib_data=args.calib_data,
            recipe=given, workers=args.workers, device=args.device, progress=not args.no_progress,
            log=lambda msg: print(msg, flush=True))
        print(f'done: supernet in {result.supernet}' +
              (f', subnets in {", ".join(result.subnets.values())}' if result.subnets else ''))
        if publisher is not None:
            print('pushed: ' + ', '.join(push_converted(publisher, result.supernet, list(result.subnets.values()))))
        return 0

    status = user_errors_exit(PROG, convert)
    return publishing[0].finish(status) if publishing else status


if __name__ == '__main__':
    sys.exit(main())
