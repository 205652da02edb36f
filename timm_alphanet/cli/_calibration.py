"""The BN calibration recipe's command-line options, shared by ``alphanet-export`` and ``alphanet-convert`` so the
same flags mean the same recipe in both (`timm_alphanet.calibration.recipe_for` fills in what is not given)."""
import argparse
from typing import Any, Dict

from ._common import int_at_least

__all__ = ['RECIPE_DEFAULTS', 'RECIPE_FLAGS', 'add_recipe_arguments', 'recipe_fields']

# CalibrationRecipe's defaults, for --help: the class lives with torch, which a parser must not import
# (tests/test_cli_startup.py checks they match)
RECIPE_DEFAULTS: Dict[str, Any] = {'split': 'train', 'num_images': 2048, 'batch_size': 256, 'seed': 0}

# recipe field -> its flag
RECIPE_FLAGS: Dict[str, str] = {'split': '--calib-split', 'num_images': '--calib-images',
                                'batch_size': '--calib-batch-size', 'seed': '--calib-seed',
                                'image_size': '--calib-image-size'}


def add_recipe_arguments(group: Any, split_note: str = '') -> None:
    """Add the recipe's ``--calib-*`` options (all default None: not given) to a parser or argument group."""
    d = RECIPE_DEFAULTS
    group.add_argument('--calib-split', default=None, help=f'recipe split (default {d["split"]}){split_note}')
    group.add_argument('--calib-images', type=int_at_least(1), default=None,
                       help=f'recipe images (default {d["num_images"]})')
    group.add_argument('--calib-batch-size', type=int_at_least(1), default=None,
                       help=f'recipe batch (default {d["batch_size"]})')
    group.add_argument('--calib-seed', type=int, default=None, help=f'recipe seed (default {d["seed"]})')
    group.add_argument('--calib-image-size', type=int_at_least(1), default=None,
                       help="recipe image size (default: the space's largest resolution)")


def recipe_fields(args: argparse.Namespace) -> Dict[str, Any]:
    """The recipe fields the command line gave (field name -> value), for `recipe_for`."""
    values = {name: getattr(args, flag[2:].replace('-', '_')) for name, flag in RECIPE_FLAGS.items()}
    return {name: value for name, value in values.items() if value is not None}
