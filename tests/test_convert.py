"""load_original_checkpoint and the alphanet-convert command (`original.convert`, `cli.convert`)."""
import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from timm_alphanet import ALPHANET_ARCHS, ALPHANET_SPACE, SearchSpace, SubnetConfig, load_original_checkpoint
from timm_alphanet.calibration import CalibrationRecipe, recipe_for
from timm_alphanet.cli.convert import main
from timm_alphanet.data import build_digits_folder, open_image_dataset
from timm_alphanet.original.convert import SUBNET_NAMES, convert_checkpoint, resolve_subnets
from timm_alphanet.export import extract_subnet
from timm_alphanet.calibration import calibration_images
from timm_alphanet.export.subnets import export_subnets, resolve_requests
from timm_alphanet.models import AlphaNet, AlphaNetSupernet
from timm_alphanet.original import (
    UnsafeCheckpointError, convert_original_state_dict, layout_from_supernet_config, read_original_checkpoint)
from timm_alphanet.original.keys import _map_key, _original_key
from timm_alphanet.testing.original_ckpt import (
    SMALL_SUPERNET_CONFIG, original_manifest, write_malicious_checkpoint, write_original_checkpoint)

REFERENCE = json.loads((Path(__file__).parent / 'data' / 'original_reference.json').read_text())
SMALL_SPACE = SearchSpace.from_dict(SMALL_SUPERNET_CONFIG)
SMALL_CLASSES = 10
F32 = torch.float32


def _small_manifest():
    return original_manifest(SMALL_SUPERNET_CONFIG, n_classes=SMALL_CLASSES)


def _write_small(path, manifest=None, legacy=True, seed=5):
    return write_original_checkpoint(path, seed=seed, legacy=legacy, manifest=manifest or _small_manifest(),
                                     supernet_config=SMALL_SUPERNET_CONFIG)


def _write_yaml(path, supernet_config):
    path.write_text(yaml.safe_dump({'supernet_config': supernet_config}))
    return path


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    """These models are tiny: on a busy machine, two intra-op threads make each conv ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def small_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('small') / 'small.pth.tar'
    _write_small(path)
    return path


@pytest.fixture(scope='module')
def full_ckpt(tmp_path_factory):
    """The seed of tests/data/original_reference.json: the original code's logits are known for it."""
    path = tmp_path_factory.mktemp('full') / 'alphanet.pth.tar'
    write_original_checkpoint(path, seed=REFERENCE['checkpoint']['seed'], legacy=True)
    return path


@pytest.fixture(scope='module')
def calib_images(tmp_path_factory):
    """A tiny ImageFolder of random PNGs (two classes)."""
    from PIL import Image
    root = tmp_path_factory.mktemp('images')
    g = torch.Generator().manual_seed(0)
    for cls in ('cat', 'dog'):
        (root / cls).mkdir()
        for i in range(4):
            pixels = torch.randint(0, 256, (40 + 4 * i, 48, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f'{i}.png')
    return root


def _reference_input(case):
    g = torch.Generator().manual_seed(case['input']['generator_seed'])
    x = torch.randn(case['input']['shape'], generator=g)
    res = case['arch']['resolution']
    if x.shape[-1] != res:
        x = torch.nn.functional.interpolate(x, size=res, mode='bicubic', align_corners=False)
    return x


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if 'running_' in k}


# ---------------------------------------------------------------------------------------------------------
# load_original_checkpoint
@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_load_legacy_and_zip(tmp_path, legacy):
    path = tmp_path / 'c.pth'
    written = _write_small(path, legacy=legacy, seed=1)
    supernet = load_original_checkpoint(path)  # space from the checkpoint's args
    assert isinstance(supernet, AlphaNetSupernet) and not supernet.training
    assert supernet.space == SMALL_SPACE and supernet.num_classes == SMALL_CLASSES
    assert supernet.active_subnet == SMALL_SPACE.max_config()
    sd = supernet.state_dict()
    converted = convert_original_state_dict(written, *layout_from_supernet_config(SMALL_SUPERNET_CONFIG))
    assert set(sd) == set(converted)
    for key, tensor in converted.items():
        assert torch.equal(sd[key], tensor), key


