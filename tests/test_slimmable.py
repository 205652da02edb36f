"""Slimmable MobileNet V1/V2: timm's keys, each width equal to timm's own static model of that width, extraction into
plain timm models, timm's pretrained weights, bad input, and per-width MACs/params against independent counts.

timm's generic model contract for both models runs in test_models.py (TIMM_CONTRACT).
"""
import json
import os
import random
import subprocess
import sys

import pytest
import safetensors.torch
import timm
import torch
from timm.models import save_for_hf
from timm.models.efficientnet import EfficientNet, _gen_mobilenet_v1, _gen_mobilenet_v2
from torch.utils.flop_counter import FlopCounterMode

from timm_alphanet import calibrate_bn, extract_subnet
from timm_alphanet.cost import width_macs_and_params
from timm_alphanet.layers.dynamic import DynamicBatchNormAct2d, DynamicConv2d, DynamicLinear
from timm_alphanet.layers.elastic import make_elastic
from timm_alphanet.models import SlimmableMobileNet, is_supernet
from timm_alphanet.models.slimmable_mobilenet import timm_model_name
from timm_alphanet.sources import load_supernet
from timm_alphanet.spaces import WidthConfig
from timm_alphanet.testing import randomize_bn_stats
from test_hub import _hf_cache_snapshot, _random_state

# timm's own generators: the reference for "the static timm model of that width"
TIMM_GENERATORS = {'mobilenetv1': _gen_mobilenet_v1, 'mobilenetv2': _gen_mobilenet_v2}
FAMILIES = list(TIMM_GENERATORS)


def _supernet(family, **kwargs):
    return timm.create_model(f'slimmable_{family}_100', **kwargs)


def _leading_slices(state, like):
    """`state` cut to the shapes of `like` by leading slices (a second, plain implementation of the crop)."""
    return {k: v[tuple(slice(0, n) for n in like[k].shape)].clone() for k, v in state.items() if k in like}


@pytest.mark.parametrize('family', FAMILIES)
def test_keys_and_shapes_are_timms_full_width_model(family):
    model = _supernet(family)
    ref = timm.create_model(f'{family}_100').state_dict()
    got = model.state_dict()
    assert list(got) == list(ref)
    assert all(got[k].shape == ref[k].shape for k in ref)
    assert is_supernet(model) and isinstance(model, SlimmableMobileNet) and isinstance(model, EfficientNet)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear))]
    assert layers and all(isinstance(m, (DynamicConv2d, DynamicBatchNormAct2d, DynamicLinear)) for m in layers)
    assert model.active_subnet == WidthConfig(1.0, 224)


@pytest.mark.parametrize('family, width', [('mobilenetv1', 0.25), ('mobilenetv1', 0.6), ('mobilenetv1', 1.0),
                                           ('mobilenetv2', 0.35), ('mobilenetv2', 0.55), ('mobilenetv2', 1.0)])
def test_each_width_equals_timms_static_model_of_that_width(family, width):
    model = _supernet(family, num_classes=10).double().eval()
    randomize_bn_stats(model, torch.Generator().manual_seed(0))
    model.set_subnet(width)
    ref = TIMM_GENERATORS[family](f'{family}_100', width, num_classes=10).double().eval()
    ref.load_state_dict(_leading_slices(model.state_dict(), ref.state_dict()))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-10, atol=1e-10)
    if family == 'mobilenetv2':  # the stem follows timm's rounding: make_divisible(32 * w, 8), never below 90 %
        assert ref.conv_stem.out_channels == {0.35: 16, 0.55: 16, 1.0: 32}[width]


@pytest.mark.parametrize('family', FAMILIES)
def test_a_subnet_trains_only_its_channels(family):
    model = _supernet(family, num_classes=5).train()
    model.set_subnet(model.sample_subnet('min'))
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    c = model.conv_stem.active_out_channels
    assert 0 < c < model.conv_stem.out_channels
    g = model.conv_stem.weight.grad
    assert g[c:].abs().sum() == 0 and (g[:c].abs().sum((1, 2, 3)) > 0).all()
    assert model.bn1.weight.grad[c:].abs().sum() == 0
    if family == 'mobilenetv1':  # no head conv: the classifier's input width is elastic too
        last = model.blocks[-1][-1].conv_pw.active_out_channels
        assert model.classifier.weight.grad[:, last:].abs().sum() == 0
        assert model.classifier.weight.grad[:, :last].abs().sum() > 0


def test_width_not_in_the_space_names_it_and_the_allowed_ones():
    model = _supernet('mobilenetv2')
    with pytest.raises(ValueError, match=r'width 0.33 not allowed; allowed: \[0.35, 0.4, 0.45, .*, 1.0\]'):
        model.set_subnet(0.33)
    with pytest.raises(ValueError, match='width 0.33 not allowed'):
        extract_subnet(model, {'width': 0.33, 'resolution': 224})
    assert model.active_subnet == WidthConfig(1.0, 224)  # a refused subnet changes nothing


