"""Reading original AlphaNet/AttentiveNAS checkpoints safely and converting their keys."""
import argparse
import hashlib
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from timm_alphanet.original import (
    UnsafeCheckpointError, check_converted_state_dict, convert_original_state_dict, layout_from_supernet_config,
    read_original_checkpoint, restricted_pickle)
from timm_alphanet.testing.original_ckpt import (
    ALPHANET_SUPERNET_CONFIG, SMALL_SUPERNET_CONFIG, load_manifest, original_manifest, state_dict_digest,
    write_malicious_checkpoint, write_original_checkpoint)

DATA = Path(__file__).parent / 'data'
REFERENCE = json.loads((DATA / 'original_reference.json').read_text())
SHARED_MANIFEST = Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'original_supernet_keys.json'

ALPHANET_DEPTHS = (2, 5, 6, 6, 8, 8, 2)


def _pickle_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return b''.join(z.read(n) for n in z.namelist() if n.endswith('.pkl'))
    return path.read_bytes()


def _assert_plain(obj):
    """Only built-in containers: the utils.config stubs must not leak out."""
    assert type(obj) in (dict, list, tuple, str, int, float, bool, type(None)), type(obj)
    if isinstance(obj, dict):
        for v in obj.values():
            _assert_plain(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _assert_plain(v)


# ---------------------------------------------------------------------------------------------------------
# reading
@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_read_original_checkpoint(tmp_path, legacy):
    path = tmp_path / 'ckpt.pth.tar'
    written = write_original_checkpoint(path, seed=3, legacy=legacy, supernet_config=SMALL_SUPERNET_CONFIG)
    assert zipfile.is_zipfile(path) is not legacy
    raw = _pickle_bytes(path)
    assert b'utils.config' in raw and b'Config' in raw and b'AttrDict' in raw  # really pickled as the original
    assert 'utils.config' not in sys.modules  # the helper's fake modules are gone again

    ckpt = read_original_checkpoint(path)
    assert list(ckpt['state_dict']) == [k[len('module.'):] for k in written]
    for key, tensor in written.items():
        loaded = ckpt['state_dict'][key[len('module.'):]]
        assert loaded.dtype == tensor.dtype and torch.equal(loaded, tensor), key
    args = ckpt['args']
    _assert_plain(args)
    assert args['supernet_config'] == SMALL_SUPERNET_CONFIG
    assert args['lr_scheduler'] == {'method': 'warmup_cosine_lr', 'base_lr': 0.1, 'clamp_lr_percent': 0.0}
    assert ckpt['epoch'] == 360
    assert set(ckpt) >= {'state_dict', 'args', 'epoch', 'optimizer', 'lr_scheduler'}
    assert torch.equal(ckpt['optimizer']['state'][0]['momentum_buffer'], torch.full((16, 3, 3, 3), 0.5))


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_read_from_file_object(tmp_path, legacy):
    path = tmp_path / 'ckpt.pth'
    written = write_original_checkpoint(path, seed=1, legacy=legacy, supernet_config=SMALL_SUPERNET_CONFIG)
    with open(path, 'rb') as f:
        ckpt = read_original_checkpoint(f)
    assert len(ckpt['state_dict']) == len(written)


@pytest.mark.parametrize('wrap', ['bare', 'bare_prefixed', 'state_dict', 'model', 'namespace_args'])
def test_read_other_layouts(tmp_path, wrap):
    sd = {'conv.weight': torch.randn(4, 3, 1, 1), 'bn.num_batches_tracked': torch.tensor(5)}
    obj = {
        'bare': sd,
        'bare_prefixed': {'module.' + k: v for k, v in sd.items()},
        'state_dict': {'state_dict': sd, 'epoch': 7},
        'model': {'model': sd},
        'namespace_args': {'model': sd, 'args': argparse.Namespace(lr=0.1, arch='x', sizes=[1, 2])},
    }[wrap]
    torch.save(obj, tmp_path / 'x.pth')
    ckpt = read_original_checkpoint(tmp_path / 'x.pth')
    assert list(ckpt['state_dict']) == list(sd)
    assert all(torch.equal(ckpt['state_dict'][k], v) for k, v in sd.items())
    if wrap == 'namespace_args':
        assert ckpt['args'] == {'lr': 0.1, 'arch': 'x', 'sizes': [1, 2]}
        _assert_plain(ckpt['args'])
    else:
        assert ckpt['args'] is None
    assert ckpt['epoch'] == (7 if wrap == 'state_dict' else None)


@pytest.mark.filterwarnings('ignore::FutureWarning')  # torch.jit is deprecated; still makes the archive
def test_torchscript_archive_is_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / 'ts.pt')
    with pytest.raises(ValueError, match='TorchScript archive'):
        read_original_checkpoint(tmp_path / 'ts.pt')