def test_load_with_explicit_config(small_ckpt, tmp_path):
    yaml_path = _write_yaml(tmp_path / 'small.yml', SMALL_SUPERNET_CONFIG)
    a = load_original_checkpoint(small_ckpt, yaml_path)
    b = load_original_checkpoint(small_ckpt, SMALL_SPACE)
    assert a.space == b.space == SMALL_SPACE
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_config_disagreeing_with_checkpoint_raises(small_ckpt, tmp_path):
    other = dict(SMALL_SUPERNET_CONFIG, resolutions=[32, 64, 96])
    with pytest.raises(ValueError, match=r'disagrees with the supernet_config stored.*resolutions'):
        load_original_checkpoint(small_ckpt, _write_yaml(tmp_path / 'other.yml', other))


def test_bare_state_dict_needs_its_config(tmp_path):
    sd = {k: torch.zeros(s, dtype=d) for k, s, d in _small_manifest()}
    torch.save(sd, tmp_path / 'bare.pth')  # no args: the default is the AlphaNet space, which does not fit
    with pytest.raises(ValueError, match=r'blocks\.2\.mobile_inverted_conv|missing keys|shape mismatches'):
        load_original_checkpoint(tmp_path / 'bare.pth')
    assert load_original_checkpoint(tmp_path / 'bare.pth', SMALL_SPACE).space == SMALL_SPACE


def test_missing_key_is_named(tmp_path):
    dropped = 'module.blocks.3.mobile_inverted_conv.depth_conv.conv.conv.weight'
    _write_small(tmp_path / 'c.pth', [e for e in _small_manifest() if e[0] != dropped])
    with pytest.raises(ValueError, match='missing keys') as info:
        load_original_checkpoint(tmp_path / 'c.pth')
    assert f"blocks.1.1.conv_dw.weight (original '{dropped}')" in str(info.value)


def test_missing_classifier_is_named(tmp_path):
    _write_small(tmp_path / 'c.pth', [e for e in _small_manifest() if 'classifier.linear.linear.weight' not in e[0]])
    with pytest.raises(ValueError, match=r"classifier\.weight \(original 'module\.classifier\.linear\.linear"):
        load_original_checkpoint(tmp_path / 'c.pth')


@pytest.mark.parametrize('extra, named', [
    (('module.foo.weight', (3, 2), F32), 'foo.weight'),  # not part of any original layout
    (('module.blocks.0.mobile_inverted_conv.depth_conv.se.fc.reduce.bias', (8,), F32),  # mb1 has no SE
     "unexpected keys (1) blocks.0.0.se.fc1.bias (original 'module.blocks.0.mobile_inverted_conv"),
    (('module.blocks.9.mobile_inverted_conv.depth_conv.conv.conv.weight', (8, 1, 3, 3), F32),
     'blocks.9.mobile_inverted_conv.depth_conv.conv.conv.weight'),  # beyond the space's depth
])
def test_unexpected_key_is_named(tmp_path, extra, named):
    _write_small(tmp_path / 'c.pth', _small_manifest() + [extra])
    with pytest.raises(ValueError) as info:
        load_original_checkpoint(tmp_path / 'c.pth')
    assert named in str(info.value)


def test_wrong_shape_is_named(tmp_path):
    key = 'module.blocks.5.mobile_inverted_conv.point_linear.conv.conv.weight'
    manifest = [(k, (32, 100, 1, 1) if k == key else s, d) for k, s, d in _small_manifest()]
    _write_small(tmp_path / 'c.pth', manifest)
    with pytest.raises(ValueError, match='shape mismatches') as info:
        load_original_checkpoint(tmp_path / 'c.pth')
    assert f"blocks.2.1.conv_pwl.weight (original '{key}'): checkpoint (32, 100, 1, 1) vs model (32, 192, 1, 1)" \
        in str(info.value)


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_malicious_checkpoint_is_refused(tmp_path, legacy, capsys):
    path, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    write_malicious_checkpoint(path, marker, legacy=legacy)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load global 'builtins\.exec'"):
        load_original_checkpoint(path)
    with pytest.raises(SystemExit) as info:
        main([str(path), '--out', str(tmp_path / 'out'), '--no-progress'])
    assert info.value.code == 2 and 'refusing to load global' in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / 'out').exists()