def test_widths_with_the_same_channel_counts_are_refused_naming_both():
    # timm rounds 0.25 and 0.251 of every MobileNet-V1 layer to the same multiple of 8
    with pytest.raises(ValueError, match=r'widths 0.25 and 0.251 give the same channel counts .* keep only one'):
        _supernet('mobilenetv1', space={'widths': [0.25, 0.251, 1.0]})


def test_widths_wider_than_the_stored_model_are_refused():
    with pytest.raises(ValueError, match=r'width 1.4 is wider than the stored model \(mobilenetv2_100'):
        _supernet('mobilenetv2', space={'widths': [0.5, 1.4]})
    with pytest.raises(TypeError, match='a width space must be a WidthSpace or a dict'):
        _supernet('mobilenetv2', space=[0.5, 1.0])


def test_layout_changing_arguments_are_refused():
    with pytest.raises(ValueError, match=r"keeps timm's default layout; \['depth_multiplier', 'fix_stem_head'\]"):
        _supernet('mobilenetv2', fix_stem_head=True, depth_multiplier=1.2)


def test_configurable_space_and_sampling():
    space = {'widths': [0.5, 0.75, 1.0], 'resolutions': [160, 224]}
    model = _supernet('mobilenetv2', space=space)
    assert model.space.to_dict() == space
    assert model.sample_subnet('max') == WidthConfig(1.0, 224) and model.sample_subnet('min') == WidthConfig(0.5, 160)
    rng = random.Random(0)
    assert {model.sample_subnet('random', rng).width for _ in range(100)} == {0.5, 0.75, 1.0}
    assert model.active_subnet == WidthConfig(1.0, 224)  # sampling does not switch
    with pytest.raises(ValueError, match='needs an explicit rng'):
        model.sample_subnet('random')
    with pytest.raises(ValueError, match=r"unknown subnet kind 'mid'; allowed: \['max', 'min', 'random'\]"):
        model.sample_subnet('mid')
    with pytest.raises(ValueError, match='ambiguous'):
        model.set_subnet(0.5)


def test_dropout_and_drop_path_only_inside_regularized():
    model = _supernet('mobilenetv2', num_classes=10, drop_rate=0.5, drop_path_rate=0.3).train()
    assert any(isinstance(m, timm.layers.DropPath) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    torch.testing.assert_close(model(x), model(x))  # train mode, but no dropout / drop path
    with model.regularized():
        assert not torch.allclose(model(x), model(x))
    with model.regularized(drop_rate=0.0, drop_path=False):
        torch.testing.assert_close(model(x), model(x))
    torch.testing.assert_close(model(x), model(x))
    assert model.drop_rate == 0.0


def test_reset_classifier_keeps_every_width_runnable():
    model = _supernet('mobilenetv1')
    model.reset_classifier(7)
    model.set_subnet(0.3)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_make_elastic_keeps_the_very_parameters_and_refuses_what_it_cannot_slice():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), timm.layers.BatchNormAct2d(8),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 16, 4))
    params = dict(net.named_parameters())
    x = torch.randn(2, 3, 4, 4)
    expected = net.eval()(x)
    assert make_elastic(net) is net
    assert [type(m) for m in net] == [DynamicConv2d, DynamicBatchNormAct2d, torch.nn.Flatten, DynamicLinear]
    assert all(p is params[n] for n, p in net.named_parameters()) and not any(m.training for m in net.modules())
    torch.testing.assert_close(net(x), expected)
    for bad, error, message in [
        (torch.nn.Conv2d(3, 8, 3, padding=0, bias=False), ValueError, r'0 \(Conv2d.* zero padding kernel // 2'),
        (torch.nn.Conv2d(3, 8, 1, bias=True), ValueError, 'has a bias'),
        (torch.nn.BatchNorm2d(3), TypeError, r'cannot make 0 \(BatchNorm2d\) elastic'),
    ]:
        with pytest.raises(error, match=message):
            make_elastic(torch.nn.Sequential(bad))


# ---- timm's pretrained weights

def test_pretrained_true_loads_timms_full_width_weights_from_the_hub_cache(tmp_path):
    state = _random_state(timm.create_model('mobilenetv2_100'), seed=3)
    snap = _hf_cache_snapshot(tmp_path, 'timm/mobilenetv2_100.ra_in1k')
    safetensors.torch.save_file(state, os.path.join(snap, 'model.safetensors'))
    model = _supernet('mobilenetv2', pretrained=True, cache_dir=tmp_path)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    model = _supernet('mobilenetv2', pretrained=True, cache_dir=tmp_path, num_classes=7)  # a new head
    assert model.classifier.out_features == 7 and torch.equal(model.conv_stem.weight, state['conv_stem.weight'])


