"""`timm_alphanet.data`: one opener for every command's images, with one set of refusals."""
import pytest
import torch
from PIL import Image

from timm_alphanet.data import DIGITS, data_name, dataset_and_root, num_classes_of, open_image_dataset


def _images(folder, classes=('a', 'b'), per_class=2):
    g = torch.Generator().manual_seed(0)
    for cls in classes:
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / cls / f'{i}.png')
    return folder


def test_a_folder_holds_the_split_or_is_itself_the_class_folders(tmp_path):
    _images(tmp_path / 'split' / 'train', per_class=3)
    _images(tmp_path / 'flat', classes=('a', 'b', 'c'))
    with_split = open_image_dataset('', tmp_path / 'split', 'train')
    assert len(with_split) == 6 and num_classes_of(with_split) == 2 and with_split.transform is None
    flat = open_image_dataset(*dataset_and_root(str(tmp_path / 'flat')), 'train')
    assert len(flat) == 6 and num_classes_of(flat) == 3


def test_refusals_name_the_folder_the_split_and_what_is_allowed(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'^--data-dir {tmp_path / "nope"}: not found$'):
        open_image_dataset('', tmp_path / 'nope', 'train', what='--data-dir')
    (tmp_path / 'empty' / 'train' / 'a').mkdir(parents=True)  # a class folder without images
    with pytest.raises(ValueError, match=f"^no images for split 'train' in {tmp_path / 'empty'}"):
        open_image_dataset('', tmp_path / 'empty', 'train')
    with pytest.raises(ValueError, match=f"^dataset 'torch/cifar10' needs data_dir; only '{DIGITS}' has a default"):
        open_image_dataset('torch/cifar10', None, 'train', what='data_dir')
    _images(tmp_path / 'mine')  # writing the digits into someone's images would mix the two
    with pytest.raises(ValueError, match=f'is not a {DIGITS} folder'):
        open_image_dataset(DIGITS, tmp_path / 'mine', 'train')
    with pytest.raises(ValueError, match='cannot infer the number of classes'):
        num_classes_of(object())


def test_data_arguments_and_their_names():
    assert dataset_and_root(DIGITS) == (DIGITS, None) and dataset_and_root('/data/in1k') == ('', '/data/in1k')
    assert data_name(DIGITS) == DIGITS and data_name('/data/imagenet/train/') == 'train'