def test_missing_files(tmp_path, small_ckpt, capsys):
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        load_original_checkpoint(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='config file not found'):
        load_original_checkpoint(small_ckpt, tmp_path / 'nope.yml')
    for argv, message in [
        ([str(tmp_path / 'nope.pth')], 'checkpoint not found'),
        ([str(small_ckpt), '--config', str(tmp_path / 'nope.yml')], 'config file not found'),
        ([str(small_ckpt), '--subnets', 'min', '--calib-data', str(tmp_path / 'none')],
         f'calibration data {tmp_path / "none"}: not found'),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv + ['--out', str(tmp_path / 'out'), '--no-progress'])
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_original_key_names_round_trip(small_ckpt):
    ckpt = read_original_checkpoint(small_ckpt)
    depths, shortcut_stages = layout_from_supernet_config(SMALL_SUPERNET_CONFIG)
    stage_of_block = [(s, j) for s, d in enumerate(depths) for j in range(d)]
    mapped = 0
    for key in ckpt['state_dict']:
        ours = _map_key(key, stage_of_block, len(depths), shortcut_stages)
        if ours is not None:
            assert _original_key(ours, depths) == key
            mapped += 1
    assert mapped == len(load_original_checkpoint(small_ckpt).state_dict())


# ---------------------------------------------------------------------------------------------------------
# alphanet-convert
def test_cli_full_checkpoint_matches_original_logits(full_ckpt, tmp_path, capsys):
    """The AlphaNet checkpoint end to end: exported a0/a3 and the supernet give the original code's logits."""
    out = tmp_path / 'out'
    assert main([str(full_ckpt), '--out', str(out), '--subnets', 'a3,a0', '--no-progress']) == 0
    assert 'UNCALIBRATED' in capsys.readouterr().out
    cases = {c['name']: c for c in REFERENCE['cases']}
    assert SubnetConfig.from_dict(cases['a3']['arch']) == ALPHANET_ARCHS['a3']
    assert SubnetConfig.from_dict(cases['min']['arch']) == ALPHANET_ARCHS['a0']
    for name, case in (('a3', cases['a3']), ('a0', cases['min'])):
        model = timm.create_model(f'local-dir:{out}/alphanet_{name}', pretrained=True).eval()
        assert isinstance(model, AlphaNet) and model.arch == ALPHANET_ARCHS[name]
        with torch.no_grad():
            logits = model(_reference_input(case))
        torch.testing.assert_close(logits, torch.tensor(case['logits']), rtol=1e-4, atol=1e-5, msg=name)
    supernet = timm.create_model(f'local-dir:{out}/supernet', pretrained=True).eval()
    assert isinstance(supernet, AlphaNetSupernet) and supernet.space == ALPHANET_SPACE
    supernet.set_subnet(cases['random']['arch'])
    with torch.no_grad():
        logits = supernet(_reference_input(cases['random']))
    torch.testing.assert_close(logits, torch.tensor(cases['random']['logits']), rtol=1e-4, atol=1e-5)