def test_pretrained_offline_without_the_weights_says_where_they_come_from(tmp_path):
    with pytest.raises(RuntimeError) as e:
        _supernet('mobilenetv1', pretrained=True, cache_dir=tmp_path)
    msg = str(e.value)
    assert 'timm/mobilenetv1_100.ra4_e3600_r224_in1k' in msg and 'pretrained=False' in msg


def test_a_checkpoint_of_another_model_is_refused_naming_the_keys(tmp_path):
    def load(state):
        path = tmp_path / 'w.safetensors'
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
        return _supernet('mobilenetv2', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))

    # one width instead of the full-width supernet: same keys, smaller tensors
    with pytest.raises(ValueError, match=r'shape mismatches \(255\) blocks\.0\.0\.bn1\.bias: checkpoint '
                                         r'\(16,\) vs model \(32,\)'):
        load(timm.create_model('mobilenetv2_035').state_dict())
    with pytest.raises(ValueError, match=r'missing keys \(29\) blocks\.0\.0\.bn1\.weight, .*unexpected keys \(76\)'):
        load(timm.create_model('alphanet_a0').state_dict())
    # DDP-prefixed keys of the right model are fine
    state = _random_state(timm.create_model('mobilenetv2_100'), seed=4)
    model = load({f'module.{k}': v for k, v in state.items()})
    assert torch.equal(model.blocks[3][1].conv_pwl.weight, state['blocks.3.1.conv_pwl.weight'])


# ---- extraction into plain timm models

@pytest.mark.parametrize('family, width, name', [
    ('mobilenetv2', 0.35, 'mobilenetv2_035'), ('mobilenetv2', 0.5, 'mobilenetv2_050'),
    ('mobilenetv2', 0.75, 'mobilenetv2_075'), ('mobilenetv2', 1.0, 'mobilenetv2_100'),
    ('mobilenetv2', 0.4, 'slimmable_mobilenetv2_custom'),
    ('mobilenetv1', 1.0, 'mobilenetv1_100'), ('mobilenetv1', 0.25, 'slimmable_mobilenetv1_custom'),
])
def test_extraction_gives_timms_model_of_that_width_with_equal_logits(family, width, name):
    supernet = _supernet(family, num_classes=10).eval()
    randomize_bn_stats(supernet, torch.Generator().manual_seed(1))
    supernet.set_subnet(width)
    static = extract_subnet(supernet)
    assert type(static) is EfficientNet and static.pretrained_cfg['architecture'] == name
    assert timm_model_name(family, width) == (None if name.startswith('slimmable_') else name)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(static.eval()(x), supernet(x), rtol=1e-5, atol=1e-5)
    assert supernet.active_subnet.width == width  # extraction does not switch the supernet


