"""Datasets and loaders for training: timm's `create_dataset`/`create_transform`/`Mixup`, sharded by Accelerate.

``--dataset sklearn/digits`` writes scikit-learn's bundled 8x8 digits (1797 images, no download) once as an
image folder (``train/`` and ``validation/``, 80/20 per class) in a cache directory, then reads it like any
other image folder.
"""
import os
import random
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from timm.data import Mixup, create_dataset, create_transform
from torch.utils.data import DataLoader, Dataset

from ..utils import staged_directory

__all__ = ['DIGITS', 'SeededAugmentation', 'build_digits_folder', 'create_datasets', 'create_loaders', 'create_mixup',
           'default_cache_dir', 'num_classes_of', 'set_transforms']

DIGITS = 'sklearn/digits'


def default_cache_dir() -> Path:
    root = os.environ.get('TIMM_ALPHANET_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'timm_alphanet')
    return Path(root)


def build_digits_folder(root: Optional[os.PathLike] = None, size: int = 32) -> Path:
    """Write sklearn's digits as PNG image folders ``root/{train,validation}/<digit>/`` (once); return root.

    Images are upscaled (bicubic) to `size` px grey-as-RGB. The split is deterministic: every 5th image of
    each class is validation. Writing goes to a temp folder renamed at the end, so concurrent processes
    and interrupted runs never see a half-written folder.
    """
    root = Path(root) if root is not None else default_cache_dir() / f'digits{size}'
    if (root / 'train').is_dir() and (root / 'validation').is_dir():
        return root
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is an install requirement
        raise ImportError('--dataset sklearn/digits needs scikit-learn (pip install scikit-learn)') from e
    from PIL import Image
    digits = load_digits()
    counts: Dict[int, int] = {}
    with staged_directory(root, if_exists='keep') as tmp:  # another process may finish first: keep its folder
        for i, (img, label) in enumerate(zip(digits.images, digits.target)):
            label = int(label)
            n = counts.get(label, 0)
            counts[label] = n + 1
            split = 'validation' if n % 5 == 4 else 'train'
            d = tmp / split / str(label)
            d.mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray((img * (255.0 / 16.0)).round().astype('uint8'), mode='L')
            pil.resize((size, size), Image.BICUBIC).convert('RGB').save(d / f'{i:04d}.png')
    return root


def _dataset_root(cfg) -> Tuple[str, str]:
    if cfg.dataset == DIGITS:
        if cfg.data_dir is not None and os.path.isdir(cfg.data_dir) and any(os.scandir(cfg.data_dir)) and not (
                os.path.isdir(os.path.join(cfg.data_dir, 'train'))
                and os.path.isdir(os.path.join(cfg.data_dir, 'validation'))):
            raise ValueError(f'data_dir {cfg.data_dir[:300]!r} is not a {DIGITS} folder (no train/ and validation/) '
                             f'and not empty; for your own image folders pass --dataset "" (dataset: "")')
        return '', str(build_digits_folder(cfg.data_dir))
    if cfg.data_dir is None:
        raise ValueError(f'dataset {cfg.dataset!r} needs data_dir (--data-dir); only {DIGITS!r} has a default')
    if not os.path.isdir(cfg.data_dir) and not cfg.dataset_download and '/' not in cfg.dataset:
        raise FileNotFoundError(f'data_dir {cfg.data_dir!r} is not a folder')
    return cfg.dataset, cfg.data_dir


def create_datasets(cfg) -> Tuple[Any, Any]:
    """Train and validation datasets of `cfg` (a TrainConfig), without transforms yet (see `set_transforms`).

    Raises:
        ValueError: a split without images (naming the folder and split), or a data_dir that is not a digits folder.
        FileNotFoundError: a data_dir that does not exist.
    """
    name, root = _dataset_root(cfg)
    common = dict(root=root, download=cfg.dataset_download, class_map=cfg.class_map, seed=cfg.seed,
                  batch_size=cfg.batch_size)
    out = []
    for split, training in ((cfg.train_split, True), (cfg.val_split, False)):
        try:
            dataset = create_dataset(name, split=split, is_training=training, **common)
        except RuntimeError as e:  # timm's image folder reader: 'Found 0 images in subfolders of ...'
            raise ValueError(f'no images for split {split[:40]!r} in {root[:300]}: {str(e)[:200]}') from None
        if hasattr(dataset, '__len__') and len(dataset) == 0:
            raise ValueError(f'no images for split {split[:40]!r} in {root[:300]}')
        out.append(dataset)
    return out[0], out[1]


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


def num_classes_of(dataset) -> int:
    """Classes of a timm dataset (its class_to_idx or classes)."""
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None) or getattr(dataset, 'class_to_idx', None)
    if class_to_idx:
        return len(class_to_idx)
    classes = getattr(dataset, 'classes', None)
    if classes:
        return len(classes)
    raise ValueError('cannot infer the number of classes of the dataset: set num_classes (--num-classes)')


class SeededAugmentation(Dataset):
    """`dataset` whose transform draws every random number from (seed, epoch, sample index) alone.

    Each item is transformed with Python's, NumPy's and torch's CPU generators seeded from those three numbers
    (`numpy.random.SeedSequence` mixes them) and then put back, so augmentation does not depend on the number of
    loader processes, on the order batches are fetched (Accelerate prefetches one), or on where a run resumed, and
    it leaves the step's own seeding (dropout, drop path, mixup) untouched. `set_epoch` must be called before each
    epoch's loader starts its workers (the training loader's workers are not persistent, so they see it).
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
    train = DataLoader(SeededAugmentation(train_ds, cfg.seed), batch_size=cfg.batch_size, shuffle=True,
                       drop_last=True, **kw)
    val = DataLoader(val_ds, batch_size=cfg.validation_batch_size or cfg.batch_size, shuffle=False,
                     persistent_workers=cfg.workers > 0, **kw)
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
