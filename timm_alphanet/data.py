"""The image data every command reads: the built-in digits, and one way to open a split of a dataset.

``sklearn/digits`` (`DIGITS`) is scikit-learn's bundled 8x8 digits (1797 images, no download), written once as an
image folder (``train/`` and ``validation/``, 80/20 per class) in a cache directory and then read like any other
image folder. `open_image_dataset` opens a split of the digits, of an image folder or of any dataset timm's
`create_dataset` knows, with the same refusals (a missing folder, a split without images) for training, search,
export, conversion and validation.
"""
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .utils import display_path, import_optional, staged_directory

__all__ = ['DIGITS', 'build_digits_folder', 'data_name', 'dataset_and_root', 'default_cache_dir', 'num_classes_of',
           'open_image_dataset']

DIGITS = 'sklearn/digits'
# timm datasets read from a hub or a stream: their root is a cache that may not exist yet
_REMOTE_PREFIXES = ('hfds/', 'hfids/', 'tfds/', 'wds/')


def default_cache_dir() -> Path:
    """Where the digits folder is written: $TIMM_ALPHANET_CACHE, else $XDG_CACHE_HOME/timm_alphanet (~/.cache)."""
    root = os.environ.get('TIMM_ALPHANET_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'timm_alphanet')
    return Path(root)


def build_digits_folder(root: Optional[Union[str, os.PathLike]] = None, size: int = 32) -> Path:
    """Write sklearn's digits as PNG image folders ``root/{train,validation}/<digit>/`` (once); return root.

    Images are upscaled (bicubic) to `size` px grey-as-RGB. The split is deterministic: every 5th image of
    each class is validation. Writing goes to a temp folder renamed at the end, so concurrent processes
    and interrupted runs never see a half-written folder.
    """
    root = Path(root) if root is not None else default_cache_dir() / f'digits{size}'
    if (root / 'train').is_dir() and (root / 'validation').is_dir():
        return root
    datasets = import_optional('sklearn.datasets', f'the built-in data set {DIGITS}')
    from PIL import Image
    digits = datasets.load_digits()
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


def dataset_and_root(data: str) -> Tuple[str, Optional[str]]:
    """(dataset name, root) of a command's one data argument: ``sklearn/digits`` or an image folder."""
    return (DIGITS, None) if data == DIGITS else ('', data)


def data_name(data: str) -> str:
    """How records name a command's data argument: ``sklearn/digits``, or the image folder's own name."""
    return data if data == DIGITS else (os.path.basename(os.path.normpath(data))[:100] or data[:100])


def _digits_root(root: Optional[str], what: str) -> Optional[str]:
    """`root` for the digits, refused when it holds something else (writing there would mix the two)."""
    if root is None or not os.path.exists(root):
        return root
    if not os.path.isdir(root):
        raise ValueError(f'{what} {display_path(root)}: not a folder')
    with os.scandir(root) as entries:
        empty = not any(entries)
    if not empty and not (os.path.isdir(os.path.join(root, 'train'))
                          and os.path.isdir(os.path.join(root, 'validation'))):
        raise ValueError(f'{what} {display_path(root)!r} is not a {DIGITS} folder (no train/ and validation/) and not '
                         'empty; read your own image folder as dataset "" (--dataset "")')
    return root


def _no_images(split: str, root: str, reason: str = '') -> str:
    return f'no images for split {split[:40]!r} in {display_path(root)}' + (f': {reason[:200]}' if reason else '')


def open_image_dataset(name: str, root: Optional[Union[str, os.PathLike]], split: str, *, is_training: bool = False,
                       download: bool = False, class_map: Optional[str] = None, seed: int = 42, batch_size: int = 1,
                       what: str = 'image folder') -> Any:
    """`split` of dataset `name` under `root`, without a transform (the caller sets its own).

    Args:
        name: `DIGITS` (written into `root` once; None: the cache, `default_cache_dir`), ``''`` (`root` is an image
            folder holding the split as a sub-folder, ``DIR/<split>/<class>/...``, or itself the class folders), or
            any dataset name timm's `create_dataset` knows (``torch/cifar10``, ``hfds/...``).
        root: the data's folder (see `name`).
        split: the split to open.
        is_training, download, class_map, seed, batch_size: passed to timm's `create_dataset`.
        what: how messages name `root` (e.g. ``'--data-dir'``).

    Raises:
        FileNotFoundError: `root` does not exist (and is not a download or remote cache).
        ValueError: no images in the split; no `root` for a dataset other than the digits; a non-empty `root` given
            for the digits that is not a digits folder.
    """
    from timm.data import create_dataset

    root = None if root is None else os.fspath(root)
    if name == DIGITS:
        name, root = '', os.fspath(build_digits_folder(_digits_root(root, what)))
    elif not root:
        raise ValueError(f'dataset {name[:100]!r} needs {what}; only {DIGITS!r} has a default')
    elif not os.path.exists(root) and not (name and (download or name.startswith(_REMOTE_PREFIXES))):
        raise FileNotFoundError(f'{what} {display_path(root)}: not found')
    elif name == '' and not os.path.isdir(root):
        raise ValueError(f'{what} {display_path(root)}: not a folder')
    try:
        dataset = create_dataset(name, root=root, split=split, is_training=is_training, download=download,
                                 class_map=class_map or None, seed=seed, batch_size=batch_size)
    except RuntimeError as e:  # timm's folder reader: 'Found 0 images in subfolders of ...'
        raise ValueError(_no_images(split, root, str(e))) from None
    if hasattr(dataset, '__len__') and len(dataset) == 0:
        raise ValueError(_no_images(split, root))
    if not getattr(dataset, 'load_bytes', True) and hasattr(getattr(dataset, 'reader', None), '__getitem__'):
        dataset.reader = _BombCheckingReader(dataset.reader)
    return dataset


class _BombCheckingReader:
    """A timm image reader whose files are first opened by PIL for their header: an image PIL refuses as a
    decompression bomb (more than twice ``Image.MAX_IMAGE_PIXELS``, e.g. 20000 x 20000) becomes an OSError naming the
    file, which timm's `ImageDataset` skips with a warning as it does corrupt files (it catches OSError only, so
    PIL's `DecompressionBombError` would end the run mid-epoch). Opening only reads the header; the file is rewound
    for timm."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def __getattr__(self, name: str) -> Any:  # filename(), class_to_idx, samples, ... of the wrapped reader
        if name == 'reader':  # not yet set (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.reader, name)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        img, *rest = self.reader[index]
        if isinstance(img, (str, os.PathLike)) or hasattr(img, 'seek'):
            try:
                with Image.open(img):  # a file object stays open (PIL closes only what it opened)
                    pass
            except Image.DecompressionBombError as e:
                if hasattr(img, 'close'):
                    img.close()
                name = getattr(img, 'name', img)
                raise OSError(f'{display_path(name)}: {str(e)[:200]}') from None
            except Exception:  # noqa: BLE001 -- anything else is timm's to report, on its own open
                pass
            if hasattr(img, 'seek'):
                img.seek(0)
        return (img, *rest)


def num_classes_of(dataset: Any) -> int:
    """Classes of a timm dataset (its class_to_idx or classes).

    Raises:
        ValueError: the dataset names no classes.
    """
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None) or getattr(dataset, 'class_to_idx', None)
    if class_to_idx:
        return len(class_to_idx)
    classes = getattr(dataset, 'classes', None)
    if classes:
        return len(classes)
    raise ValueError('cannot infer the number of classes of the dataset: set num_classes (--num-classes)')
