"""The deterministic calibration recipe: disjoint seeded subsets, a strict round trip, images decoded once."""
import pytest
import torch

from timm_alphanet.calibration import CalibrationRecipe, disjoint_subsets, load_images, resize_to


def test_disjoint_subsets_are_disjoint_seeded_and_prefix_stable():
    a, b = disjoint_subsets(1000, [100, 300], seed=3)
    assert len(a) == 100 and len(b) == 300 and not set(a) & set(b)
    assert set(a) | set(b) <= set(range(1000))
    assert disjoint_subsets(1000, [100, 300], seed=3) == [a, b]  # same seed, same subsets
    assert disjoint_subsets(1000, [100, 300], seed=4)[0] != a
    # the calibration subset does not depend on how many selection images follow it
    assert disjoint_subsets(1000, [100, 5], seed=3)[0] == a


def test_disjoint_subsets_refuse_too_many_naming_the_numbers():
    with pytest.raises(ValueError, match=r'has 10 images, too few for 8 \+ 5 = 13'):
        disjoint_subsets(10, [8, 5], seed=0)


def test_recipe_round_trip_and_rejections():
    r = CalibrationRecipe(num_images=96, batch_size=32, seed=7, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert r.num_batches == 3 and CalibrationRecipe(num_images=97, batch_size=32).num_batches == 4
    assert CalibrationRecipe.from_dict(r.to_dict()) == r
    assert isinstance(r.to_dict()['mean'], list)
    with pytest.raises(ValueError, match=r"unknown calibration recipe keys \['num_image'\]"):
        CalibrationRecipe.from_dict({'num_image': 3})
    with pytest.raises(ValueError, match='batch_size must be a positive integer, got 0'):
        CalibrationRecipe(batch_size=0)
    with pytest.raises(ValueError, match="interpolation 'lanczos'"):
        CalibrationRecipe(interpolation='lanczos')


def test_load_images_keeps_index_order():
    data = [(torch.full((1, 2, 2), float(i)), i % 3) for i in range(10)]
    x, y = load_images(data, [7, 2, 5], batch_size=2, progress=False)
    assert x[:, 0, 0, 0].tolist() == [7.0, 2.0, 5.0] and y.tolist() == [1, 2, 2]


def test_resize_to_is_identity_at_size_and_bicubic_otherwise():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert resize_to(x, 8) is x
    ref = torch.nn.functional.interpolate(x, size=(5, 5), mode='bicubic', align_corners=False)
    torch.testing.assert_close(resize_to(x, 5), ref, rtol=0, atol=0)


def test_recipe_for_takes_what_is_not_given_from_the_model():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from timm_alphanet.calibration import mean_std_of, recipe_for
    from timm_alphanet.testing.tiny import tiny_supernet

    bare = torch.nn.Conv2d(3, 4, 1)  # no pretrained_cfg: timm's ImageNet defaults, the recipe's own defaults
    assert mean_std_of(bare) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert recipe_for(bare) == CalibrationRecipe()
    bare.pretrained_cfg = {'mean': [0.5] * 3, 'std': [0.25] * 3, 'crop_pct': 1.0, 'interpolation': 'bilinear',
                           'input_size': (3, 40, 40)}
    assert recipe_for(bare, seed=None, num_images=8) == CalibrationRecipe(
        num_images=8, image_size=40, interpolation='bilinear', crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    supernet = tiny_supernet(seed=0)  # a supernet calibrates at its largest resolution
    assert recipe_for(supernet).image_size == max(supernet.space.resolutions)
    with pytest.raises(ValueError, match=r"unknown calibration recipe keys \['batches'\]"):
        recipe_for(bare, batches=2)


def test_a_default_count_fits_the_split_and_an_explicit_one_is_refused_in_a_sentence():
    from timm_alphanet.calibration import calibration_images, fit_recipe

    recipe = CalibrationRecipe(num_images=2048, batch_size=4, image_size=2)
    assert fit_recipe(recipe, 10) == CalibrationRecipe(num_images=10, batch_size=4, image_size=2)
    assert fit_recipe(recipe, 4096) is recipe  # a split large enough keeps the recipe as it is
    with pytest.raises(ValueError, match='num_available must be an int >= 1, got 0'):
        fit_recipe(recipe, 0)

    class Ten:  # a split of ten images
        transform = None

        def __len__(self):
            return 10

    with pytest.raises(ValueError, match=r"^the calibration recipe asks for 2048 images of split 'train', which has "
                                         r'only 10; ask for 10 or fewer \(--calib-images 10\)$'):
        calibration_images(Ten(), recipe, progress=False)
    with pytest.raises(ValueError, match=r'^the split has 10 images, too few for 11 images; ask for at most 10'):
        disjoint_subsets(10, [11], seed=0)
