import json
import random

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import timm_alphanet  # registers the models
from timm_alphanet import ALPHANET_ARCHS, ALPHANET_SPACE, count_macs_and_params, mflops, num_params

# DESIGN 1.2: MFLOPs by the official counter and params (M) of the modules that run
PUBLISHED = {
    'a0': (203.39, 8.95), 'a1': (279.24, 9.45), 'a2': (316.73, 11.15), 'a3': (356.52, 12.78),
    'a4': (443.53, 11.81), 'a5_small': (491.48, 12.97), 'a5_base': (594.79, 12.40), 'a6': (709.01, 15.15),
}


@pytest.mark.parametrize('name', list(PUBLISHED))
def test_mflops_and_params_match_the_original_counter(name):
    ref_mflops, ref_params = PUBLISHED[name]
    assert abs(mflops(ALPHANET_ARCHS[name]) - ref_mflops) <= 0.05
    assert abs(num_params(ALPHANET_ARCHS[name]) / 1e6 - ref_params) <= 0.005


def test_max_subnet_mflops():
    assert abs(mflops(ALPHANET_SPACE.max_config()) - 1939.34) <= 0.05


def test_original_dict_accepted():
    assert mflops(ALPHANET_ARCHS['a0'].to_original_dict()) == mflops(ALPHANET_ARCHS['a0'])


def _counted(model: torch.nn.Module, res: int):
    """MACs by torch's FlopCounterMode (FLOPs = 2 x MACs) and the real parameter count."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, res, res))
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', ['a0', 'a3', 'a6'])
def test_analytic_count_equals_torch_flop_counter(name):
    model = timm.create_model(f'alphanet_{name}')
    macs, params = _counted(model, ALPHANET_ARCHS[name].resolution)
    assert (macs, params) == count_macs_and_params(ALPHANET_ARCHS[name])
    assert model.mflops == pytest.approx(macs / 1e6)


def test_analytic_count_on_random_subnets_and_other_heads():
    rng = random.Random(3)
    for _ in range(3):
        arch = ALPHANET_SPACE.sample(rng)
        model = timm.create_model('alphanet_custom', arch=arch.to_dict(), num_classes=10)
        macs, params = _counted(model, arch.resolution)
        assert (macs, params) == count_macs_and_params(arch, num_classes=10)


def test_space_and_arch_given_like_everywhere_else(tmp_path):
    """`space=` takes a SearchSpace, its dict or a YAML path; `arch` a name, a dict or a file, as resolve_arch does."""
    expected = mflops(ALPHANET_ARCHS['a3'])
    path = tmp_path / 'space.yml'
    ALPHANET_SPACE.to_yaml(path)
    arch_file = tmp_path / 'a3.json'
    arch_file.write_text(json.dumps(ALPHANET_ARCHS['a3'].to_original_dict()))
    for space in (ALPHANET_SPACE, ALPHANET_SPACE.to_dict(), str(path), path):
        assert mflops(ALPHANET_ARCHS['a3'], space=space) == expected
    for arch in ('a3', 'alphanet_a3', str(arch_file), ALPHANET_ARCHS['a3'].to_original_dict()):
        assert mflops(arch) == expected
    assert count_macs_and_params('min', space=str(path)) == count_macs_and_params(ALPHANET_ARCHS['a0'])
    with pytest.raises(ValueError, match="unknown arch 'a9'"):
        mflops('a9')
    with pytest.raises(FileNotFoundError):
        mflops(ALPHANET_ARCHS['a3'], space=str(tmp_path / 'missing.yml'))


# one stage of one block, no SE: small enough to count by hand
_HAND_SPACE = {
    'resolutions': [8],
    'first_conv': {'c': [4], 'act_func': 'swish', 's': 2},
    'mb1': {'c': [4], 'd': [1], 'k': [3], 't': [1], 's': 1, 'act_func': 'swish', 'se': False},
    'last_conv': {'c': [16], 'act_func': 'swish'},
}


def test_mflops_and_num_params_take_the_classifier_size():
    space = timm_alphanet.SearchSpace.from_dict(_HAND_SPACE)
    arch = space.max_config()
    # by hand, MACs = in_chs * out_elements * k * k / groups; linear = in * out. 8 px in, stem stride 2: 4x4 after
    stem = 3 * (4 * 4 * 4) * 3 * 3 // 1           # 3x3 conv 3 -> 4 channels
    dw = 4 * (4 * 4 * 4) * 3 * 3 // 4              # expand ratio 1: no expansion conv; depthwise 3x3 on 4 channels
    pw = 4 * (4 * 4 * 4)                           # 1x1 projection 4 -> 4 (in == out: no shortcut conv)
    head = 4 * (24 * 4 * 4) + 24 * 16              # 1x1 to 6 x 4 = 24 channels, pool, 1x1 24 -> 16
    for classes in (1000, 10):
        expected = (stem + dw + pw + head + 16 * classes) / 1e6
        assert mflops(arch, space, num_classes=classes) == pytest.approx(expected, rel=0, abs=1e-12)
        macs, _ = count_macs_and_params(arch, space, num_classes=classes)
        assert mflops(arch, space, num_classes=classes) == macs / 1e6
        assert num_params(arch, space, num_classes=classes) == count_macs_and_params(arch, space, classes)[1]
    difference = mflops(arch, space) - mflops(arch, space, num_classes=10)
    assert difference == pytest.approx((1000 - 10) * 16 / 1e6, rel=0, abs=1e-12)
    assert num_params(arch, space) - num_params(arch, space, num_classes=10) == (1000 - 10) * (16 + 1)  # + bias
    # the paper's arch with a 10-class head: what a search of a 10-class supernet records
    a0 = ALPHANET_ARCHS['a0']
    assert mflops(a0, num_classes=10) == count_macs_and_params(a0, num_classes=10)[0] / 1e6
    assert mflops(a0) - mflops(a0, num_classes=10) == pytest.approx((1000 - 10) * 1792 / 1e6)
    assert mflops(a0, in_chans=1) < mflops(a0)
