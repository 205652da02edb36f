"""The elastic supernet: subnet switching, extraction equivalence, gradients, regularisation switches."""
import random

import pytest
import timm
import torch

from timm_alphanet import ALPHANET_ARCHS, ALPHANET_SPACE, SearchSpace
from timm_alphanet.export import crop_like, extract_subnet, save_pretrained
from timm_alphanet.models import AlphaNetSupernet

from timm_alphanet.testing import randomize_bn_stats
from timm_alphanet.testing.reference_alphanet import reference_forward


@pytest.fixture(scope='module')
def supernet():
    torch.manual_seed(0)
    model = timm.create_model('alphanet_supernet').eval()
    randomize_bn_stats(model, torch.Generator().manual_seed(1))
    return model


def _equivalence_archs():
    rng = random.Random(2)
    archs = {'min': ALPHANET_SPACE.min_config(), 'max': ALPHANET_SPACE.max_config(), **ALPHANET_ARCHS}
    archs.update({f'random{i}': ALPHANET_SPACE.sample(rng) for i in range(3)})
    return archs


def test_fresh_supernet_runs_its_max_subnet_and_stores_no_copies(supernet):
    fresh = timm.create_model('alphanet_supernet')
    assert isinstance(fresh, AlphaNetSupernet) and fresh.active_subnet == ALPHANET_SPACE.max_config()
    static_max = timm.create_model('alphanet_custom', arch=ALPHANET_SPACE.max_config().to_dict())
    sd, st = fresh.state_dict(), static_max.state_dict()
    # the largest static subnet's keys and shapes, plus the one first-block shortcut conv that only a
    # subnet with a narrower stem than mb1 runs (mb1 is 24 wide like the max stem)
    assert set(sd) - set(st) == {'blocks.0.0.shortcut.conv.weight'} and set(st) <= set(sd)
    assert all(sd[k].shape == v.shape for k, v in st.items())
    # one tensor per weight: no second (static) copy anywhere
    ptrs = [p.data_ptr() for p in fresh.parameters()]
    assert len(ptrs) == len(set(ptrs))
    extra = sd['blocks.0.0.shortcut.conv.weight'].numel()
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in static_max.parameters()) + extra


@pytest.mark.parametrize('name', list(_equivalence_archs()))
def test_extracted_subnet_equals_supernet_at_every_resolution(supernet, name):
    arch = _equivalence_archs()[name]
    supernet.set_subnet(arch)
    static = extract_subnet(supernet).eval()
    assert static.arch == arch and not static.training
    for res in ALPHANET_SPACE.resolutions:
        x = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(res))
        with torch.no_grad():
            diff = (supernet(x) - static(x)).abs().max().item()
        assert diff <= 1e-5, (name, res, diff)


@pytest.mark.parametrize('name', ['min', 'a3'])
def test_supernet_matches_float64_reference(supernet, name):
    arch = _equivalence_archs()[name]
    model = timm.create_model('alphanet_supernet').double().eval()
    model.load_state_dict(supernet.state_dict())
    model.set_subnet(arch)
    x = torch.randn(2, 3, 97, 97, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(model.state_dict(), arch, ALPHANET_SPACE, x),
                                   rtol=1e-9, atol=1e-9)


def test_set_subnet_validates_and_accepts_original_dicts(supernet):
    supernet.set_subnet(ALPHANET_ARCHS['a2'].to_original_dict())
    assert supernet.active_subnet == ALPHANET_ARCHS['a2']
    bad = {**ALPHANET_ARCHS['a2'].to_dict(), 'kernel_sizes': [3, 3, 7, 3, 3, 3, 3]}
    with pytest.raises(ValueError, match=r'kernel_sizes\[2\] \(mb3\) = 7 not allowed; allowed: \[3, 5\]'):
        supernet.set_subnet(bad)
    assert supernet.active_subnet == ALPHANET_ARCHS['a2']  # a rejected arch changes nothing
    assert supernet.mflops == pytest.approx(316.73, abs=0.01)
    supernet.set_subnet('min')  # names resolve like everywhere else
    assert supernet.active_subnet == ALPHANET_SPACE.min_config()


