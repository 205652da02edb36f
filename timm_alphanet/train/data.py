"""Datasets and loaders for training: timm's `create_dataset`/`create_transform`/`Mixup`, sharded by Accelerate.

``--dataset sklearn/digits`` writes scikit-learn's bundled 8x8 digits (1797 images, no download) once as an
image folder (``train/`` and ``validation/``, 80/20 per class) in a cache directory, then reads it like any
other image folder.
"""
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from timm.data import Mixup, create_dataset, create_transform
from torch.utils.data import DataLoader

__all__ = ['DIGITS', 'build_digits_folder', 'create_datasets', 'create_loaders', 'create_mixup', 'default_cache_dir']

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
    tmp = root.parent / f'.{root.name}.tmp{os.getpid()}'
    counts: Dict[int, int] = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        n = counts.get(label, 0)
        counts[label] = n + 1
        split = 'validation' if n % 5 == 4 else 'train'
        d = tmp / split / str(label)
        d.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray((img * (255.0 / 16.0)).round().astype('uint8'), mode='L')
        pil.resize((size, size), Image.BICUBIC).convert('RGB').save(d / f'{i:04d}.png')
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _dataset_root(args) -> Tuple[str, str]:
    if args.dataset == DIGITS:
        return '', str(build_digits_folder(args.data_dir))
    if args.data_dir is None:
        raise SystemExit(f'--dataset {args.dataset!r} needs --data-dir')
    return args.dataset, args.data_dir


def create_datasets(args, data_config: Dict[str, Any], train_size: int, eval_size: int):
    """Train and validation datasets with timm's transforms (`train_size` / `eval_size`: square image size)."""
    name, root = _dataset_root(args)
    common = dict(root=root, download=args.dataset_download, class_map=args.class_map, seed=args.seed)
    train = create_dataset(name, split=args.train_split, is_training=True, batch_size=args.batch_size, **common)
    val = create_dataset(name, split=args.val_split, is_training=False, batch_size=args.batch_size, **common)
    train.transform = create_transform(
        (3, train_size, train_size), is_training=True, no_aug=args.no_aug, scale=tuple(args.scale),
        ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, interpolation=args.train_interpolation, mean=data_config['mean'],
        std=data_config['std'], re_prob=args.reprob)
    val.transform = create_transform(
        (3, eval_size, eval_size), is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'])
    return train, val


def num_classes_of(dataset) -> int:
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None) or getattr(dataset, 'class_to_idx', None)
    if class_to_idx:
        return len(class_to_idx)
    classes = getattr(dataset, 'classes', None)
    if classes:
        return len(classes)
    raise SystemExit('cannot infer the number of classes of the dataset: pass --num-classes')


def create_loaders(args, train_ds, val_ds) -> Tuple[DataLoader, DataLoader]:
    """Plain DataLoaders over the per-process batch size; `Accelerator.prepare` shards them."""
    kw = dict(num_workers=args.workers, pin_memory=torch.cuda.is_available(),
              persistent_workers=args.workers > 0)
    train = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True, **kw)
    val = DataLoader(val_ds, batch_size=args.validation_batch_size or args.batch_size, shuffle=False, **kw)
    return train, val


def create_mixup(args, num_classes: int) -> Optional[Mixup]:
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
                 num_classes=num_classes)
