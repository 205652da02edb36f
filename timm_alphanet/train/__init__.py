"""Training on HF Accelerate: supernet sandwich training and teacher KD (`run`), behind a thin ``train.py``."""
from .checkpoint import CheckpointManager, TrainState, find_checkpoint
from .config import DEMO_SPACE, build_parser, parse_args
from .data import build_digits_folder
from .loop import NonFiniteLossError, build_accelerator, run

__all__ = ['CheckpointManager', 'DEMO_SPACE', 'NonFiniteLossError', 'TrainState', 'build_accelerator',
           'build_digits_folder', 'build_parser', 'find_checkpoint', 'parse_args', 'run']

