"""Datasets and loaders for training: timm's `create_dataset`/`create_transform`/`Mixup`, sharded by Accelerate.

The splits are opened with `timm_alphanet.data.open_image_dataset` (the digits, image folders, timm datasets); this
module adds what only training needs: the train/eval transforms, seeded augmentation, loaders and mixup.
"""
import random
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from timm.data import Mixup, create_transform
from torch.utils.data import DataLoader, Dataset

from ..data import open_image_dataset

__all__ = ['SeededAugmentation', 'create_datasets', 'create_loaders', 'create_mixup', 'set_transforms']


def create_datasets(cfg) -> Tuple[Any, Any]:
    """Train and validation datasets of `cfg` (a TrainConfig), without transforms yet (see `set_transforms`).

    Raises:
        ValueError: a split without images (naming the folder and split), no data_dir for a dataset other than the
            digits, or a data_dir that is not a digits folder.
        FileNotFoundError: a data_dir that does not exist.
    """
    common = dict(download=cfg.dataset_download, class_map=cfg.class_map, seed=cfg.seed, batch_size=cfg.batch_size,
                  what='data_dir')
    train = open_image_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, is_training=True, **common)
    val = open_image_dataset(cfg.dataset, cfg.data_dir, cfg.val_split, is_training=False, **common)
    return train, val


def set_transforms(cfg, train, val, data_config: Dict[str, Any]) -> None:
    """timm's train/eval transforms for the model's `data_config` (square ``input_size``) and `cfg`'s augmentation."""
    size = data_config['input_size'][-1]
    train.transform = create_transform(
        (3, size, size), is_training=True, no_aug=cfg.no_aug, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=cfg.hflip, vflip=cfg.vflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation, mean=data_config['mean'], std=data_config['std'], re_prob=cfg.reprob)
    val.transform = create_transform(
        (3, size, size), is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'])


class SeededAugmentation(Dataset):
    """`dataset` whose transform draws every random number from (seed, epoch, sample index) alone.

    Each item is transformed with Python's, NumPy's and torch's CPU generators seeded from those three numbers
    (`numpy.random.SeedSequence` mixes them) and then put back, so augmentation does not depend on the number of
    loader processes, on the order batches are fetched (Accelerate prefetches one), or on where a run resumed, and
    it leaves the step's own seeding (dropout, drop path, mixup) untouched. `set_epoch` must be called before each
    epoch's loader is iterated; the epoch lives in shared memory, so persistent loader workers see it (the training
    loader keeps its workers: BN calibration iterates it once per validated subnet, and restarting them each time
    costs seconds per subnet at ImageNet scale).
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        seed = int(np.random.SeedSequence((self.seed, self.epoch, int(index))).generate_state(1, np.uint64)[0])
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; no device generator is touched
            torch.random.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def create_loaders(cfg, train_ds, val_ds) -> Tuple[DataLoader, DataLoader]:
    """DataLoaders over the per-process batch size (`Accelerator.prepare` shards them); the training set's
    augmentation is seeded per sample (`SeededAugmentation`)."""
    kw = dict(num_workers=cfg.workers, pin_memory=torch.cuda.is_available())
    kw['persistent_workers'] = cfg.workers > 0
    train = DataLoader(SeededAugmentation(train_ds, cfg.seed), batch_size=cfg.batch_size, shuffle=True,
                       drop_last=True, **kw)
    val = DataLoader(val_ds, batch_size=cfg.validation_batch_size or cfg.batch_size, shuffle=False, **kw)
    if len(train) == 0:
        raise ValueError(f'the training set has {len(train_ds)} images, fewer than one batch of {cfg.batch_size} '
                         '(batch_size)')
    return train, val


def create_mixup(cfg, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup/CutMix for `cfg`, or None when both are off."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                 num_classes=num_classes)
