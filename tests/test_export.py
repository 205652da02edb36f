"""alphanet-export: exported folders give the calibrated supernet subnet's logits through local-dir:, pareto.json
exports carry its metrics, recipe and plot, bad input fails early with one line, and ONNX round-trips."""
import json
import os
import random

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image
from torchvision import transforms

from timm_alphanet import calibrate_bn, save_pretrained
from timm_alphanet.calibration import CalibrationRecipe
from timm_alphanet.cli.export import main as export_main
from timm_alphanet.calibration import calibration_images
from timm_alphanet.export.subnets import export_subnets, resolve_requests
from timm_alphanet.sources import load_supernet
from timm_alphanet.testing.pareto import pareto_dict
from timm_alphanet.testing.tiny import tiny_supernet
from timm_alphanet.data import build_digits_folder


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """The built-in digits, cached in a temporary folder for the console scripts too."""
    cache = tmp_path_factory.mktemp('cache')
    old = os.environ.get('TIMM_ALPHANET_CACHE')
    os.environ['TIMM_ALPHANET_CACHE'] = str(cache)
    yield build_digits_folder()
    if old is None:
        del os.environ['TIMM_ALPHANET_CACHE']
    else:
        os.environ['TIMM_ALPHANET_CACHE'] = old


@pytest.fixture(scope='module')
def supernet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('sn') / 'supernet'
    save_pretrained(tiny_supernet(seed=1), path)
    return path


def _reference_images(root, recipe):
    """The recipe's images computed by hand: seeded shuffle of the split, resize + centre crop + normalise."""
    from timm.data import create_dataset
    ds = create_dataset('', root=str(root), split=recipe.split)
    order = list(range(len(ds)))
    random.Random(recipe.seed).shuffle(order)
    size = int(recipe.image_size / recipe.crop_pct)
    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(recipe.image_size), transforms.ToTensor(),
                             transforms.Normalize(recipe.mean, recipe.std)])
    files = [ds.reader.samples[i][0] for i in order[:recipe.num_images]]
    return torch.stack([tf(Image.open(f).convert('RGB')) for f in files])


def test_export_then_local_dir_equals_the_calibrated_supernet_subnet(tmp_path, digits, supernet_dir):
    supernet, source = load_supernet(str(supernet_dir))
    recipe = CalibrationRecipe(num_images=40, batch_size=16, seed=3, image_size=24)
    from timm.data import create_dataset
    images = calibration_images(create_dataset('', root=str(digits), split='train'), recipe, progress=False)
    expected = _reference_images(digits, recipe)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)

    arch = supernet.space.sample(random.Random(7))
    requests = resolve_requests(supernet.space, ['max', json.dumps(arch.to_dict())])
    folders = export_subnets(supernet, requests, tmp_path / 'out', source=source.to_dict(), calib_images=images,
                             recipe=recipe, calib_data='digits', measure_latency=False, progress=False)
    assert [f.name for f in folders] == [r.name for r in requests] and requests[0].name == 'alphanet_max'

    reference, _ = load_supernet(str(supernet_dir))  # a fresh copy, calibrated the plain way
    for req, folder in zip(requests, folders):
        reference.set_subnet(req.arch)
        calibrate_bn(reference, list(expected.split(16)), num_batches=3, resolution=req.arch.resolution,
                     progress=False)
        reference.eval()
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        x = torch.randn(3, 3, req.arch.resolution, req.arch.resolution, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), reference(x), rtol=1e-5, atol=1e-5)
            uncalibrated = timm.create_model(f'local-dir:{supernet_dir}', pretrained=True).eval()
            uncalibrated.set_subnet(req.arch)
            assert (uncalibrated(x) - loaded(x)).abs().max() > 1e-3  # calibration changed the statistics
        meta = json.loads((folder / 'config.json').read_text())['timm_alphanet']
        assert meta['supernet']['sha256'] == source.sha256 and meta['calibration']['recipe'] == recipe.to_dict()
        assert meta['version'] and meta['arch'] == req.arch.to_dict()