def test_extracted_timm_width_loads_without_this_package(tmp_path):
    supernet = _supernet('mobilenetv2', num_classes=10).eval()
    randomize_bn_stats(supernet, torch.Generator().manual_seed(2))
    static = extract_subnet(supernet, {'width': 0.5, 'resolution': 224}).eval()
    save_for_hf(static, tmp_path / 'model', safe_serialization=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.save({'x': x, 'y': static(x)}, tmp_path / 'io.pt')
    script = (
        'import sys, timm, torch\n'
        f'm = timm.create_model("local-dir:{tmp_path / "model"}", pretrained=True).eval()\n'
        f'io = torch.load("{tmp_path / "io.pt"}", weights_only=True)\n'
        'torch.testing.assert_close(m(io["x"]), io["y"], rtol=1e-5, atol=1e-5)\n'
        'assert not any(n.startswith("timm_alphanet") for n in sys.modules)\n'
        'print(type(m).__name__, m.pretrained_cfg["architecture"])\n')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': ''}
    out = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['EfficientNet', 'mobilenetv2_050']


def test_other_widths_and_resolutions_rebuild_from_model_args(tmp_path):
    supernet = _supernet('mobilenetv1', num_classes=10, space={'widths': [0.3, 1.0], 'resolutions': [160, 224]})
    randomize_bn_stats(supernet.eval(), torch.Generator().manual_seed(3))
    static = extract_subnet(supernet, {'width': 0.3, 'resolution': 160}).eval()
    assert static.pretrained_cfg['input_size'] == (3, 160, 160) and static.pretrained_cfg['pool_size'] == (5, 5)
    save_for_hf(static, tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['architecture'] == 'slimmable_mobilenetv1_custom' and config['model_args']['width'] == 0.3
    again = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert again.pretrained_cfg['input_size'] == (3, 160, 160)
    assert again.conv_stem.out_channels == timm.create_model('slimmable_mobilenetv1_custom', width=0.3).conv_stem.out_channels
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        supernet.set_subnet({'width': 0.3, 'resolution': 160})
        torch.testing.assert_close(again(x), supernet(x), rtol=1e-5, atol=1e-5)


def test_a_saved_supernet_reopens_with_its_space(tmp_path):
    space = {'widths': [0.5, 0.75, 1.0], 'resolutions': [192, 224]}
    supernet = _supernet('mobilenetv1', num_classes=10, space=space)
    supernet.load_state_dict(_random_state(supernet, seed=5))
    save_for_hf(supernet, tmp_path, safe_serialization=True)
    again, source = load_supernet(str(tmp_path))
    assert isinstance(again, SlimmableMobileNet) and again.space == supernet.space and source.kind == 'local-dir'
    x = torch.randn(1, 3, 64, 64)
    for net in (supernet, again):
        net.eval().set_subnet({'width': 0.5, 'resolution': 192})
    torch.testing.assert_close(again(x), supernet(x))


def test_custom_width_must_be_a_positive_number():
    with pytest.raises(ValueError, match="width must be a positive number .* got 'wide'"):
        timm.create_model('slimmable_mobilenetv2_custom', width='wide')


def test_bn_calibration_of_a_subnet_equals_calibrating_its_extraction():
    supernet = _supernet('mobilenetv2', num_classes=10, space={'widths': [0.35, 1.0], 'resolutions': [64, 96]})
    g = torch.Generator().manual_seed(4)
    batches = [torch.randn(8, 3, 128, 128, generator=g) for _ in range(3)]
    arch = {'width': 0.35, 'resolution': 64}
    static = extract_subnet(supernet, arch)
    supernet.set_subnet(arch)
    assert calibrate_bn(supernet, batches, progress=False) == 3  # resizes to the active subnet's 64 px
    assert calibrate_bn(static, batches, resolution=64, progress=False) == 3
    calibrated = extract_subnet(supernet).state_dict()
    for k, v in static.state_dict().items():
        if 'running_' in k:
            torch.testing.assert_close(calibrated[k], v, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(static.bn1.running_var, torch.ones_like(static.bn1.running_var))


# ---- MACs / params per width

def _torch_count(model, resolution):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, resolution, resolution))
    return counter.get_total_flops() // 2  # FlopCounterMode counts a multiply-add as 2 FLOPs


@pytest.mark.parametrize('family, width, resolution', [
    ('mobilenetv1', 0.25, 224), ('mobilenetv1', 0.65, 160), ('mobilenetv2', 0.35, 224), ('mobilenetv2', 0.8, 192)])
def test_macs_and_params_per_width_equal_torchs_counts(family, width, resolution):
    supernet = _supernet(family, num_classes=100, space={'widths': [width, 1.0], 'resolutions': [resolution, 224]})
    arch = WidthConfig(width, resolution)
    macs, params = width_macs_and_params(supernet, arch)
    supernet.set_subnet(arch)
    static = extract_subnet(supernet)
    assert macs == _torch_count(supernet, resolution) == _torch_count(static, resolution)
    assert params == sum(p.numel() for p in static.parameters())


@pytest.mark.parametrize('family, width, mmacs, mparams', [
    # MobileNet-V1 paper (arXiv:1704.04861) Table 6 and MobileNet-V2 paper (arXiv:1801.04381) Tables 3/6, 224 px;
    # the V2 paper's parameter counts (3.4 M at 1.0) do not match its released models, so only its MACs are used
    ('mobilenetv1', 1.0, 569, 4.2), ('mobilenetv1', 0.75, 325, 2.6), ('mobilenetv1', 0.5, 149, 1.3),
    ('mobilenetv1', 0.25, 41, 0.5), ('mobilenetv2', 1.0, 300, None), ('mobilenetv2', 0.35, 59, None),
])
def test_macs_and_params_match_the_mobilenet_papers(family, width, mmacs, mparams):
    macs, params = width_macs_and_params(_supernet(family), WidthConfig(width, 224))
    assert abs(macs / 1e6 - mmacs) < 1
    assert mparams is None or round(params / 1e6, 1) == mparams


def test_checkpoint_of_another_width_is_refused_with_the_shared_filter(tmp_path):
    """The slimmable models load through the same filter as AlphaNet's: first keys named, the likely cause given."""
    path = tmp_path / 'v2_050.pth'
    torch.save(timm.create_model('mobilenetv2_050', num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r'shape mismatches.*different model or search space'):
        timm.create_model('slimmable_mobilenetv2_100', num_classes=10, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
