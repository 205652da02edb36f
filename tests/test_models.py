"""The timm model contract for every registered AlphaNet entry point, plus architecture semantics."""
import math
import random

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules, group_parameters
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import timm_alphanet
from timm_alphanet import ALPHANET_ARCHS, ALPHANET_SPACE

from timm_alphanet.testing import randomize_bn_stats
from timm_alphanet.testing.reference_alphanet import reference_forward

CUSTOM_ARCH = ALPHANET_SPACE.sample(random.Random(11))
MODELS = [f'alphanet_{n}' for n in ALPHANET_ARCHS] + ['alphanet_custom']
# the supernet (at its max subnet) must pass the same contract, except where noted in test_supernet.py
CONTRACT = MODELS + ['alphanet_supernet']
# timm's generic contract (not AlphaNet's own semantics) also covers the slimmable MobileNets (at their max width)
SLIMMABLE = ['slimmable_mobilenetv1_100', 'slimmable_mobilenetv2_100']
TIMM_CONTRACT = CONTRACT + SLIMMABLE


def _create(name, **kwargs):
    if name == 'alphanet_custom':
        kwargs.setdefault('arch', CUSTOM_ARCH.to_dict())
    return timm.create_model(name, **kwargs)


def _arch(name):
    if name in SLIMMABLE:
        return timm_alphanet.spaces.WidthConfig(width=1.0, resolution=224)
    if name == 'alphanet_supernet':
        return ALPHANET_SPACE.max_config()
    return CUSTOM_ARCH if name == 'alphanet_custom' else ALPHANET_ARCHS[name[len('alphanet_'):]]


def test_registry_lists_every_entry_point():
    assert set(MODELS) <= set(timm.list_models('alphanet_*'))
    assert sorted(timm.list_pretrained('alphanet_*')) == sorted(f'alphanet_{n}.in1k' for n in ALPHANET_ARCHS)


@pytest.mark.parametrize('name', CONTRACT)
def test_pretrained_cfg(name):
    model = _create(name)
    cfg = model.pretrained_cfg
    res = _arch(name).resolution
    assert cfg['input_size'] == (3, res, res) and cfg['pool_size'] == (math.ceil(res / 32),) * 2
    assert cfg['interpolation'] == 'bicubic' and cfg['crop_pct'] == 0.875
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg['license'] == 'cc-by-nc-4.0'
    sd = model.state_dict()
    assert cfg['first_conv'] + '.weight' in sd and cfg['classifier'] + '.weight' in sd
    if name not in ('alphanet_custom', 'alphanet_supernet'):
        assert cfg['hf_hub_id'] == f'{timm_alphanet.models.HF_HUB_ORG}/{name}.in1k'
        assert f'{model.mflops:.2f} MFLOPs' in cfg['description']


@pytest.mark.parametrize('name', TIMM_CONTRACT)
def test_forward_features_head_and_classifier_reset(name):
    model = _create(name).eval()
    res = _arch(name).resolution
    x = torch.randn(1, 3, res, res)  # batch size 1
    feats = model.forward_features(x)
    assert feats.shape == (1, model.num_features, *model.pretrained_cfg['pool_size'])
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    logits = model(x)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(feats), logits)

    model.reset_classifier(0)
    assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
    torch.testing.assert_close(model(x), pre)
    model.reset_classifier(0, '')
    out = model(x)
    assert out.shape == (1, model.head_hidden_size, *model.pretrained_cfg['pool_size'])
    model.reset_classifier(5, 'avg')
    assert model(x).shape == (1, 5)

    unpooled = _create(name, num_classes=0, global_pool='').eval()
    assert unpooled(x).shape == (1, unpooled.head_hidden_size, *model.pretrained_cfg['pool_size'])