def test_pareto_export_carries_metrics_recipe_and_plot(tmp_path, digits, supernet_dir, capsys):
    supernet, source = load_supernet(str(supernet_dir))
    archs = [supernet.space.min_config(), supernet.space.sample(random.Random(1)), supernet.space.max_config()]
    recipe = CalibrationRecipe(num_images=16, batch_size=8, seed=0, image_size=24)
    pareto = tmp_path / 'pareto.json'
    pareto.write_text(json.dumps(pareto_dict(supernet.space, source.sha256, archs, recipe.to_dict(),
                                             top1=[61.5, 70.25, 80.0])))
    code = export_main([str(supernet_dir), '--pareto', str(pareto), '--points', '2,0', '--output',
                        str(tmp_path / 'out'), '--calib-data', 'sklearn/digits', '--workers', '0', '--no-progress',
                        '--no-latency'])
    assert code == 0
    said = capsys.readouterr().out
    first = tmp_path / 'out' / next(n for n in sorted(os.listdir(tmp_path / 'out')) if n.startswith('alphanet_pareto2'))
    # it ends as training does: the commands to use the first exported folder, with its real path
    assert f'next:\n  load:     timm.create_model(\'local-dir:{first}\', pretrained=True)' in said
    assert f'  evaluate: alphanet-validate --model local-dir:{first} --data-dir sklearn/digits' in said
    assert said.rstrip().endswith('--push-to-hub ORG[/PREFIX] --overwrite')
    names = sorted(os.listdir(tmp_path / 'out'))
    mflops = json.loads(pareto.read_text())['points'][2]['mflops']
    assert names[0].startswith('alphanet_pareto0_') and names[1] == f'alphanet_pareto2_{mflops:.2g}mf'
    folder = tmp_path / 'out' / names[1]
    meta = json.loads((folder / 'config.json').read_text())['timm_alphanet']
    assert meta['calibration']['recipe'] == recipe.to_dict()  # the search's recipe, not the CLI defaults
    assert meta['latency'] == {'ms': 3.5, 'batch_size': 1, 'device': 'test CPU', 'source': 'pareto.json'}
    assert meta['pareto']['index'] == 2 and meta['pareto']['num_points'] == 3
    card = ModelCard.load(folder / 'README.md')
    assert card.data.license == 'cc-by-nc-4.0' and card.data.library_name == 'timm'
    # the model-index publishes only what was measured on the saved model, under the named (timm) pipeline; the
    # search's selection score (80.0 on train images) and its own validation figure (60.0) are labelled, not published
    [measured] = meta['results']
    assert (measured['split'], measured['pipeline'], measured['source']) == ('validation', 'timm', 'alphanet-export')
    assert {(r.dataset_split, r.metric_name, r.metric_value, r.metric_config) for r in card.data.eval_results} == {
        ('validation', 'Top-1 accuracy', round(measured['top1'], 3), 'timm eval pipeline'),
        ('validation', 'Top-5 accuracy', round(measured['top5'], 3), 'timm eval pipeline')}
    assert meta['search']['selection_top1'] == 80.0 and meta['search']['validation_top1'] == 60.0
    assert '| search selection score: top-1 (%) on held-out `train` images' in card.text
    assert 'not a validation accuracy) | 80.00 |' in card.text
    assert '![The Pareto front; this model is the marked point](pareto.png)' in card.text
    assert meta['pareto']['plot'] == 'pareto.png' and not (folder / 'pareto.svg').exists()
    assert (folder / 'pareto.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '3.50 ms, batch 1, on test CPU (pareto.json)' in card.text


def _fail(capsys, argv, usage=False):
    with pytest.raises(SystemExit) as e:
        export_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    if usage:  # argparse's own errors come after the usage text
        assert err.startswith('usage:')
        return err.splitlines()[-1]
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_fails_with_one_line(tmp_path, capsys, digits, supernet_dir):
    out = str(tmp_path / 'out')
    common = ['--output', out, '--calib-data', 'sklearn/digits', '--workers', '0', '--no-progress']
    assert 'kernel_sizes[1] (mb2) = 7 not allowed; allowed: [3, 5]' in _fail(capsys, [
        str(supernet_dir), '--arch', json.dumps({'resolution': 16, 'width': [8, 8, 8, 24], 'depth': [1, 1],
                                                 'kernel_size': [3, 7], 'expand_ratio': [1, 2]}), *common])
    assert "arch 'a3' is not in this search space" in _fail(capsys, [str(supernet_dir), '--arch', 'a3', *common])
    assert 'give --calib-data' in _fail(capsys, [str(supernet_dir), '--arch', 'max', '--output', out], usage=True)
    os.makedirs(out)
    (tmp_path / 'out' / 'something').write_text('x')
    refused = _fail(capsys, [str(supernet_dir), '--arch', 'max', *common])
    assert 'not empty' in refused and 'pass --overwrite' in refused and 'overwrite=True' not in refused
    assert not os.path.exists(os.path.join(out, 'alphanet_max'))

    supernet, source = load_supernet(str(supernet_dir))
    recipe = CalibrationRecipe(num_images=8, batch_size=8, image_size=24).to_dict()
    pareto = tmp_path / 'p.json'
    pareto.write_text(json.dumps(pareto_dict(supernet.space, 'cd' * 32, [supernet.space.max_config()], recipe)))
    new_out = ['--output', str(tmp_path / 'new')] + common[2:]
    assert 'made from another supernet' in _fail(capsys, [str(supernet_dir), '--pareto', str(pareto), *new_out])
    pareto.write_text(json.dumps(pareto_dict(supernet.space, source.sha256, [supernet.space.max_config()], recipe)))
    assert 'index 3 out of range' in _fail(capsys, [str(supernet_dir), '--pareto', str(pareto), '--points', '3',
                                                    *new_out])
    assert 'cannot be combined with --pareto' in _fail(capsys, [str(supernet_dir), '--pareto', str(pareto),
                                                                 '--calib-images', '4', *new_out])
    assert not (tmp_path / 'new').exists()


def test_no_calib_exports_uncalibrated_and_the_card_says_so(tmp_path, supernet_dir):
    assert export_main([str(supernet_dir), '--arch', 'min', '--output', str(tmp_path / 'out'), '--no-calib',
                        '--no-progress', '--no-latency']) == 0
    folder = tmp_path / 'out' / 'alphanet_min'
    card = (folder / 'README.md').read_text()
    assert 'UNCALIBRATED' in card and '**not calibrated**' in card
    supernet, _ = load_supernet(str(supernet_dir))
    supernet.set_subnet(supernet.space.min_config())
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), supernet(x), rtol=1e-5, atol=1e-5)  # the supernet's own statistics


