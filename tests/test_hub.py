"""Loading paths: torch.hub, timm's pretrained=True through an offline Hugging Face cache, hf-hub:, local-dir:."""
import importlib.util
import os
import random
import shutil

import pytest
import safetensors.torch
import timm
import torch
from timm.models import save_for_hf

import timm_alphanet
from timm_alphanet import ALPHANET_ARCHS, ALPHANET_SPACE

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = 'a' * 40


def _hf_cache_snapshot(cache_dir, repo_id):
    """Lay out `repo_id` the way huggingface_hub caches it, so HF_HUB_OFFLINE=1 lookups find it."""
    repo = os.path.join(cache_dir, 'models--' + repo_id.replace('/', '--'))
    os.makedirs(os.path.join(repo, 'refs'), exist_ok=True)
    with open(os.path.join(repo, 'refs', 'main'), 'w') as f:
        f.write(COMMIT)
    snap = os.path.join(repo, 'snapshots', COMMIT)
    os.makedirs(snap, exist_ok=True)
    return snap


def _random_state(model, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        t = torch.randn(v.shape, generator=g)
        if v.ndim > 1:  # keep activations in range: scale by fan-in
            t = t / v[0].numel() ** 0.5
        out[k] = t.abs() + 0.5 if k.endswith('running_var') else t
    return out


def _assert_state_equal(model, state):
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_torch_hub_local_repo():
    model = torch.hub.load(REPO_ROOT, 'alphanet_a3', source='local', num_classes=10)
    assert isinstance(model, timm_alphanet.AlphaNet)
    assert model.arch == ALPHANET_ARCHS['a3'] and model.num_classes == 10
    spec = importlib.util.spec_from_file_location('hubconf', os.path.join(REPO_ROOT, 'hubconf.py'))
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entry_points = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')]
    ours = timm.list_models('alphanet_*') + ['slimmable_mobilenetv1_100', 'slimmable_mobilenetv2_100']
    assert sorted(entry_points) == sorted(ours)  # ours only, not timm's registry
    assert hubconf.dependencies == ['torch', 'timm']


def test_pretrained_true_resolves_through_the_hub_cache(tmp_path):
    name = 'alphanet_a0'
    state = _random_state(timm.create_model(name), seed=1)
    snap = _hf_cache_snapshot(tmp_path, timm.create_model(name).pretrained_cfg['hf_hub_id'])
    safetensors.torch.save_file(state, os.path.join(snap, 'model.safetensors'))
    model = timm.create_model(name, pretrained=True, cache_dir=tmp_path)
    _assert_state_equal(model, state)
    # a new head keeps the backbone weights
    model = timm.create_model(name, pretrained=True, cache_dir=tmp_path, num_classes=7)
    assert model.classifier.out_features == 7
    assert torch.equal(model.conv_stem.weight, state['conv_stem.weight'])


def test_missing_weights_say_where_weights_come_from(tmp_path):
    with pytest.raises(RuntimeError) as e:
        timm.create_model('alphanet_a1', pretrained=True, cache_dir=tmp_path)
    msg = str(e.value)
    assert 'alphanet_a1' in msg and timm_alphanet.models.HF_HUB_ORG in msg and 'README' in msg


def test_hf_hub_and_local_dir_rebuild_a_searched_subnet(tmp_path):
    arch = ALPHANET_SPACE.sample(random.Random(5))
    src = timm.create_model('alphanet_custom', arch=arch.to_dict(), num_classes=12)
    state = _random_state(src, seed=2)
    src.load_state_dict(state)
    out = tmp_path / 'export'
    save_for_hf(src, out, safe_serialization=True)

    local = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert isinstance(local, timm_alphanet.AlphaNet) and local.arch == arch and local.num_classes == 12
    _assert_state_equal(local, state)
    assert local.pretrained_cfg['input_size'] == (3, arch.resolution, arch.resolution)

    cache = tmp_path / 'cache'
    snap = _hf_cache_snapshot(cache, 'someone/alphanet-searched')
    for f in os.listdir(out):
        shutil.copy(out / f, snap)
    hub = timm.create_model('hf-hub:someone/alphanet-searched', pretrained=True, cache_dir=cache)
    assert hub.arch == arch
    _assert_state_equal(hub, state)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(hub.eval()(x), src.eval()(x))
