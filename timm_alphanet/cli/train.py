"""``train.py`` / ``alphanet-train``: supernet sandwich training or teacher KD on HF Accelerate.

    accelerate launch train.py -c train_configs/demo.yaml          # or plain: python train.py
"""
import sys
from typing import Optional, Sequence

from ..train import NonFiniteLossError, parse_args, run

__all__ = ['main']


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse (timm flags + YAML defaults), train, exit non-zero with a message on failure."""
    args, args_text = parse_args(argv)
    try:
        run(args, args_text)
    except NonFiniteLossError as e:
        raise SystemExit(f'ERROR: {e}') from None
    return 0


if __name__ == '__main__':
    sys.exit(main())
