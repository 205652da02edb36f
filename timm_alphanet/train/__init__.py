"""Training on HF Accelerate: supernet sandwich training and teacher KD from one frozen `TrainConfig`.

    cfg = TrainConfig.from_yaml('train_configs/demo.yaml').replace(epochs=2)
    results = run(cfg)

`build_*` make the pieces (each testable alone), `train_one_epoch` runs the step loop, `run` ties them together;
``alphanet-train`` / ``train.py`` (`timm_alphanet.cli.train`) is the command line.
"""
import importlib
from typing import Any

# name -> submodule, imported on first use (PEP 562): `TrainConfig` (config) needs no torch, so the command line
# parses its flags and answers --help without importing torch
_NAMES = {
    **dict.fromkeys(('TrainData', 'build_accelerator', 'build_data', 'build_ema', 'build_loaders', 'build_model',
                     'build_optimizer', 'build_scheduler', 'build_task', 'check_world_size', 'compile_task',
                     'data_config_for', 'init_classifier', 'learning_rate', 'model_is_supernet', 'validation_archs'),
                    'build'),
    **dict.fromkeys(('CheckpointManager', 'TrainState', 'find_checkpoint'), 'checkpoint'),
    'TrainConfig': 'config',
    **dict.fromkeys(('EpochResult', 'NonFiniteLossError', 'train_one_epoch'), 'epoch'),
    'run': 'run',
}

__all__ = ['CheckpointManager', 'EpochResult', 'NonFiniteLossError', 'TrainConfig', 'TrainData',
           'TrainState', 'build_accelerator', 'build_data', 'build_ema', 'build_loaders',
           'build_model', 'build_optimizer', 'build_scheduler', 'build_task', 'check_world_size', 'compile_task',
           'data_config_for',
           'find_checkpoint', 'init_classifier', 'learning_rate', 'model_is_supernet', 'run', 'train_one_epoch',
           'validation_archs']


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f'.{_NAMES[name]}', __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
