"""alphanet-search end to end on a tiny supernet and sklearn's digits: honest scores (recomputed independently on
the extracted subnet), the recorded recipe, resume after SIGKILL, 2 and 3 gloo processes equal to 1, and clear
refusals of bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from timm.data import create_dataset

from timm_alphanet import count_macs_and_params, extract_subnet, save_pretrained
from timm_alphanet.calibration import CalibrationRecipe, calibrate_bn, disjoint_subsets, load_images, resize_to
from timm_alphanet.cli.search import main as search_main
from timm_alphanet.cost.latency import TimingConfig, build_latency_table
from timm_alphanet.cost.slimmable import width_macs_and_params
from timm_alphanet.search.pareto_file import FORMAT, read_pareto
from timm_alphanet.search.runner import default_image_counts
from timm_alphanet.utils import sha256_file
from timm_alphanet.testing import randomize_bn_stats
from timm_alphanet.data import build_digits_folder

ROOT = Path(__file__).resolve().parent.parent
TINY = {'resolutions': [12, 16], 'first_conv': {'c': [8], 's': 2}, 'mb1': {'c': [8], 'd': [1, 2], 'k': [3], 't': [1]},
        'mb2': {'c': [8, 16], 'd': [1, 2], 'k': [3, 5], 't': [2, 3], 's': 2}, 'last_conv': {'c': [16, 32]},
        'head_expand_ratio': 2}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('search')
    torch.manual_seed(0)
    model = timm.create_model('alphanet_supernet', space=TINY, num_classes=10)
    randomize_bn_stats(model, torch.Generator().manual_seed(0))
    save_pretrained(model, root / 'supernet')
    digits = build_digits_folder(root / 'digits')
    args = ['--dataset', 'sklearn/digits', '--data-dir', str(digits), '--population', '10', '--generations', '4',
            '--calib-images', '128', '--selection-images', '400', '--calib-batch-size', '64', '--batch-size', '100',
            '--no-progress']
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore')
    env.pop('WORLD_SIZE', None)
    return {'root': root, 'supernet': str(root / 'supernet'), 'digits': digits, 'args': args, 'env': env}


@pytest.fixture(scope='module')
def reference(setup):
    out = setup['root'] / 'reference'
    assert search_main([setup['supernet'], '--output', str(out), *setup['args']]) == 0
    return out


def _doc(out):
    return json.loads((Path(out) / 'pareto.json').read_text())


def _lines(out, torn=0):
    """The records of candidates.jsonl; `torn`: how many lines may be torn (skipped here)."""
    records, bad = [], 0
    for line in (Path(out) / 'candidates.jsonl').read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    assert bad <= torn
    return records


def _selection(out, torn=0):
    """arch (as JSON) -> top1 of the selection lines."""
    return {json.dumps(r['arch'], sort_keys=True): r['top1'] for r in _lines(out, torn) if r['kind'] == 'selection'}


def _cli(setup, args, launcher=(sys.executable, '-m')):
    return subprocess.run([*launcher, 'timm_alphanet.cli.search', *args], env=setup['env'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_outputs_record_the_recipe_and_a_non_dominated_front(setup, reference):
    doc, lines = _doc(reference), _lines(reference)
    space = timm.create_model('alphanet_supernet', space=TINY).space
    assert doc['format'] == FORMAT and doc['progress']['complete']
    assert doc['supernet']['sha256'] == sha256_file(Path(setup['supernet']) / 'model.safetensors')
    cal = doc['calibration']
    assert (cal['split'], cal['num_images'], cal['batch_size'], cal['seed'], cal['image_size']) == ('train', 128, 64, 0,
                                                                                                     16)
    assert doc['selection']['num_images'] == 400 and doc['selection']['disjoint_from'] == 'calibration'
    assert doc['validation'] == {'split': 'validation', 'num_images': 355}
    selection = [r for r in lines if r['kind'] == 'selection']
    assert len(selection) == len({json.dumps(r['arch'], sort_keys=True) for r in selection})  # never twice
    assert len(selection) == doc['progress']['evaluated'] == 10 + 4 * 8
    # the front is exactly the non-dominated candidates (brute force over candidates.jsonl)
    dominated = [r for r in selection if any(o['top1'] >= r['top1'] and o['mflops'] <= r['mflops'] and
                                             (o['top1'] > r['top1'] or o['mflops'] < r['mflops']) for o in selection)]
    front = {json.dumps(r['arch'], sort_keys=True) for r in selection if r not in dominated}
    assert {json.dumps(p['arch'], sort_keys=True) for p in doc['points']} == front
    for p in doc['points']:
        macs, params = count_macs_and_params(p['arch'], space, num_classes=10)
        assert p['mflops'] == macs / 1e6 and p['params_m'] == params / 1e6
    # export reads the file as written (same recipe, every point, the supernet's sha256 checked)
    front = read_pareto(reference / 'pareto.json', space, sha256_file(Path(setup['supernet']) / 'model.safetensors'),
                        CalibrationRecipe.from_dict)
    assert front.recipe == CalibrationRecipe.from_dict(cal) and len(front.points) == len(doc['points'])
    assert front.report_split == 'validation' and front.complete
    md = (reference / 'pareto.md').read_text()
    assert sum(line.startswith('| ') and line[2].isdigit() for line in md.splitlines()) == len(doc['points'])
    assert (reference / 'pareto.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_scores_match_an_independent_evaluation_of_the_extracted_subnet(setup, reference):
    """top1: calibrate the *extracted* static subnet on the recorded calibration images, count on the selection
    images; top1_val: the same on the whole validation split."""
    doc = _doc(reference)
    recipe = CalibrationRecipe.from_dict(doc['calibration'])
    train = create_dataset('', root=str(setup['digits']), split='train')
    val = create_dataset('', root=str(setup['digits']), split='validation')
    train.transform = val.transform = recipe.transform()
    calib_idx, sel_idx = disjoint_subsets(len(train), [recipe.num_images, doc['selection']['num_images']],
                                          recipe.seed)
    calib, _ = load_images(train, calib_idx, progress=False)
    sel_x, sel_y = load_images(train, sel_idx, progress=False)
    val_x, val_y = load_images(val, range(len(val)), progress=False)
    supernet = timm.create_model(f'local-dir:{setup["supernet"]}', pretrained=True)
    for point in (doc['points'][0], doc['points'][-1]):
        static = extract_subnet(supernet, point['arch'])
        res = point['arch']['resolution']
        calibrate_bn(static, list(resize_to(calib, res).split(recipe.batch_size)), num_batches=100, progress=False)
        static.eval()
        with torch.no_grad():
            sel = (static(resize_to(sel_x, res)).argmax(-1) == sel_y).sum().item() * 100 / len(sel_y)
            top1_val = (static(resize_to(val_x, res)).argmax(-1) == val_y).sum().item() * 100 / len(val_y)
        assert abs(sel - point['top1']) <= 100 / len(sel_y) + 1e-9  # at most one borderline image apart
        assert abs(top1_val - point['top1_val']) <= 100 / len(val_y) + 1e-9


def test_resume_after_sigkill_gives_the_same_front(setup, reference, tmp_path):
    out = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, '-m', 'timm_alphanet.cli.search', setup['supernet'], '--output', str(out),
                             *setup['args']], env=setup['env'], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    path, deadline = out / 'candidates.jsonl', time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if path.exists() and path.read_text().count('\n') >= 8:
            break
        time.sleep(0.002)
    assert proc.poll() is None, 'the search ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = path.read_text().count('\n')
    assert 8 <= done < 10 + 4 * 8
    with open(path, 'a') as f:
        f.write('{"kind": "selection", "arch": {"resol')  # a torn last line, as a kill during a write leaves
    p = _cli(setup, [setup['supernet'], '--output', str(out), *setup['args'], '--resume'])
    assert p.returncode == 0, p.stderr[-2000:]
    # the torn line (the kill's, or ours) is reported by number and skipped
    assert f'candidates.jsonl: line {done + 1} skipped (not JSON' in p.stdout
    assert f'resuming: {done} subnets already evaluated' in p.stdout
    assert _doc(out)['points'] == _doc(reference)['points']
    assert _selection(out, torn=1) == _selection(reference)


@pytest.mark.parametrize('processes', [2, 3])
def test_several_gloo_processes_give_the_same_search(setup, reference, tmp_path, processes):
    out = tmp_path / f'p{processes}'
    launcher = (sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(processes), '-m')
    p = _cli(setup, [setup['supernet'], '--output', str(out), *setup['args']], launcher=launcher)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'on {processes} process(es)' in p.stdout
    assert {r['process'] for r in _lines(out) if r['kind'] == 'selection'} == set(range(processes))
    assert _doc(out)['points'] == _doc(reference)['points']  # top1 and top1_val identical
    assert _selection(out) == _selection(reference)


def _fails(capsys, argv, *needles):
    with pytest.raises(SystemExit) as e:
        search_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_input_is_refused_naming_the_value_and_nothing_is_written(setup, reference, tmp_path, capsys):
    sn, args, out = setup['supernet'], setup['args'], tmp_path / 'out'
    _fails(capsys, [sn, '--output', str(reference), *args], 'already holds a search (pareto.json, candidates.jsonl)')
    copy = tmp_path / 'copy'
    shutil.copytree(reference, copy)
    _fails(capsys, [sn, '--output', str(copy), *args, '--resume', '--seed', '1'],
           'cannot resume', 'records a different search: search.seed (0 there, 1 here)')
    other = tmp_path / 'other'
    model = timm.create_model('alphanet_supernet', space=TINY, num_classes=10)
    save_pretrained(model, other)
    _fails(capsys, [str(other), '--output', str(copy), *args, '--resume'], 'supernet.sha256')
    _fails(capsys, [sn, '--output', str(out), *args, '--resume'], 'nothing to resume in')
    _fails(capsys, [sn, '--output', str(out), *args, '--mflops', '1000:2000'],
           'mflops limit [1000, 2000] excludes every subnet: this space spans')
    _fails(capsys, [sn, '--output', str(out), *args, '--max-params', '0.00001'],
           'params_m limit <= 1e-05 excludes every subnet')
    _fails(capsys, [sn, '--output', str(out), *args, '--calib-images', '1300'],
           'has 1442 images, too few for 1300 --calib-images + 400 --selection-images')
    _fails(capsys, [str(tmp_path / 'nowhere'), '--output', str(out), *args], 'supernet not found', 'training run folder')
    _fails(capsys, [sn, '--output', str(out), *args, '--objectives', 'top1,flops'], "unknown objective 'flops'")
    lut = tmp_path / 'lut.json'
    build_latency_table({**TINY, 'resolutions': [16]}, threads=1, num_classes=10, progress=False,
                        timing=TimingConfig(0, 1, 0.0)).save(lut)
    _fails(capsys, [sn, '--output', str(out), *args, '--latency-table', str(lut), '--objectives', 'top1,latency'],
           'lut.json: lacks', 'layer signatures of this space (10 classes)')
    assert not out.exists()
    # the copy was not touched by the refused resumes
    assert (copy / 'candidates.jsonl').read_text() == (reference / 'candidates.jsonl').read_text()


def test_a_search_too_large_is_refused_in_one_line_before_anything_else(setup, tmp_path, capsys):
    """--population 1000000000 hung after its first line; now nothing is printed or written but the refusal."""
    sn, args, out = setup['supernet'], setup['args'], tmp_path / 'out'
    for extra, needle in ((['--population', '1000000000'], 'population 1000000000 is over the limit of 100000'),
                          (['--population', '1000', '--generations', '10000'],
                           'subnets to evaluate, over the limit of 1000000 (MAX_EVALUATIONS'),
                          (['--population', '129'], "population 129 is over the limit of the space's size: it has "
                                                    'only 128 distinct subnets')):
        with pytest.raises(SystemExit) as e:
            search_main([sn, '--output', str(out), *args, *extra])
        printed, err = capsys.readouterr()
        assert e.value.code == 2 and needle in err and err.count('\n') == 1 and printed == '', (printed, err)
    assert not out.exists()


def test_latency_objective_and_limit(setup, tmp_path):
    lut = tmp_path / 'lut.json'
    table = build_latency_table(TINY, threads=1, num_classes=10, progress=False, timing=TimingConfig(0, 1, 0.0))
    table.save(lut)
    limit = sorted(table.predict(a) for a in (table.space.min_config(), table.space.max_config()))
    cap = (limit[0] + limit[1]) / 2
    out = tmp_path / 'lat'
    assert search_main([setup['supernet'], '--output', str(out), *setup['args'], '--latency-table', str(lut),
                        '--objectives', 'top1,latency,mflops', '--max-latency-ms', str(cap), '--no-val',
                        '--generations', '1']) == 0
    doc = _doc(out)
    assert doc['latency']['device']['threads'] == 1 and doc['validation'] is None
    for r in _lines(out):
        assert r['latency_ms'] == pytest.approx(table.predict(r['arch'])) and r['latency_ms'] <= cap
    assert all(p['top1_val'] is None for p in doc['points'])


def test_a_slimmable_supernet_is_searched_too(setup, tmp_path, capsys):
    model = timm.create_model('slimmable_mobilenetv2_100', num_classes=10,
                              space={'widths': [0.35, 0.5, 1.0], 'resolutions': [16, 24]})
    save_pretrained(model, tmp_path / 'slim')
    out = tmp_path / 'out'
    assert search_main([str(tmp_path / 'slim'), '--output', str(out), *setup['args'], '--population', '4',
                        '--generations', '1', '--image-size', '24']) == 0
    said = capsys.readouterr().out
    # the front's uncertainty, then the next steps, as training ends
    assert '| 95 % CI |' in said and '- uncertainty: top-1 sel. is measured on ' in said
    assert said.rstrip().endswith(f'alphanet-export {tmp_path / "slim"} --pareto {out / "pareto.json"} --output '
                                  f'{out / "export"}')
    lines = [r for r in _lines(out) if r['kind'] == 'selection']
    assert len(lines) == 6  # the whole space: 3 widths x 2 resolutions
    for r in lines:
        assert (r['mflops'] * 1e6, r['params_m'] * 1e6) == width_macs_and_params(model, r['arch'])
    front = [r for r in lines if not any(o['top1'] >= r['top1'] and o['mflops'] <= r['mflops'] and
                                         (o['top1'] > r['top1'] or o['mflops'] < r['mflops']) for o in lines)]
    assert sorted(map(str, (p['arch'] for p in _doc(out)['points']))) == sorted(map(str, (r['arch'] for r in front)))


def test_default_image_counts():
    assert default_image_counts(1_281_167) == (2048, 5000)
    assert default_image_counts(1442) == (721, 721)  # half for calibration, the rest for selection
    assert default_image_counts(1442, 1000) == (1000, 442)  # selection takes what calibration leaves
    assert default_image_counts(20_000) == (2048, 5000)
    assert default_image_counts(1442, 100, 50) == (100, 50)
    with pytest.raises(ValueError, match='has 1442 images, too few for 1000 calibration images \\+ 500 selection'):
        default_image_counts(1442, 1000, 500)
    with pytest.raises(ValueError, match='--calib-images must be a positive integer, got 0'):
        default_image_counts(10, 0, names=('--calib-images', '--selection-images'))
