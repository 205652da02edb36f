"""benchmarks/reproduce/slimmable.py at a smoke-test budget (two steps per run, in this process): the three KD settings
train at one budget, the table is built from the runs' trained weights, and a second call reuses the runs."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ['--seeds', '0', '--epochs', '1', '--max-train-steps', '2', '--batch-size', '16', '--image-size', '32',
         '--widths', '0.35', '1.0', '--calib-images', '32', '--jobs', '1', '--in-process', '--no-plot',
         '--lr-grid-factors', '0.5', '2']


@pytest.fixture(scope='module')
def script():
    spec = importlib.util.spec_from_file_location('slimmable_reproduce', ROOT / 'benchmarks' / 'reproduce' /
                                                  'slimmable.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def smoke(script, tmp_path_factory):
    out = tmp_path_factory.mktemp('slimmable')
    assert script.main(['--out', str(out), *SMOKE]) == 0
    return out


def test_the_settings_differ_only_in_the_kd_flags_and_train_different_weights(script, smoke):
    cfgs = {p.stem: yaml.safe_load(p.read_text()) for p in (smoke / 'logs').glob('*.yaml')
            if not p.name.startswith('tune-')}
    assert len(cfgs) == 6  # 2 nets x 3 settings x 1 seed
    for net in script.NETS:
        runs = {tag: cfgs[f'{net}-{tag}-seed0'] for tag in ('nokd', 'kl', 'alpha')}
        assert [runs[tag]['inplace_kd'] for tag in ('nokd', 'kl', 'alpha')] == [False, True, True]
        assert (runs['kl']['kd_loss'], runs['alpha']['kd_loss']) == ('kl', 'alpha')
        flags = ('inplace_kd', 'kd_loss', 'experiment', 'lr')  # the lr: each setting's own, tuned
        budgets = [{k: v for k, v in cfg.items() if k not in flags} for cfg in runs.values()]
        assert budgets[0] == budgets[1] == budgets[2]  # same seed, data, schedule, steps
        assert budgets[0]['max_train_steps'] == 2 and budgets[0]['seed'] == 0
        weights = {tag: load_file(script.supernet_folder(smoke / 'runs' / f'{net}-{tag}-seed0') / 'model.safetensors')
                   for tag in runs}
        for a, b in (('nokd', 'kl'), ('kl', 'alpha'), ('nokd', 'alpha')):
            assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)


def test_the_table_evaluates_the_trained_weights(script, smoke):
    """The regression: ``local-dir:`` without pretrained=True rebuilt an untrained net (a chance-level table)."""
    args = script.parse_args(['--out', str(smoke), *SMOKE])
    cfg = script.run_config('mobilenetv2', 'adaptive-KD', 0, args, smoke / 'runs')
    saved = load_file(script.supernet_folder(smoke / 'runs' / cfg.experiment) / 'model.safetensors')
    loaded = script.load_run(cfg).state_dict()
    assert set(loaded) == set(saved)
    for k, v in saved.items():
        assert torch.equal(loaded[k], v), k


def test_json_and_markdown_hold_every_run_and_a_rerun_reuses_them(script, smoke):
    first = json.loads((smoke / 'slimmable.json').read_text())
    assert len(first['runs']) == 6 and first['widths'] == {'mobilenetv1': [0.35, 1.0], 'mobilenetv2': [0.35, 1.0]}
    for r in first['runs']:
        assert set(r['top1']) == {'0.35', '1.0'} and all(0 <= v <= 100 for v in r['top1'].values())
    for net in script.NETS:
        summary = first['summary'][net]
        nokd = summary['w/o KD']['top1_mean']
        for setting in ('KL-KD', 'adaptive-KD'):  # the paired gain is the mean over widths of the difference
            expected = sum(a - b for a, b in zip(summary[setting]['top1_mean'], nokd)) / len(nokd)
            assert summary[setting]['gain_over_no_kd']['mean'] == pytest.approx(expected, abs=1e-9)
    table = (smoke / 'slimmable.md').read_text()
    for name in ('MobileNet-V1', 'MobileNet-V2', 'w/o KD (digits)', 'KL-KD (digits)', 'adaptive-KD (digits)',
                 'at most 2 steps'):
        assert name in table
    # the protocol's hypotheses, per net, with the detectable effect (n/a from one seed: no paired spread)
    assert table.count('- H1 (KL-KD > no KD, mean top-1 over widths)') == 2 and 'Minimum detectable effect' in table
    assert script.main(['--out', str(smoke), *SMOKE]) == 0  # finished runs are reused: evaluation only
    again = json.loads((smoke / 'slimmable.json').read_text())
    assert [r['train']['reused'] for r in again['runs']] == [True] * 6
    assert [r['top1'] for r in again['runs']] == [r['top1'] for r in first['runs']]


def test_a_run_folder_of_another_config_is_refused(script, smoke):
    with pytest.raises(ValueError, match=r'mobilenetv1-nokd-seed0 holds a run of another config'):
        script.main(['--out', str(smoke), *SMOKE, '--lr', '0.5', '--no-tune'])


def test_each_setting_gets_its_lr_from_the_same_tuning_runs_on_held_out_training_images(script, smoke):
    meta = json.loads((smoke / 'slimmable.json').read_text())['meta']
    tuning = meta['lr_tuning']
    assert set(tuning) == {f'{net}/{s}' for net in script.NETS for s in script.SETTINGS}
    base = 0.125 * 16 / 256  # the recipe's rule at batch 16
    for key, t in tuning.items():  # the same grid and number of tuning runs for every setting
        assert t['grid'] == [base * 0.5, base * 2] and t['runs'] == 2 and t['tuning_seeds'] == [1000]
        net, setting = key.split('/', 1)
        tag = {'w/o KD': 'nokd', 'KL-KD': 'kl', 'adaptive-KD': 'alpha'}[setting]
        scores = {}  # the held-out scores as each tuning run recorded them
        for lr in t['grid']:
            cached = json.loads((smoke / 'logs' / f'tune-{net}-{tag}-lr{lr:g}-seed1000.score.json').read_text())
            scores[lr] = cached['score']
        assert t['held_out_top1'] == {f'{lr:g}': v for lr, v in scores.items()}
        best = max(sorted(scores), key=lambda lr: scores[lr])  # ties: the smaller lr
        assert t['chosen'] == best == meta['lr'][key]
        reported = yaml.safe_load((smoke / 'logs' / f'{net}-{tag}-seed0.yaml').read_text())
        assert reported['lr'] == best
    table = (smoke / 'slimmable.md').read_text()
    assert 'chosen by `protocol.choose_lr`' in table and '| MobileNet-V2: KL-KD |' in table

    # the tuning runs train on the reported runs' training images and are scored on held-out training images,
    # never on the validation images
    cfgs = {p.stem: yaml.safe_load(p.read_text()) for p in (smoke / 'logs').glob('*.yaml')}
    tune_dirs = {Path(c['data_dir']) for k, c in cfgs.items() if k.startswith('tune-')}
    fit_dirs = {Path(c['data_dir']) for k, c in cfgs.items() if not k.startswith('tune-')}
    assert len(tune_dirs) == len(fit_dirs) == 1 and all(c['dataset'] == '' for c in cfgs.values())
    (tune,), (fit,) = tune_dirs, fit_dirs
    files = {(d, split): {p.relative_to(d / split) for p in (d / split).glob('*/*')}
             for d in (tune, fit) for split in ('train', 'validation')}
    held = files[(tune, 'validation')]
    assert held and meta['holdout'] == len(held)
    assert files[(tune, 'train')] == files[(fit, 'train')] and not held & files[(fit, 'train')]
    assert not held & files[(fit, 'validation')]  # file names are the digits' indices: disjoint images
    assert len(files[(fit, 'validation')]) == json.loads((smoke / 'slimmable.json').read_text())['runs'][0]['eval'][
        'num_val_images']

    # every run starts from a zero-initialised classifier
    assert all(c['head_init'] == 'zero' for c in cfgs.values())
    for scale in meta['initial_logit_scale'].values():
        assert scale['run'] == 0 and scale['timm_default'] > 0