@pytest.mark.parametrize('name', MODELS + SLIMMABLE)
def test_backward_every_parameter_gets_a_gradient(name):
    model = _create(name, num_classes=42).train()
    out = model(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', CONTRACT)
def test_matches_float64_reference_of_the_design(name):
    model = _create(name).double().eval()
    randomize_bn_stats(model, torch.Generator().manual_seed(0))
    arch = _arch(name)
    for size in (arch.resolution, 97):  # odd sizes exercise the shortcut's pooling padding
        x = torch.randn(2, 3, size, size, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference_forward(model.state_dict(), arch, ALPHANET_SPACE, x),
                                       rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('name', TIMM_CONTRACT)
def test_forward_intermediates_and_feature_info(name):
    model = _create(name).eval()
    info = model.feature_info
    assert len(info) == 5
    assert [i['reduction'] for i in info] == [2, 4, 8, 16, 32]
    x = torch.randn(1, 3, 100, 100)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 5
    for i, t in zip(info, inter):
        assert t.shape[1] == i['num_chs'] and t.shape[-1] == math.ceil(100 / i['reduction'])
    torch.testing.assert_close(final, model.forward_features(x))
    only = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True, stop_early=True)
    torch.testing.assert_close(only[0], inter[1])
    torch.testing.assert_close(only[1], inter[3])
    last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
    torch.testing.assert_close(last2[1], inter[4])
    with pytest.raises(ValueError, match='NHWC'):
        model.forward_intermediates(x, output_fmt='NHWC')

    model.set_grad_checkpointing()
    final_ckpt, _ = model.forward_intermediates(x)
    torch.testing.assert_close(final_ckpt, final)

    kept = model.prune_intermediate_layers(indices=[0, 2])
    assert kept == [0, 2]
    pruned = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    torch.testing.assert_close(pruned[1], inter[2])
    assert model(x).shape == (1, info[2]['num_chs'], 13, 13)  # pooling and classifier removed


@pytest.mark.parametrize('name', TIMM_CONTRACT)
def test_features_only(name):
    x = torch.randn(1, 3, 96, 96)
    for feature_cls in (None, 'getter'):
        kwargs = {'feature_cls': feature_cls} if feature_cls else {}
        model = _create(name, features_only=True, **kwargs).eval()
        outs = model(x)
        assert [o.shape[1] for o in outs] == model.feature_info.channels()
        assert [96 // o.shape[-1] for o in outs] == model.feature_info.reduction()
    model = _create(name, features_only=True, out_indices=(1, 4)).eval()
    assert [o.shape[1] for o in model(x)] == model.feature_info.channels()


@pytest.mark.parametrize('name', TIMM_CONTRACT)
def test_grad_checkpointing_same_outputs_and_grads(name):
    model = _create(name, num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)

    def run(checkpointing):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters()}

    out_plain, g_plain = run(False)
    out_ckpt, g_ckpt = run(True)
    torch.testing.assert_close(out_ckpt, out_plain)
    for n, g in g_plain.items():
        if g is None:  # only the supernet's unused mb1 shortcut conv (see test_supernet)
            assert g_ckpt[n] is None, n
        else:
            torch.testing.assert_close(g_ckpt[n], g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', TIMM_CONTRACT)
def test_group_matcher_covers_every_parameter(name):
    model = _create(name)
    groups = group_parameters(model, model.group_matcher())
    flat = [n for g in groups.values() for n in g]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    assert 'conv_stem.weight' in groups[min(groups)]
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) < len(groups)


@pytest.mark.parametrize('name', MODELS)
def test_in_chans_and_drop_rates(name):
    model = _create(name, in_chans=1).eval()
    assert model.conv_stem.weight.shape[1] == 1
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1000)
    model = _create(name, drop_rate=0.5, drop_path_rate=0.3).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    a = model(x)
    b = model(x)
    assert not torch.allclose(a, b)  # dropout / drop path are active in train mode
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    # drop path only on identity-shortcut blocks, with a rate growing with depth
    rates = []
    for stage in model.blocks[:-1]:
        for blk in stage:
            identity = isinstance(blk.shortcut.pool, torch.nn.Identity) and isinstance(blk.shortcut.conv, torch.nn.Identity)
            has_dp = isinstance(blk.drop_path, timm.layers.DropPath)
            assert has_dp == (identity and blk is not model.blocks[0][0])
            if has_dp:
                rates.append(blk.drop_path.drop_prob)
    assert rates == sorted(rates) and max(rates) < 0.3


@pytest.mark.parametrize('name', TIMM_CONTRACT)
def test_torchscript_matches_eager(name):
    with timm.set_scriptable(True):
        model = _create(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 65, 65)
    torch.testing.assert_close(scripted(x), model(x))


def _fx_model(model, train=False):
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize('name', TIMM_CONTRACT)
def test_fx_trace_forward_and_backward(name):
    model = _create(name, num_classes=42).eval()
    x = torch.randn(1, 3, 67, 67)
    with torch.inference_mode():
        ref = model(x)
        out = tuple(_fx_model(model)(x).values())[0]
    assert torch.equal(out, ref)
    model.train()
    fx = _fx_model(model, train=True)
    out = tuple(fx(torch.randn(2, 3, 64, 64)).values())[0]
    out.mean().backward()
    assert all(p.grad is not None for p in fx.parameters())
    feats = _create(name, features_only=True, feature_cls='fx').eval()
    assert [o.shape[1] for o in feats(x)] == feats.feature_info.channels()


@pytest.mark.parametrize('name', ['alphanet_a0', 'alphanet_custom', 'alphanet_supernet', 'slimmable_mobilenetv2_100'])
def test_torch_compile_matches_eager(name):
    model = _create(name).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_invalid_archs_raise_clear_errors():
    with pytest.raises(ValueError, match=r'widths\[1\] \(mb1\) = 20 not allowed; allowed: \[16, 24\]'):
        timm.create_model('alphanet_custom', arch={**ALPHANET_ARCHS['a0'].to_dict(),
                                                   'widths': [16, 20, 24, 32, 64, 112, 192, 216, 1792]})
    with pytest.raises(ValueError, match=r'disagree on the number of stages.*depths \[1, 3, 3\]'):
        timm.create_model('alphanet_custom', arch={**ALPHANET_ARCHS['a0'].to_dict(), 'depths': [1, 3, 3]})
    assert timm.create_model('alphanet_custom').arch == ALPHANET_SPACE.min_config()  # no arch: the smallest
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('alphanet_a7')