def test_cli_small_space_uncalibrated(small_ckpt, tmp_path, capsys):
    yaml_path = _write_yaml(tmp_path / 'small.yml', SMALL_SUPERNET_CONFIG)
    arch = {'resolution': 64, 'width': [8, 16, 16, 32, 64], 'depth': [2, 1, 3], 'kernel_size': [5, 3, 3],
            'expand_ratio': [1, 3, 6]}
    arch_file = tmp_path / 'mine.json'
    arch_file.write_text(json.dumps(arch))
    out = tmp_path / 'out'
    assert main([str(small_ckpt), '--config', str(yaml_path), '--out', str(out), '--subnets',
                 f'min,max,{arch_file}', '--no-progress']) == 0
    stdout = capsys.readouterr().out
    assert 'UNCALIBRATED' in stdout and 'no --calib-data' in stdout

    supernet = timm.create_model(f'local-dir:{out}/supernet', pretrained=True).eval()
    assert isinstance(supernet, AlphaNetSupernet)
    assert supernet.space == SMALL_SPACE and supernet.num_classes == SMALL_CLASSES
    original = load_original_checkpoint(small_ckpt)
    assert all(torch.equal(v, supernet.state_dict()[k]) for k, v in original.state_dict().items())

    g = torch.Generator().manual_seed(0)
    expected = {'min': SMALL_SPACE.min_config(), 'max': SMALL_SPACE.max_config(), 'mine': SubnetConfig.from_dict(arch)}
    for name, cfg in expected.items():
        directory = out / f'alphanet_{name}'
        model = timm.create_model(f'local-dir:{directory}', pretrained=True).eval()
        assert model.arch == cfg and model.num_classes == SMALL_CLASSES
        supernet.set_subnet(cfg)
        x = torch.randn(2, 3, cfg.resolution, cfg.resolution, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(model(x), supernet(x), rtol=0, atol=1e-5, msg=name)
        card = (directory / 'README.md').read_text()
        assert 'UNCALIBRATED' in card and 'alphanet-convert --calib-data' in card
    meta = json.loads((out / 'conversion.json').read_text())
    assert [s['name'] for s in meta['subnets']] == ['min', 'max', 'mine']
    assert all(s['calibration'] is None for s in meta['subnets'])


def test_cli_small_space_calibrated(small_ckpt, calib_images, tmp_path, capsys):
    out = tmp_path / 'out'
    argv = [str(small_ckpt), '--out', str(out), '--subnets', 'min,max', '--calib-data', str(calib_images),
            '--calib-images', '6', '--calib-batch-size', '3', '--workers', '0', '--no-progress']
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert 'UNCALIBRATED' not in stdout
    supernet = load_original_checkpoint(small_ckpt)
    for name, cfg in (('min', SMALL_SPACE.min_config()), ('max', SMALL_SPACE.max_config())):
        directory = out / f'alphanet_{name}'
        model = timm.create_model(f'local-dir:{directory}', pretrained=True)
        calibrated, uncalibrated = _bn_stats(model), _bn_stats(extract_subnet(supernet, cfg))
        assert calibrated.keys() == uncalibrated.keys()
        for key, value in calibrated.items():
            assert torch.isfinite(value).all(), key
            assert not torch.allclose(value, uncalibrated[key]), key
        card = (directory / 'README.md').read_text()
        assert f'calibrated on 6 images of `{calib_images.name}`' in card and 'uncalibrated' not in card.lower()
    meta = json.loads((out / 'conversion.json').read_text())
    # the recipe the flags name, the rest from the supernet (as alphanet-export fills it): its largest resolution,
    # its pretrained_cfg's preprocessing
    expected = recipe_for(supernet, num_images=6, batch_size=3)
    assert expected.image_size == max(SMALL_SPACE.resolutions)
    for record in meta['subnets']:
        assert record['calibration'] == {'recipe': expected.to_dict(), 'data': calib_images.name, 'batches': 2}
        folder_meta = json.loads((out / record['dir'] / 'config.json').read_text())['timm_alphanet']
        assert folder_meta['calibration'] == record['calibration']

    # a fixed seed: the same statistics again
    assert main(argv[:2] + [str(tmp_path / 'again')] + argv[3:]) == 0
    again = timm.create_model(f'local-dir:{tmp_path}/again/alphanet_min', pretrained=True)
    first = timm.create_model(f'local-dir:{out}/alphanet_min', pretrained=True)
    for key, value in _bn_stats(first).items():
        assert torch.equal(value, _bn_stats(again)[key]), key


def test_convert_checkpoint_returns_paths(small_ckpt, tmp_path):
    result = convert_checkpoint(small_ckpt, tmp_path / 'out', subnets=['min'], progress=False, log=lambda m: None)
    assert result.supernet == str(tmp_path / 'out' / 'supernet')
    assert result.subnets == {'min': str(tmp_path / 'out' / 'alphanet_min')}
    assert Path(result.metadata).is_file()


def test_unknown_subnet_lists_allowed(small_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(small_ckpt), '--out', str(tmp_path / 'out'), '--subnets', 'a0,a9'])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "unknown subnet 'a9'" in err
    assert all(name in err for name in SUBNET_NAMES) and "'all'" in err
    assert not (tmp_path / 'out').exists()
    with pytest.raises(ValueError, match="unknown subnet 'b1'; allowed: a0, a1"):
        resolve_subnets('b1')
    assert [n for n, _ in resolve_subnets('all,a0')] == list(ALPHANET_ARCHS)