def test_sample_subnet(supernet):
    supernet.set_subnet(ALPHANET_ARCHS['a1'])
    assert supernet.sample_subnet('max') == ALPHANET_SPACE.max_config()
    assert supernet.sample_subnet('min') == ALPHANET_SPACE.min_config()
    a = [supernet.sample_subnet('random', random.Random(4)) for _ in range(2)]
    assert a[0] == a[1] and ALPHANET_SPACE.contains(a[0])
    assert supernet.active_subnet == ALPHANET_ARCHS['a1']  # sampling does not switch
    with pytest.raises(ValueError, match='explicit rng'):
        supernet.sample_subnet('random')
    with pytest.raises(ValueError, match=r"unknown subnet kind 'medium'; allowed: \['max', 'min', 'random'\]"):
        supernet.sample_subnet('medium')


def test_gradients_max_and_min_subnets():
    model = timm.create_model('alphanet_supernet', num_classes=42).train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    # the only tensor the max subnet does not run: mb1's first shortcut conv (24 -> 24 is the identity)
    assert no_grad == {'blocks.0.0.shortcut.conv.weight'}
    model.zero_grad(set_to_none=True)
    model.set_subnet(ALPHANET_SPACE.min_config())  # stem 16 -> mb1 16: still identity; a0 also skips blocks
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads['blocks.4.2.conv_dw.weight'] is not None and grads['blocks.4.3.conv_dw.weight'] is None
    # sliced weights get gradients only in the active slice
    g = grads['blocks.4.0.conv_pwl.weight']
    assert g[:112].abs().sum() > 0 and g[112:].abs().sum() == 0
    g = grads['blocks.4.0.conv_dw.weight']  # k=3 of the stored 5x5: centre only
    assert g[:, :, 1:4, 1:4].abs().sum() > 0 and g[:, :, 0].abs().sum() == 0
    model.zero_grad(set_to_none=True)
    narrow_stem = {**ALPHANET_SPACE.min_config().to_dict(), 'widths': [16, 24, 24, 32, 64, 112, 192, 216, 1792]}
    model.set_subnet(narrow_stem)
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert dict(model.named_parameters())['blocks.0.0.shortcut.conv.weight'].grad is not None


def test_train_mode_uses_batch_stats_and_updates_only_active_slices():
    model = timm.create_model('alphanet_supernet', bn_momentum=0.5).train()
    model.set_subnet(ALPHANET_SPACE.min_config())
    before = model.blocks[4][0].bn3.running_mean.clone()
    model(torch.randn(4, 3, 64, 64))
    after = model.blocks[4][0].bn3.running_mean
    assert not torch.equal(after[:112], before[:112]) and torch.equal(after[112:], before[112:])
    assert torch.equal(model.blocks[4][5].bn3.running_mean, torch.zeros(128))  # disabled block untouched


def test_dropout_and_drop_path_only_when_switched_on():
    model = timm.create_model('alphanet_supernet', drop_rate=0.5, drop_path_rate=0.5, num_classes=10).train()
    x = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(model(x), model(x))  # a plain train() forward uses neither
    with model.regularized():
        assert model.drop_rate == 0.5
        a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    assert model.drop_rate == 0.
    # drop path lives only in the last two stages, as in the original recipe
    has_dp = [any(isinstance(b.drop_path, timm.layers.DropPath) for b in stage) for stage in model.blocks[:-1]]
    assert has_dp == [False] * 5 + [True, True]
    with model.regularized(drop_rate=0.0):  # drop path alone
        c, d = model(x), model(x)
    assert not torch.allclose(c, d)