def test_read_without_state_dict_raises(tmp_path):
    torch.save({'epoch': 1, 'weights': [1, 2]}, tmp_path / 'x.pth')
    with pytest.raises(ValueError, match="no state dict found.*'epoch', 'weights'"):
        read_original_checkpoint(tmp_path / 'x.pth')


# ---------------------------------------------------------------------------------------------------------
# refusing code
@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_malicious_checkpoint_is_refused_before_running(tmp_path, legacy):
    path, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    write_malicious_checkpoint(path, marker, legacy=legacy)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load global 'builtins\.exec'") as info:
        read_original_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_malicious_checkpoint_does_run_code_when_fully_unpickled(tmp_path):
    # guards the test above: the payload is real
    path, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    write_malicious_checkpoint(path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize('target', [
    os.system, eval, exec, getattr, __import__, torch.load, torch.hub.load, pickle.loads, open,
], ids=lambda f: getattr(f, '__qualname__', str(f)))
def test_restricted_unpickler_refuses_callables(target):
    data = pickle.dumps(_Reduce(target, ('x',)), protocol=2)
    with pytest.raises(UnsafeCheckpointError, match='refusing to load global'):
        restricted_pickle.loads(data)


def test_restricted_unpickler_allows_plain_data():
    obj = {'a': [1, 2.5, 'x', b'bytes', (3, None)], 'b': {1, 2}, 'c': torch.float16, 'd': torch.Size([2, 3])}
    assert restricted_pickle.loads(pickle.dumps(obj, protocol=2)) == obj


def test_restricted_unpickler_allows_numpy_scalars_only():
    np = pytest.importorskip('numpy')
    obj = {'best_acc': np.float64(77.5), 'step': np.int64(3), 'half': np.float16(0.5), 'flag': np.bool_(True),
           'z': np.complex64(1 - 2j)}
    loaded = restricted_pickle.loads(pickle.dumps(obj, protocol=2))
    assert loaded['best_acc'] == 77.5 and loaded['step'] == 3 and loaded['half'] == 0.5 and loaded['flag']
    assert loaded['z'] == 1 - 2j
    assert {k: type(v) for k, v in loaded.items()} == {k: type(v) for k, v in obj.items()}
    # issue 13 item 1: numpy arrays need numpy's dtype/ndarray/_reconstruct, with which a file can forge
    # object pointers; original checkpoints never hold arrays, so they are refused
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load global 'numpy\._?core\.multiarray\._reconstruct'"):
        restricted_pickle.loads(pickle.dumps({'hist': np.arange(4, dtype=np.float32)}, protocol=2))
    for value in (np.array([None], dtype=object)[0:1], np.str_('x'), np.datetime64('2020-01-01')):
        with pytest.raises(UnsafeCheckpointError, match='refusing'):
            restricted_pickle.loads(pickle.dumps(value, protocol=2))


# ---------------------------------------------------------------------------------------------------------
# conversion
def test_layout_from_supernet_config():
    assert layout_from_supernet_config(ALPHANET_SUPERNET_CONFIG) == (ALPHANET_DEPTHS, tuple(range(7)))
    # mb2 maps 16 -> 16 only, so its first block's shortcut conv never runs
    assert layout_from_supernet_config(SMALL_SUPERNET_CONFIG) == ((2, 2, 3), (0, 2))


def test_full_alphanet_checkpoint(tmp_path):
    """The full 24M-value supernet: manifest, regenerated reference weights, read and convert."""
    manifest = original_manifest()
    if SHARED_MANIFEST.exists():  # the manifest measured on the original model
        assert manifest == load_manifest(SHARED_MANIFEST)
    listed = [[k[len('module.'):], list(s), str(d).replace('torch.', '')] for k, s, d in manifest]
    assert hashlib.sha256(json.dumps(listed).encode()).hexdigest() == REFERENCE['checkpoint']['manifest_sha256']
    assert len(manifest) == REFERENCE['checkpoint']['num_keys'] == 1468

    path = tmp_path / 'alphanet.pth.tar'
    written = write_original_checkpoint(path, seed=REFERENCE['checkpoint']['seed'], legacy=True)
    # the reference logits were computed by the original code from exactly these tensors
    assert state_dict_digest(written) == REFERENCE['checkpoint']['state_dict_sha256']

    ckpt = read_original_checkpoint(path)
    depths, shortcut_stages = layout_from_supernet_config(ckpt['args']['supernet_config'])
    assert depths == ALPHANET_DEPTHS
    converted = convert_original_state_dict(ckpt['state_dict'], depths, shortcut_stages)

    keys = list(ckpt['state_dict'])
    bn_tracking = [k for k in keys if '.bn_tracking.' in k]
    shortcuts = [k for k in keys if k.endswith('shortcut.conv.conv.weight')]
    assert len(bn_tracking) == 111 * 6  # 111 dynamic BNs, each with two unused trackers of 3 buffers
    assert len(shortcuts) == 37
    # every key is mapped or deliberately dropped: bn_tracking and the 30 shortcuts of non-first blocks
    assert len(converted) == len(keys) - len(bn_tracking) - (37 - 7) == 772
    assert not any('bn_tracking' in k for k in converted)
    assert sum(t.numel() for t in converted.values()) == sum(
        t.numel() for k, t in ckpt['state_dict'].items() if k not in bn_tracking) - sum(
        ckpt['state_dict'][f'blocks.{n}.shortcut.conv.conv.weight'].numel()
        for n in range(37) if n not in (0, 2, 7, 13, 19, 27, 35))
    assert sorted(k for k in converted if 'shortcut' in k) == [f'blocks.{s}.0.shortcut.conv.weight' for s in range(7)]

    sd = ckpt['state_dict']
    expected_pairs = {
        'conv_stem.weight': 'first_conv.conv.conv.weight',
        'bn1.running_var': 'first_conv.bn.bn.running_var',
        'bn1.num_batches_tracked': 'first_conv.bn.bn.num_batches_tracked',
        'blocks.0.0.conv_dw.weight': 'blocks.0.mobile_inverted_conv.depth_conv.conv.conv.weight',
        'blocks.0.1.bn3.bias': 'blocks.1.mobile_inverted_conv.point_linear.bn.bn.bias',
        'blocks.1.0.conv_pw.weight': 'blocks.2.mobile_inverted_conv.inverted_bottleneck.conv.conv.weight',
        'blocks.1.0.bn1.weight': 'blocks.2.mobile_inverted_conv.inverted_bottleneck.bn.bn.weight',
        'blocks.1.0.shortcut.conv.weight': 'blocks.2.shortcut.conv.conv.weight',
        'blocks.1.4.bn2.running_mean': 'blocks.6.mobile_inverted_conv.depth_conv.bn.bn.running_mean',
        'blocks.2.0.se.fc1.weight': 'blocks.7.mobile_inverted_conv.depth_conv.se.fc.reduce.weight',
        'blocks.2.0.se.fc2.bias': 'blocks.7.mobile_inverted_conv.depth_conv.se.fc.expand.bias',
        'blocks.4.7.conv_pwl.weight': 'blocks.26.mobile_inverted_conv.point_linear.conv.conv.weight',
        'blocks.6.1.se.fc1.bias': 'blocks.36.mobile_inverted_conv.depth_conv.se.fc.reduce.bias',
        'blocks.7.0.conv.weight': 'last_conv.final_expand_layer.conv.conv.weight',
        'blocks.7.0.bn1.running_var': 'last_conv.final_expand_layer.bn.bn.running_var',
        'conv_head.weight': 'last_conv.feature_mix_layer.conv.conv.weight',
        'classifier.weight': 'classifier.linear.linear.weight',
        'classifier.bias': 'classifier.linear.linear.bias',
    }
    for ours, theirs in expected_pairs.items():
        assert converted[ours] is sd[theirs], ours
    assert 'blocks.0.0.conv_pw.weight' not in converted  # t = 1: no expansion conv
    assert 'blocks.1.0.se.fc1.weight' not in converted  # mb2 has no SE


def test_convert_small_custom_space(tmp_path):
    write_original_checkpoint(tmp_path / 'c.pth', seed=0, supernet_config=SMALL_SUPERNET_CONFIG)
    ckpt = read_original_checkpoint(tmp_path / 'c.pth')
    depths, shortcut_stages = layout_from_supernet_config(ckpt['args']['supernet_config'])
    converted = convert_original_state_dict(ckpt['state_dict'], depths, shortcut_stages)
    assert [k for k in converted if 'shortcut' in k] == ['blocks.0.0.shortcut.conv.weight',
                                                         'blocks.2.0.shortcut.conv.weight']
    assert converted['blocks.3.0.conv.weight'].shape == (6 * 32, 32, 1, 1)  # head expansion after 3 stages
    assert converted['blocks.2.2.conv_dw.weight'] is ckpt['state_dict'][
        'blocks.6.mobile_inverted_conv.depth_conv.conv.conv.weight']
    # default shortcut_stages=None keeps every stage's first-block shortcut
    assert 'blocks.1.0.shortcut.conv.weight' in convert_original_state_dict(ckpt['state_dict'], depths)


def _small_state_dict():
    return {k: torch.zeros(s, dtype=d) for k, s, d in original_manifest(SMALL_SUPERNET_CONFIG)}


def test_convert_reports_unrecognised_keys():
    sd = _small_state_dict()
    sd['module.blocks.1.mobile_inverted_conv.depth_conv.conv.5to3_matrix'] = torch.eye(9)
    sd['module.foo.bar'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r'not recognised') as info:
        convert_original_state_dict(sd, (2, 2, 3))
    msg = str(info.value)
    assert 'blocks.1.mobile_inverted_conv.depth_conv.conv.5to3_matrix' in msg and 'foo.bar' in msg


def test_convert_reports_blocks_beyond_stage_depths():
    with pytest.raises(ValueError, match=r'blocks\.6\.mobile_inverted_conv.*stage_depths give 6 blocks'):
        convert_original_state_dict(_small_state_dict(), (2, 2, 2))


@pytest.mark.parametrize('depths', [(), (2, 0, 3), (2.0, 2, 3), ('2', 2, 3)])
def test_convert_rejects_bad_stage_depths(depths):
    with pytest.raises(ValueError, match='stage_depths'):
        convert_original_state_dict(_small_state_dict(), depths)


def test_convert_rejects_duplicate_prefixed_keys():
    sd = {'module.classifier.linear.linear.bias': torch.zeros(2), 'classifier.linear.linear.bias': torch.zeros(2)}
    with pytest.raises(ValueError, match="both 'classifier.linear.linear.bias'"):
        convert_original_state_dict(sd, (1,))


def test_check_converted_state_dict_names_problems():
    converted = convert_original_state_dict(_small_state_dict(), (2, 2, 3), (0, 2))
    target = {k: torch.empty(v.shape) for k, v in converted.items()}
    check_converted_state_dict(converted, target)  # exact match passes

    broken = dict(converted)
    del broken['blocks.2.1.se.fc2.weight']
    broken['blocks.9.0.extra'] = torch.zeros(1)
    target['conv_stem.weight'] = torch.empty(8, 3, 3, 3)
    with pytest.raises(ValueError) as info:
        check_converted_state_dict(broken, target)
    msg = str(info.value)
    assert 'missing keys (1) blocks.2.1.se.fc2.weight' in msg
    assert 'unexpected keys (1) blocks.9.0.extra' in msg
    assert 'conv_stem.weight: checkpoint (16, 3, 3, 3) vs model (8, 3, 3, 3)' in msg


def test_check_converted_state_dict_accepts_a_module():
    model = torch.nn.Sequential()
    model.add_module('classifier', torch.nn.Linear(4, 2))
    check_converted_state_dict({'classifier.weight': torch.zeros(2, 4), 'classifier.bias': torch.zeros(2)}, model)
    with pytest.raises(ValueError, match='missing keys .* classifier.bias'):
        check_converted_state_dict({'classifier.weight': torch.zeros(2, 4)}, model)


# ---------------------------------------------------------------------------------------------------------
# reference data from the original code
def test_reference_file():
    assert (DATA / 'original_reference.json').stat().st_size < 200_000
    names = [c['name'] for c in REFERENCE['cases']]
    assert names == ['min', 'max', 'a3', 'random', 'a0_input_224']
    for case in REFERENCE['cases']:
        logits = torch.tensor(case['logits'])
        assert logits.shape == (2, 1000)
        torch.testing.assert_close(logits.double().sum(1), torch.tensor(case['logits_sum'], dtype=torch.float64))
        assert logits.argmax(1).tolist() == case['argmax']
        assert case['input']['shape'][2] == (224 if case['name'] == 'a0_input_224' else case['arch']['resolution'])
    flops = {k: round(v, 2) for k, v in REFERENCE['mflops_original_counter'].items()}
    assert flops == {'a0': 203.39, 'a1': 279.24, 'a2': 316.73, 'a3': 356.52, 'a4': 443.53, 'a5_small': 491.48,
                     'a5_base': 594.79, 'a6': 709.01, 'max': 1939.34, 'min': 203.39}


def _crop_like(src: torch.Tensor, shape) -> torch.Tensor:
    """Leading slice of channel dims, centre crop of kernel dims (how a subnet shares supernet weights)."""
    offsets = [(src.shape[d] - n) // 2 if src.ndim == 4 and d >= 2 else 0 for d, n in enumerate(shape)]
    return src[tuple(slice(o, o + n) for o, n in zip(offsets, shape))]


def _reference_input(case) -> torch.Tensor:
    g = torch.Generator().manual_seed(case['input']['generator_seed'])
    x = torch.randn(case['input']['shape'], generator=g)
    res = case['arch']['resolution']
    if x.shape[-1] != res:  # the original resizes inside forward; ours leaves that to the caller
        x = torch.nn.functional.interpolate(x, size=res, mode='bicubic', align_corners=False)
    return x


def test_static_subnets_match_original_logits(tmp_path):
    """Converted weights, cropped into our static AlphaNet, give the original code's logits."""
    from timm_alphanet.models import AlphaNet
    path = tmp_path / 'alphanet.pth.tar'
    write_original_checkpoint(path, seed=REFERENCE['checkpoint']['seed'], legacy=True)
    ckpt = read_original_checkpoint(path)
    layout = layout_from_supernet_config(ckpt['args']['supernet_config'])
    converted = convert_original_state_dict(ckpt['state_dict'], *layout)
    for case in REFERENCE['cases']:
        model = AlphaNet(arch=case['arch']).eval()
        target = model.state_dict()
        assert not [k for k in target if k not in converted], case['name']
        model.load_state_dict({k: _crop_like(converted[k], v.shape) for k, v in target.items()})
        with torch.no_grad():
            logits = model(_reference_input(case))
        torch.testing.assert_close(logits, torch.tensor(case['logits']), rtol=1e-4, atol=1e-5, msg=case['name'])


def test_supernet_matches_original_logits(tmp_path):
    """Our supernet, loaded from the seed-0 original checkpoint, against the original code's logits."""
    import timm_alphanet
    if not hasattr(timm_alphanet, 'load_original_checkpoint'):
        pytest.skip('timm_alphanet.load_original_checkpoint not available yet')
    path = tmp_path / 'alphanet.pth.tar'
    write_original_checkpoint(path, seed=REFERENCE['checkpoint']['seed'], legacy=True)
    supernet = timm_alphanet.load_original_checkpoint(path).eval()
    for case in REFERENCE['cases']:
        supernet.set_subnet(case['arch'])
        with torch.no_grad():
            logits = supernet(_reference_input(case))
        torch.testing.assert_close(logits, torch.tensor(case['logits']), rtol=1e-4, atol=1e-5, msg=case['name'])