def test_custom_space_model():
    """A custom space (other widths, ReLU stages) builds a model whose shapes follow that space."""
    d = ALPHANET_SPACE.to_dict()
    d['mb2'] = {**d['mb2'], 'c': [24, 48], 'act_func': 'relu'}
    arch = {**ALPHANET_ARCHS['a0'].to_dict(), 'widths': [16, 16, 48, 32, 64, 112, 192, 216, 1792]}
    model = timm.create_model('alphanet_custom', arch=arch, space=d).eval()
    assert model.blocks[1][0].conv_pwl.out_channels == 48
    assert isinstance(model.blocks[1][0].bn2.act, torch.nn.ReLU)
    assert isinstance(model.blocks[2][0].bn2.act, torch.nn.SiLU)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r'widths\[2\] \(mb2\) = 48 not allowed'):
        timm.create_model('alphanet_custom', arch=arch)


# ---- careless arguments and checkpoints

def test_named_archs_refuse_an_arch_argument():
    with pytest.raises(ValueError, match=r"alphanet_a0 has a fixed arch.*alphanet_custom', arch="):
        timm.create_model('alphanet_a0', arch=ALPHANET_ARCHS['a1'].to_dict())
    # alphanet_custom takes what resolve_arch takes, names included
    assert timm.create_model('alphanet_custom', arch='a1').arch == ALPHANET_ARCHS['a1']


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_chans=0), 'in_chans must be an int >= 1'),
    (dict(in_chans=-3), 'in_chans must be an int >= 1'),
    (dict(in_chans=3.0), 'in_chans must be an int >= 1'),
    (dict(num_classes=-1), 'num_classes must be an int >= 0'),
    (dict(drop_rate=1.0), r'drop_rate must be a number in \[0, 1\)'),
    (dict(drop_rate=-0.1), 'drop_rate'),
    (dict(drop_rate=float('nan')), 'drop_rate'),
    (dict(drop_path_rate=1.5), r'drop_path_rate must be a number in \[0, 1\)'),
])
@pytest.mark.parametrize('name', ['alphanet_a0', 'alphanet_supernet'])
def test_out_of_range_arguments_are_refused(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **kwargs)


def test_numpy_numbers_are_accepted_as_arguments():
    np = pytest.importorskip('numpy')
    model = timm.create_model('alphanet_a0', num_classes=np.int64(7), in_chans=np.int32(1), drop_rate=np.float32(0.25))
    assert model.num_classes == 7 and type(model.in_chans) is int and model.drop_rate == 0.25
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_checkpoint_with_non_finite_weights_warns(tmp_path):
    source = timm.create_model('alphanet_a0', num_classes=10)
    sd = source.state_dict()
    sd['blocks.2.0.conv_dw.weight'][0, 0, 0, 0] = float('nan')
    sd['blocks.3.1.bn2.running_var'][3] = float('inf')
    path = tmp_path / 'a0.pth'
    torch.save(sd, path)
    with pytest.warns(RuntimeWarning, match=r'2 checkpoint tensors hold NaN or inf values: blocks\.2\.0\.conv_dw\.weight, blocks\.3\.1'):
        loaded = timm.create_model('alphanet_a0', num_classes=10, pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.isnan(loaded.blocks[2][0].conv_dw.weight).any()  # loaded as asked, but not silently


def test_checkpoint_of_another_model_names_the_first_keys_and_the_likely_cause(tmp_path):
    path = tmp_path / 'a6.pth'
    torch.save(timm.create_model('alphanet_a6', num_classes=10).state_dict(), path)
    with pytest.raises(ValueError) as e:
        timm.create_model('alphanet_a0', num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    msg = str(e.value)
    assert msg.startswith('the checkpoint does not fit alphanet_a0: ') and 'different model or search space' in msg
    assert 'unexpected keys (106) blocks.3.3.conv_pw.weight, blocks.3.3.bn1.weight, ' in msg and 'and 98 more' in msg
    assert 'shape mismatches (' in msg and 'blocks.2.0.bn2.bias: checkpoint (144,) vs model (96,)' in msg
    assert len(msg) < 3000
    # the classifier (other num_classes) and the stem (other in_chans) are timm's to adapt: no error for those
    loaded = timm.create_model('alphanet_a6', num_classes=5, in_chans=1, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert loaded.classifier.out_features == 5 and loaded.conv_stem.in_channels == 1