def test_custom_space_from_original_yaml(tmp_path):
    yaml_text = """
supernet_config:
    use_v3_head: True
    resolutions: [64, 96]
    first_conv: {c: [8, 16], act_func: 'swish', s: 2}
    mb1: {c: [8, 16], d: [1, 2], k: [3], t: [1], s: 1, act_func: 'swish', se: False}
    mb2: {c: [16, 24], d: [1, 2], k: [3, 5], t: [3, 4], s: 2, act_func: 'swish', se: True}
    last_conv: {c: [64, 96], act_func: 'swish'}
"""
    path = tmp_path / 'space.yml'
    path.write_text(yaml_text)
    model = timm.create_model('alphanet_supernet', space=str(path), num_classes=5).eval()
    space = SearchSpace.from_yaml(path)
    assert model.space == space and model.active_subnet == space.max_config()
    randomize_bn_stats(model, torch.Generator().manual_seed(0))
    # config.json records the space itself (not the YAML path), so local-dir:/hf-hub: rebuild it anywhere
    save_pretrained(model, tmp_path / 'supernet')
    path.unlink()
    loaded = timm.create_model(f'local-dir:{tmp_path / "supernet"}', pretrained=True).eval()
    assert isinstance(loaded, AlphaNetSupernet) and loaded.space == space
    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(loaded(x), model(x))
    rng = random.Random(0)
    for _ in range(4):
        arch = space.sample(rng)
        model.set_subnet(arch)
        static = extract_subnet(model).eval()
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        torch.testing.assert_close(model(x), static(x), rtol=0, atol=1e-5)


def test_crop_like():
    w = torch.arange(2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
    c = crop_like(w, torch.Size([1, 2, 3, 3]))
    assert torch.equal(c, w[:1, :2, 1:4, 1:4])
    assert torch.equal(crop_like(torch.arange(6), torch.Size([4])), torch.arange(4))
    with pytest.raises(ValueError, match='too small'):
        crop_like(w, torch.Size([3, 3, 3, 3]))


def test_supernet_rejects_arch_kwarg():
    with pytest.raises(ValueError, match='takes no arch'):
        timm.create_model('alphanet_supernet', arch=ALPHANET_ARCHS['a0'].to_dict())


# ---- one block forward; the input's channels are checked

# expand ratio 1 or 4 in mb2: a subnet at t=1 skips the stored expansion conv
ELASTIC_SPACE = {
    'resolutions': [32, 48],
    'first_conv': {'c': [8, 16], 's': 2},
    'mb1': {'c': [8, 16], 'd': [1, 2], 'k': [3], 't': [1], 's': 1, 'se': False},
    'mb2': {'c': [16, 24], 'd': [1, 3], 'k': [3, 5], 't': [1, 4], 's': 2, 'se': True},
    'mb3': {'c': [24], 'd': [1, 2], 'k': [3], 't': [2], 's': 1, 'se': False},
    'last_conv': {'c': [32, 48]},
}
# stem 16 -> mb1 8 (shortcut conv on), mb2 at t=1 and depth 1 of 3, mb3 24 -> 24 (identity shortcut)
ELASTIC_ARCH = {'resolution': 32, 'widths': [16, 8, 24, 24, 32], 'depths': [1, 1, 2], 'kernel_sizes': [3, 5, 3],
                'expand_ratios': [1, 1, 2]}


def test_the_elastic_block_has_no_forward_of_its_own():
    from timm_alphanet.layers.blocks import MBConv
    from timm_alphanet.layers.dynamic_blocks import DynamicMBConv
    assert DynamicMBConv.forward is MBConv.forward


def _elastic_supernet(**kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model('alphanet_supernet', space=ELASTIC_SPACE, num_classes=7, **kwargs).eval()
    randomize_bn_stats(model, torch.Generator().manual_seed(2))
    model.set_subnet(ELASTIC_ARCH)
    return model


def test_switched_off_layers_and_shallow_stages_match_the_static_subnet_and_the_reference():
    model = _elastic_supernet().double()
    arch = model.active_subnet
    block = model.blocks[1][0]
    assert not block.conv_pw.enabled and not block.bn1.enabled  # stored (t=4 max) but off at t=1
    assert model.blocks[0][0].shortcut.conv.enabled and not model.blocks[2][0].shortcut.conv.enabled
    assert [s.depth for s in model.blocks[:-1]] == [1, 1, 2]
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, reference_forward(model.state_dict(), arch, model.space, x),
                                   rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out, extract_subnet(model).eval()(x), rtol=1e-9, atol=1e-9)


def test_torchscript_fx_and_compile_run_the_active_subnet_and_check_channels():
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    with timm.set_scriptable(True):
        model = _elastic_supernet()
    x, grey = torch.randn(2, 3, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = extract_subnet(model).eval()(x)
        tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                      param_shapes_constant=True)
        _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
        fx = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer)
        variants = {'script': torch.jit.script(model), 'fx': lambda t: next(iter(fx(t).values())),
                    'compile': torch.compile(model)}
        for name, run in variants.items():
            torch.testing.assert_close(run(x), expected, rtol=1e-5, atol=1e-6, msg=name)
            with pytest.raises(Exception, match=r'\(batch, 3, height, width\).*\[2, 1, 32, 32\]'):
                run(grey)


