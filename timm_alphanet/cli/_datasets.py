"""The image datasets the export and validation tools read: an image folder (timm's reader) or the built-in digits."""
import os
from typing import Any

__all__ = ['open_image_dataset']


def open_image_dataset(data: str, split: str) -> Any:
    """`split` of ``sklearn/digits`` (written once into the cache, as ``train.py`` does) or of an image folder.

    A folder holds the split as a sub-folder (``DIR/<split>/<class>/...``) or is itself the class folders. The
    dataset has no transform yet (the library sets the recipe's or the pipeline's).
    """
    from timm.data import create_dataset

    from ..train.data import DIGITS, build_digits_folder

    root = str(build_digits_folder()) if data == DIGITS else data
    if not os.path.isdir(root):
        raise FileNotFoundError(f'image folder not found: {data[:300]} (give an image folder or {DIGITS})')
    try:
        dataset = create_dataset('', root=root, split=split, is_training=False)
    except RuntimeError as e:  # timm: 'Found 0 images in subfolders of ...'
        raise ValueError(f'no images in {data[:300]} (split {split[:40]!r}): {str(e)[:200]}') from None
    if len(dataset) == 0:
        raise ValueError(f'no images in {data[:300]} (split {split[:40]!r})')
    return dataset
