"""Moved to `timm_alphanet.cli.classify`; ``python -m timm_alphanet.classify`` keeps working."""
from .cli.classify import classify, main  # noqa: F401

__all__ = ['classify', 'main']

if __name__ == '__main__':
    import sys
    sys.exit(main())
