"""alphanet-export on a training run with its default settings (issue 21): the run's recorded recipe (or one that
fits the data), a validation top-1 and `model-index` in every --arch folder equal to what alphanet-validate measures
on that folder, the search's selection score never published as an accuracy, and no absolute path of the machine in
any card or config.json that export, convert or the trainer writes."""
import json
import os
import re
from pathlib import Path

import pytest
import timm
from accelerate import Accelerator
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from timm_alphanet.cli.export import main as export_main
from timm_alphanet.data import dataset_and_root, open_image_dataset
from timm_alphanet.evaluation import validate_model
from timm_alphanet.export.card import render_card
from timm_alphanet.sources import load_supernet
from timm_alphanet.testing.pareto import pareto_dict

from test_train_run import COMMON, ROOT, _train, env, tiny_cfg  # noqa: F401  (fixtures)

QUICK = ['--no-progress', '-j', '0', '--no-latency']  # speed only: neither changes the recipe nor the evaluation


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory, env, tiny_cfg):  # noqa: F811
    """A demo-shaped run (digits: 1442 training images, fewer than the recipe's default 2048) with final/max, min."""
    out = tmp_path_factory.mktemp('out')
    data = str(tmp_path_factory.mktemp('data') / 'digits32')
    _train(['-c', tiny_cfg, *COMMON, '-b', '128', '--epochs', '1', '--eval-archs', 'min', '--data-dir', data,
            '--output', str(out)], env)
    return (out / 'latest').resolve(), data


@pytest.fixture(autouse=True)
def _cache(env, monkeypatch):  # noqa: F811
    monkeypatch.setenv('TIMM_ALPHANET_CACHE', env['TIMM_ALPHANET_CACHE'])


def _meta(folder):
    return json.loads((Path(folder) / 'config.json').read_text())['timm_alphanet']


def test_arch_export_of_a_run_with_defaults_records_what_validate_measures(demo_run, tmp_path, capsys):
    from timm_alphanet.cli.validate import main as validate_main

    run, data = demo_run
    out = tmp_path / 'exported'
    assert export_main([str(run), '--arch', 'max', 'min', '--output', str(out), *QUICK]) == 0
    said = capsys.readouterr().out
    assert "calibration recipe: the training run's" in said
    val = open_image_dataset(*dataset_and_root(data), 'validation')
    acc = Accelerator(cpu=True)
    for name in ('max', 'min'):
        folder = out / f'alphanet_{name}'
        meta, final = _meta(folder), _meta(run / 'final' / name)
        # the run's recorded recipe, so the export is the run's own final model, weight for weight
        assert meta['calibration']['recipe'] == final['calibration']['recipe']
        ours, theirs = load_file(str(folder / 'model.safetensors')), load_file(str(run / 'final' / name /
                                                                                    'model.safetensors'))
        assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)

        [result] = meta['results']
        assert (result['split'], result['pipeline'], result['num_images']) == ('validation', 'timm', len(val))
        assert result['dataset'] == os.path.basename(data) and 0 < result['top1'] < 100
        card = ModelCard.load(folder / 'README.md')
        assert {(r.dataset_split, r.metric_name, r.metric_value, r.metric_config) for r in card.data.eval_results} \
            == {('validation', 'Top-1 accuracy', round(result['top1'], 3), 'timm eval pipeline'),
                ('validation', 'Top-5 accuracy', round(result['top5'], 3), 'timm eval pipeline')}
        # the validate code path on the folder, as a user runs it, gives the recorded number
        again = validate_model(acc, timm.create_model(f'local-dir:{folder}', pretrained=True), val, 'timm')
        assert again['top1'] == result['top1'] and again['top5'] == result['top5']
        assert validate_main(['--model', str(folder), '--data-dir', data, '--no-progress', '-j', '0']) == 0
        assert f'top1 {result["top1"]:.3f} ' in capsys.readouterr().out
        # and it is the number the run printed and recorded for the same model
        assert result['top1'] == pytest.approx(final['results'][0]['top1'], abs=1e-6)