def test_onnx_round_trip_and_a_disagreeing_runtime_fails(tmp_path, supernet_dir, monkeypatch):
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    assert export_main([str(supernet_dir), '--arch', 'max', '--output', str(tmp_path / 'out'), '--no-calib',
                        '--onnx', '--no-progress', '--no-latency']) == 0
    folder = tmp_path / 'out' / 'alphanet_max'
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    session = ort.InferenceSession(str(folder / 'model.onnx'), providers=['CPUExecutionProvider'])
    x = torch.randn(7, 3, 24, 24, generator=torch.Generator().manual_seed(1))  # a batch size never exported
    with torch.no_grad():
        ref = model(x)
    got = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
    assert (got - ref).abs().max() <= 1e-4 and ref.abs().max() > 1e-3
    meta = json.loads((folder / 'config.json').read_text())['timm_alphanet']['onnx']
    assert 0 <= meta['max_abs_diff'] <= 1e-4 and meta['ort_images_per_s'] > 0 and meta['torch_images_per_s'] > 0
    assert 'ONNX: max abs logit difference onnxruntime vs torch' in (folder / 'README.md').read_text()

    real_session = ort.InferenceSession

    class Off:  # onnxruntime returning logits off by 1e-3: the export must fail and write nothing
        def __init__(self, *args, **kwargs):
            self.session = real_session(*args, **kwargs)

        def run(self, *args, **kwargs):
            return [o + 1e-3 for o in self.session.run(*args, **kwargs)]

    monkeypatch.setattr(ort, 'InferenceSession', Off)
    with pytest.raises(SystemExit):
        export_main([str(supernet_dir), '--arch', 'min', '--output', str(tmp_path / 'out2'), '--no-calib', '--onnx',
                     '--no-progress', '--no-latency'])
    assert os.listdir(tmp_path / 'out2') == []


