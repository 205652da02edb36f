"""Training on HF Accelerate: supernet sandwich training and teacher KD (`run`), behind a thin ``train.py``."""
from .checkpoint import CheckpointManager, TrainState, find_checkpoint
from .config import DEMO_SPACE, build_parser, parse_args
from .data import build_digits_folder
from .loop import NonFiniteLossError, build_accelerator, run

__all__ = ['CheckpointManager', 'DEMO_SPACE', 'NonFiniteLossError', 'TrainState', 'build_accelerator',
           'build_digits_folder', 'build_parser', 'find_checkpoint', 'main', 'parse_args', 'run']


def main(argv=None) -> None:
    """``train.py``: parse (timm flags + YAML defaults), train, exit non-zero with a message on failure."""
    args, args_text = parse_args(argv)
    try:
        run(args, args_text)
    except NonFiniteLossError as e:
        raise SystemExit(f'ERROR: {e}') from None