def test_default_recipe_fits_a_smaller_split_and_an_explicit_one_fails_in_a_sentence(demo_run, tmp_path, capsys):
    run, data = demo_run
    train = len(open_image_dataset(*dataset_and_root(data), 'train'))
    assert train < 2048  # the recipe's default, which failed here before
    # other calibration data than the run's: the run's recipe is not inherited, the default count is fitted
    out = tmp_path / 'fitted'
    assert export_main([str(run), '--arch', 'min', '--output', str(out), '--calib-data', data, '--no-eval',
                        *QUICK]) == 0
    assert f"calibration images: all {train} of split 'train'" in capsys.readouterr().out
    meta = _meta(out / 'alphanet_min')
    assert meta['calibration']['recipe']['num_images'] == train and meta['calibration']['batches'] == -(-train // 256)
    assert 'results' not in meta and not ModelCard.load(out / 'alphanet_min' / 'README.md').data.eval_results

    with pytest.raises(SystemExit) as e:
        export_main([str(run), '--arch', 'min', '--output', str(tmp_path / 'too_many'), '--calib-images',
                     str(train + 1), *QUICK])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert f'asks for {train + 1} images of split \'train\', which has only {train}' in err and ' = ' not in err
    assert not (tmp_path / 'too_many').exists() or not os.listdir(tmp_path / 'too_many')


def test_a_missing_validation_split_fails_early_naming_the_way_out(demo_run, tmp_path, capsys):
    run, data = demo_run
    with pytest.raises(SystemExit):
        export_main([str(run), '--arch', 'min', '--output', str(tmp_path / 'out'), '--val-split', 'test', *QUICK])
    err = capsys.readouterr().err.strip()
    assert "has no 'test' split" in err and '--no-eval' in err and len(err.splitlines()) == 1


def test_the_model_index_publishes_only_measured_results_never_a_selection_score():
    """An older folder that copied the search's scores into `results`, plus a newer one's `search` record: only the
    result measured under a named pipeline reaches the Hub metadata; the selection score is shown, labelled."""
    meta = {'name': 'p', 'kind': 'alphanet', 'results': [
        {'top1': 87.5, 'dataset': 'digits', 'split': 'train', 'pipeline': 'search (calibrated with the recipe)'},
        {'top1': 92.113, 'dataset': 'digits', 'split': 'validation', 'pipeline': 'timm', 'num_images': 355}],
        'search': {'selection_top1': 87.5, 'selection_split': 'train', 'validation_top1': 91.83,
                   'validation_split': 'validation'}}
    card = render_card({'architecture': 'alphanet_custom', 'timm_alphanet': meta})
    assert [(r.dataset_split, r.metric_value, r.metric_config) for r in card.data.eval_results] == [
        ('validation', 92.113, 'timm eval pipeline')]
    assert re.search(r'\| search selection score: [^|]*not a validation accuracy\) \| 87\.50 \|', card.text)
    assert re.search(r"\| search's validation estimate: [^|]*not timm's pipeline\) \| 91\.83 \|", card.text)


def _text_files(root):
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(('.safetensors', '.png', '.onnx', '.lock')):
                yield Path(dirpath) / f


def test_no_card_or_config_holds_a_path_of_this_machine(demo_run, tmp_path, tmp_path_factory, capsys):
    from timm_alphanet.cli.convert import main as convert_main
    from timm_alphanet.testing.original_ckpt import SMALL_SUPERNET_CONFIG, original_manifest, \
        write_original_checkpoint

    run, data = demo_run
    assert export_main([str(run), '--arch', 'max', '--output', str(tmp_path / 'exported'), *QUICK]) == 0
    # a front as alphanet-search records it: its supernet and data by this machine's paths
    supernet, source = load_supernet(str(run))
    pareto = tmp_path / 'pareto.json'
    pareto.write_text(json.dumps(pareto_dict(
        supernet.space, source.sha256, [supernet.space.min_config()], _meta(run / 'final' / 'min')['calibration'][
            'recipe'], dataset=f'sklearn/digits {data}', supernet={**source.to_dict(), 'spec': str(run)})))
    assert export_main([str(run), '--pareto', str(pareto), '--output', str(tmp_path / 'front'), *QUICK]) == 0
    ckpt = tmp_path / 'original' / 'small.pth.tar'
    ckpt.parent.mkdir()
    write_original_checkpoint(ckpt, seed=1, manifest=original_manifest(SMALL_SUPERNET_CONFIG, n_classes=10),
                              supernet_config=SMALL_SUPERNET_CONFIG)
    assert convert_main([str(ckpt), '--out', str(tmp_path / 'converted'), '--subnets', 'min', '--calib-data',
                         str(Path(data) / 'train'), '--calib-images', '8', '--calib-batch-size', '4', '--workers', '0',
                         '--no-progress']) == 0
    capsys.readouterr()
    written = {'trainer': run / 'final', 'export': tmp_path / 'exported', 'export --pareto': tmp_path / 'front',
               'convert': tmp_path / 'converted'}
    machine = {str(p) for p in (tmp_path_factory.getbasetemp(), ROOT, Path.home()) if len(p.parts) > 1}
    machine |= {os.path.realpath(p) for p in machine}
    checked = 0
    for tool, root in written.items():
        files = list(_text_files(root))
        assert any(f.name == 'README.md' for f in files) and any(f.name == 'config.json' for f in files), tool
        for f in files:
            text = f.read_text()
            leaks = sorted(p for p in machine if p in text)
            assert not leaks, f'{tool} wrote {leaks} into {f.relative_to(root)}'
            checked += 1
    assert checked >= 11  # trainer: 3 folders x 2 files; exports: 2 x 2 files; convert: 2 x 2 files + its record
    # the cards still say where the weights come from: by name and sha256
    meta = _meta(tmp_path / 'exported' / 'alphanet_max')
    assert meta['supernet']['name'] == f'{run.name}/final/supernet' and len(meta['supernet']['sha256']) == 64
    assert "timm.create_model('local-dir:alphanet_max', pretrained=True)" in \
        (tmp_path / 'exported' / 'alphanet_max' / 'README.md').read_text()
    converted = _meta(tmp_path / 'converted' / 'alphanet_min')['supernet']
    assert converted['name'] == 'small.pth.tar' and len(converted['sha256']) == 64