def test_slimmable_supernet_exports_plain_timm_models(tmp_path, capsys):
    from timm_alphanet.testing import randomize_bn_stats
    supernet = timm.create_model('slimmable_mobilenetv2_100', num_classes=5)
    randomize_bn_stats(supernet, torch.Generator().manual_seed(0))
    save_pretrained(supernet.eval(), tmp_path / 'slim')
    # the space's one resolver: a width as text names the folder after the width, as train's final/ does
    assert export_main([str(tmp_path / 'slim'), '--arch', 'min', '0.5', '--output', str(tmp_path / 'out'),
                        '--no-calib', '--no-progress', '--no-latency']) == 0
    assert sorted(os.listdir(tmp_path / 'out')) == ['slimmable_mobilenetv2_min', 'slimmable_mobilenetv2_w0.5']
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for name, width, timm_name in (('min', 0.35, 'mobilenetv2_035'), ('w0.5', 0.5, 'mobilenetv2_050')):
        folder = tmp_path / 'out' / f'slimmable_mobilenetv2_{name}'
        config = json.loads((folder / 'config.json').read_text())
        assert config['architecture'] == timm_name  # timm's own model of that width
        card = ModelCard.load(folder / 'README.md')
        assert card.data.license == supernet.pretrained_cfg['license'] and 'import timm_alphanet' not in card.text
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        supernet.set_subnet(width)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), supernet.eval()(x), rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    common = ['--output', str(tmp_path / 'bad'), '--no-calib', '--no-progress', '--no-latency']
    assert 'width 0.36 not allowed; allowed: [0.35, 0.4' in _fail(capsys, [str(tmp_path / 'slim'), '--arch', '0.36',
                                                                           *common])
    assert "unknown arch 'a3' for a WidthSpace; allowed: max, min, a width of" in _fail(
        capsys, [str(tmp_path / 'slim'), '--arch', 'a3', *common])


def test_requests_resolve_with_the_spaces_resolver_and_name_custom_archs_by_the_supernets_cost(supernet_dir):
    supernet, _ = load_supernet(str(supernet_dir))
    arch = supernet.space.sample(random.Random(7))
    requests = resolve_requests(supernet.space, ['alphanet_min', json.dumps(arch.to_dict())],
                                cost=supernet.macs_and_params)
    mflops = supernet.macs_and_params(arch)[0] / 1e6  # with the supernet's 10-class head, as search records it
    label = str(round(mflops)) if mflops >= 10 else f'{mflops:.2g}'
    assert [r.name for r in requests] == ['alphanet_min', f'alphanet_custom_{label}mf']
    assert [r.arch for r in requests] == [supernet.space.min_config(), arch]
    assert resolve_requests(supernet.space, [arch])[0].name == 'alphanet_custom0'  # no cost: numbered
    with pytest.raises(ValueError, match=r"unknown arch '0\.35'; allowed: a0, .*max, min"):
        resolve_requests(supernet.space, ['0.35'])


def test_calibration_images_use_the_recipes_own_transform_in_the_recipes_order(monkeypatch):
    """Export has no copy of the recipe's transform: changing CalibrationRecipe.transform changes what it loads."""
    from timm_alphanet.calibration import CalibrationRecipe, disjoint_subsets

    class Numbers:  # item i is image i, through whatever transform is set
        transform = None

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return self.transform(i), i

    monkeypatch.setattr(CalibrationRecipe, 'transform', lambda self: (lambda i: torch.full((3, 2, 2), 100.0 + i)))
    recipe = CalibrationRecipe(num_images=4, batch_size=3, seed=7, image_size=2)
    images = calibration_images(Numbers(), recipe, progress=False)
    expected = [100.0 + i for i in disjoint_subsets(10, [4], 7)[0]]
    assert images.shape == (4, 3, 2, 2) and images[:, 0, 0, 0].tolist() == expected