@pytest.mark.parametrize('name', ['alphanet_supernet', 'alphanet_a0'])
def test_wrong_input_channels_raise_naming_both_counts(name):
    model = timm.create_model(name, num_classes=5).eval()
    grey = torch.randn(1, 1, 64, 64)
    with pytest.raises(ValueError, match=r'\(batch, 3, height, width\) images \(in_chans=3\).*\[1, 1, 64, 64\]'):
        model(grey)
    with pytest.raises(ValueError, match='in_chans=3'):
        model.forward_intermediates(grey)
    with pytest.raises(ValueError, match=r'in_chans=3.*\[1, 4, 64, 64\]'):  # more channels than in_chans, too
        model.forward_features(torch.randn(1, 4, 64, 64))
    features = timm.create_model(name, features_only=True, out_indices=(0, 1)).eval()  # calls the stem directly
    with pytest.raises(RuntimeError, match='expected input.*to have 3 channels, but got 1'):
        features(grey)
    one = timm.create_model(name, num_classes=5, in_chans=1).eval()
    assert one(grey).shape == (1, 5)


def test_drop_path_only_on_active_identity_shortcuts_and_only_when_regularized():
    model = _elastic_supernet(drop_path_rate=0.5, drop_path_stages=3)  # every stage
    blocks = {(si, j): b for si, stage in enumerate(model.blocks[:-1]) for j, b in enumerate(stage)}
    # the very first block has rate 0 (rates grow with depth), so timm's builder gave it no DropPath at all
    rates = lambda: {k: getattr(b.drop_path, 'drop_prob', 0.0) for k, b in blocks.items()}  # noqa: E731
    assert set(rates().values()) == {0.0}
    with model.regularized():
        on = {k for k, r in rates().items() if r > 0}
        # ELASTIC_ARCH: mb2's first block is strided, mb3's is 24 -> 24 (identity); blocks past a stage's depth keep
        # the settings of the last subnet that ran them (the max one: 16 -> 16 and 24 -> 24, identities)
        assert on == {(0, 1), (1, 1), (1, 2), (2, 0), (2, 1)}
        model.set_subnet({**ELASTIC_ARCH, 'widths': [16, 8, 16, 24, 32]})  # switching inside: mb3 now 16 -> 24
        assert rates()[(2, 0)] == 0 and rates()[(2, 1)] > 0
    assert set(rates().values()) == {0.0}


def test_switching_subnets_bypasses_module_setattr_but_not_its_effect(supernet, monkeypatch):
    """set_subnet writes ~200 plain attributes per subnet, five times a sandwich step: not through
    nn.Module.__setattr__ (which checks every value for a parameter, buffer or module), yet every layer sees them."""
    calls = []
    original = torch.nn.Module.__setattr__

    def counting(self, name, value):
        calls.append(name)
        original(self, name, value)
    monkeypatch.setattr(torch.nn.Module, '__setattr__', counting)
    arch = supernet.space.min_config()
    supernet.set_subnet(arch)
    with supernet.regularized():
        pass
    assert len(calls) < 20, len(calls)  # the stem, depths and head only
    monkeypatch.undo()
    x = torch.randn(2, 3, arch.resolution, arch.resolution)
    static = extract_subnet(supernet, arch).eval()
    torch.testing.assert_close(supernet.eval()(x), static(x), rtol=1e-5, atol=1e-5)
    supernet.set_subnet(supernet.space.max_config())
