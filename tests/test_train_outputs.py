"""What a run leaves behind (issue "The first ten minutes"): a demo-style `accelerate launch` with the shipped launcher
config prints no launcher warning, its last lines name the run folder, the model folders and the next commands with
real paths, and every model in final/ loads with `local-dir:` and scores, through timm's pipeline from its own
pretrained_cfg, exactly the top-1 the run printed and recorded."""
import json
import os
import re
import shlex
import sys

import pytest
import timm
import yaml
from accelerate import Accelerator

from timm_alphanet.data import dataset_and_root, open_image_dataset
from timm_alphanet.cost.flops import count_macs_and_params
from timm_alphanet.evaluation import validate_model
from timm_alphanet.sources import load_supernet
from timm_alphanet.spaces import SearchSpace

from test_train_run import COMMON, ROOT, TINY_SPACE, _train, env, tiny_cfg  # noqa: F401  (fixtures)

LAUNCHER_WARNING = 'were not passed to `accelerate launch`'


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory, env, tiny_cfg):  # noqa: F811
    out = tmp_path_factory.mktemp('out')
    data = str(tmp_path_factory.mktemp('data') / 'digits32')
    launch = [sys.executable, '-m', 'accelerate.commands.launch', '--config_file',
              str(ROOT / 'train_configs' / 'accelerate.yaml')]
    p = _train(['-c', tiny_cfg, *COMMON, '-b', '128', '--epochs', '1', '--eval-archs', 'min', '--data-dir', data,
                '--output', str(out)], env, launcher=launch)
    return p, out, data


def test_the_shipped_launcher_config_silences_accelerates_defaults_warning(demo_run):
    p, _, _ = demo_run
    assert LAUNCHER_WARNING not in p.stderr and LAUNCHER_WARNING not in p.stdout
    assert 'on 1 process(es)' in p.stdout


def test_last_lines_name_the_run_the_models_and_the_next_commands(demo_run):
    p, out, data = demo_run
    runs = [d for d in out.iterdir() if not d.is_symlink()]
    assert len(runs) == 1 and (out / 'latest').resolve() == runs[0].resolve()
    run = runs[0]
    tail = p.stdout[p.stdout.index('run folder:'):].splitlines()
    assert tail[0] == f'run folder: {run} (also {out / "latest"})'
    for name in ('max', 'min'):
        assert any(line.strip().startswith(f'{run / "final" / name}  top1 ') for line in tail), name
    assert any(line.strip().startswith(f'{run / "final" / "supernet"}  the weight-sharing supernet') for line in tail)
    commands = {line.split(':', 1)[0].strip(): line.split(':', 1)[1].strip() for line in tail
                if line.startswith('  ') and line.strip().split(':', 1)[0] in ('evaluate', 'search', 'export')}
    assert commands['evaluate'] == f'alphanet-validate --model local-dir:{run}/final/max --data-dir {data}'
    # digits: the README's short search, not the default 20 generations of 100
    assert commands['search'] == f'alphanet-search {run} --output {run}/search --population 12 --generations 2'
    assert commands['export'] == f'alphanet-export {run} --pareto {run}/search/pareto.json --output {run}/export'


def _recorded(folder):
    return json.loads((folder / 'config.json').read_text())


def test_final_models_score_what_was_printed_when_loaded_as_a_user_would(demo_run, capsys):
    p, out, data = demo_run
    run = (out / 'latest').resolve()
    space = SearchSpace.from_dict(TINY_SPACE)
    table = {m.group(1): float(m.group(2)) for m in re.finditer(r'^\| (max|min) \| [^|]+ \| [^|]+ \| ([0-9.]+) \|',
                                                                 p.stdout, re.M)}
    assert set(table) == {'max', 'min'}
    acc = Accelerator(cpu=True)
    for name, arch in (('max', space.max_config()), ('min', space.min_config())):
        folder = run / 'final' / name
        config = _recorded(folder)
        meta = config['timm_alphanet']
        assert config['pretrained_cfg']['input_size'] == [3, 16, 16] and config['pretrained_cfg']['crop_pct'] == 1.0
        assert meta['arch'] == arch.to_dict() and meta['calibration']['recipe']['split'] == 'train'
        macs, _ = count_macs_and_params(arch, space, num_classes=10)
        assert meta['mflops'] == pytest.approx(macs / 1e6)  # the model's 10 classes, not 1000
        [result] = meta['results']
        val = open_image_dataset(*dataset_and_root(data), 'validation')
        assert (result['split'], result['pipeline'], result['num_images']) == ('validation', 'timm', len(val))
        # as a user would: timm.create_model('local-dir:...') and timm's pipeline from its own pretrained_cfg
        model = timm.create_model(f'local-dir:{folder}', pretrained=True)
        again = validate_model(acc, model, val, 'timm', batch_size=64)  # alphanet-validate's batch, not the run's
        # the same images right (evaluate sums per-batch percentages, so the last float bits follow the batch size)
        assert again['top1'] == pytest.approx(result['top1'], abs=1e-5)
        assert f'{again["top1"]:.2f}' == f'{table[name]:.2f}'
        assert 0 < result['top1'] < 100
    supernet = _recorded(run / 'final' / 'supernet')
    assert supernet['timm_alphanet']['kind'] == 'supernet' and 'not a ready-to-use model' in \
        supernet['timm_alphanet']['notes']
    assert supernet['pretrained_cfg']['input_size'] == [3, 16, 16] and supernet['pretrained_cfg']['crop_pct'] == 1.0
    assert 'not a ready-to-use model' in (run / 'final' / 'supernet' / 'README.md').read_text()
    # the printed evaluate command, run as written, prints the recorded top-1
    from timm_alphanet.cli.validate import main as validate_main
    line = next(li for li in p.stdout.splitlines() if li.strip().startswith('evaluate:'))
    argv = shlex.split(line.split(':', 1)[1])[1:]
    assert validate_main([*argv, '--no-progress', '-j', '0']) == 0
    top1 = _recorded(run / 'final' / 'max')['timm_alphanet']['results'][0]['top1']
    assert f'top1 {top1:.3f}' in capsys.readouterr().out


def test_latest_opens_as_the_run_and_export_defaults_to_its_data(demo_run, tmp_path, capsys):
    _, out, data = demo_run
    supernet, source = load_supernet(str(out / 'latest'))
    assert source.kind == 'run' and source.path == str((out / 'latest').resolve() / 'final' / 'supernet')
    from timm_alphanet.cli.export import main as export_main
    assert export_main([str(out / 'latest'), '--arch', 'min', '--output', str(tmp_path / 'exported'),
                        '--calib-images', '64', '--calib-batch-size', '64', '--no-latency', '--no-progress',
                        '-j', '0']) == 0
    said = capsys.readouterr().out
    assert f'calibration data: {data} (recorded by the training run of {out / "latest"}' in said
    meta = _recorded(tmp_path / 'exported' / 'alphanet_min')['timm_alphanet']
    assert meta['calibration']['data'] == 'digits32' and meta['calibration']['recipe']['num_images'] == 64
    args = yaml.safe_load(((out / 'latest') / 'args.yaml').read_text())
    assert args['data_dir'] == data and os.path.isdir(data)
