"""Training on HF Accelerate: supernet sandwich training and teacher KD from one frozen `TrainConfig`.

    cfg = TrainConfig.from_yaml('train_configs/demo.yaml').replace(epochs=2)
    results = run(cfg)

`build_*` make the pieces (each testable alone), `train_one_epoch` runs the step loop, `run` ties them together;
``alphanet-train`` / ``train.py`` (`timm_alphanet.cli.train`) is the command line.
"""
from .build import (TrainData, build_accelerator, build_data, build_ema, build_loaders, build_model, build_optimizer,
                    build_scheduler, build_task, check_world_size, compile_task, data_config_for, learning_rate,
                    model_is_supernet, validation_archs)
from .checkpoint import CheckpointManager, TrainState, find_checkpoint
from .config import TrainConfig
from .epoch import EpochResult, NonFiniteLossError, train_one_epoch
from .run import run

__all__ = ['CheckpointManager', 'EpochResult', 'NonFiniteLossError', 'TrainConfig', 'TrainData',
           'TrainState', 'build_accelerator', 'build_data', 'build_ema', 'build_loaders',
           'build_model', 'build_optimizer', 'build_scheduler', 'build_task', 'check_world_size', 'compile_task',
           'data_config_for',
           'find_checkpoint', 'learning_rate', 'model_is_supernet', 'run', 'train_one_epoch', 'validation_archs']
