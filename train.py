#!/usr/bin/env python3
"""Train an AlphaNet supernet (sandwich rule + alpha-KD) or distil a teacher into a timm model, on HF Accelerate.

    accelerate launch train.py -c train_configs/demo.yaml          # or plain: python train.py
    torchrun --nproc_per_node 2 train.py -c train_configs/demo.yaml

See ``python train.py --help`` and README "Training"; the work is in `timm_alphanet.train`, the command line in `timm_alphanet.cli.train`.
"""
import sys

from timm_alphanet.cli.train import main

if __name__ == '__main__':
    sys.exit(main())