def test_named_arch_outside_the_space(small_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(small_ckpt), '--out', str(tmp_path / 'out'), '--subnets', 'a0', '--no-progress'])
    err = capsys.readouterr().err
    assert "subnet 'a0' is not in the checkpoint's search space" in err
    assert not (tmp_path / 'out' / 'supernet').exists()  # nothing written


@pytest.mark.parametrize('extra, message', [
    (['--calib-images', '0'], 'expected a positive integer, got 0'),
    (['--calib-images', 'x'], "expected a positive integer, got 'x'"),
    (['--calib-batch-size', '-1'], 'expected a positive integer'),
    (['--workers', '-2'], 'expected a non-negative integer'),
])
def test_bad_numbers(small_ckpt, calib_images, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        main([str(small_ckpt), '--out', str(tmp_path / 'o'), '--calib-data', str(calib_images)] + extra)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_calib_options_need_calib_data(small_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(small_ckpt), '--out', str(tmp_path / 'o'), '--calib-images', '8', '--calib-seed', '1'])
    assert '--calib-images/--calib-seed need --calib-data' in capsys.readouterr().err
    with pytest.raises(ValueError, match='calibration num_images must be a positive integer, got 0'):
        convert_checkpoint(small_ckpt, tmp_path / 'o', recipe={'num_images': 0})
    with pytest.raises(ValueError, match=r"unknown calibration recipe keys \['batches'\]; allowed: \['split'"):
        convert_checkpoint(small_ckpt, tmp_path / 'o', recipe={'batches': 2})
    assert not (tmp_path / 'o').exists()


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return build_digits_folder(tmp_path_factory.mktemp('data') / 'digits32')


def test_convert_and_export_calibrate_identically(small_ckpt, digits, tmp_path):
    """One recipe, one way to calibrate: alphanet-convert's subnets get exactly alphanet-export's BN statistics."""
    recipe = CalibrationRecipe(num_images=12, batch_size=5, seed=3, image_size=64)  # batches of 5, 5 and 2
    convert_checkpoint(small_ckpt, tmp_path / 'converted', subnets='min,max', calib_data=digits, recipe=recipe,
                       workers=0, progress=False, log=lambda m: None)
    supernet = load_original_checkpoint(small_ckpt)
    images = calibration_images(open_image_dataset('', digits, recipe.split), recipe, progress=False)
    export_subnets(supernet, resolve_requests(supernet.space, ['min', 'max']), tmp_path / 'exported',
                   calib_images=images, recipe=recipe, calib_data=digits.name, measure_latency=False, progress=False)
    for name in ('alphanet_min', 'alphanet_max'):
        converted = timm.create_model(f'local-dir:{tmp_path / "converted" / name}', pretrained=True)
        exported = timm.create_model(f'local-dir:{tmp_path / "exported" / name}', pretrained=True)
        a, b = _bn_stats(converted), _bn_stats(exported)
        assert a.keys() == b.keys() and a
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        assert not all(torch.equal(v, _bn_stats(extract_subnet(supernet, converted.arch))[k]) for k, v in a.items())
        recorded = [json.loads((tmp_path / d / name / 'config.json').read_text())['timm_alphanet']['calibration']
                    for d in ('converted', 'exported')]
        assert recorded[0] == recorded[1] == {'recipe': recipe.to_dict(), 'data': digits.name, 'batches': 3}
