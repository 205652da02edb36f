"""benchmarks/reproduce/kd_ordering.py: its statistics against independent arithmetic, its baselines (no KD really is
the label loss alone; the supernet's no-KD run really turns in-place KD off), and a tiny end-to-end run whose table,
JSON and plot agree with each other (the CI smoke test; seconds)."""
import importlib.util
import json
import math
import re
import statistics
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'benchmarks' / 'reproduce' / 'kd_ordering.py'


@pytest.fixture(scope='module')
def kdo():
    spec = importlib.util.spec_from_file_location('kd_ordering', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(key, part, method, seed):
    return SimpleNamespace(key=key, part=part, method=method, seed=seed)


def test_summary_matches_hand_arithmetic(kdo):
    top1 = {'none': [50.0, 52.0, 51.0, 49.0, 53.0], 'kl': [55.0, 54.0, 57.0, 56.0, 53.0],
            'alpha': [56.0, 55.5, 56.0, 58.0, 54.0]}
    jobs, done = [], {}
    for method, values in top1.items():
        for seed, v in zip([3, 1, 4, 0, 2], values):  # seeds in any order: pairing is by seed, not position
            key = f'students/s/{method}/s{seed}'
            jobs.append(_fake_run(key, 'students', method, seed))
            done[key] = {'top1': {'s': v}}
    row, = kdo.summarize(done, jobs)['rows']
    assert row['kl']['mean'] == pytest.approx(55.0) and row['kl']['n'] == 5
    assert row['kl']['std'] == pytest.approx(math.sqrt(2.5))  # squared deviations 0,1,4,1,4 over n - 1 = 4
    diffs = {3: 1.0, 1: 1.5, 4: -1.0, 0: 2.0, 2: 1.0}  # alpha - KL per seed, by hand
    d = row['alpha_minus_kl']
    assert {int(s): v for s, v in d['per_seed'].items()} == pytest.approx(diffs)
    assert d['mean'] == pytest.approx(0.9) and d['wins'] == 4 and d['ties'] == 0 and d['n'] == 5
    sd = math.sqrt(sum((x - 0.9) ** 2 for x in diffs.values()) / 4)
    assert d['std'] == pytest.approx(sd)
    half = 2.7764451 * sd / math.sqrt(5)  # Student t, 4 degrees of freedom, 97.5% (tables)
    assert d['ci95'] == pytest.approx([0.9 - half, 0.9 + half], abs=1e-5)
    assert row['kl_minus_none']['mean'] == pytest.approx(4.0)


def test_a_single_seed_has_no_spread_rather_than_a_made_up_one(kdo):
    jobs = [_fake_run(f'supernet/{m}/s0', 'supernet', m, 0) for m in kdo.METHODS]
    done = {j.key: {'top1': {'max': 60.0 + i, 'min': 40.0}} for i, j in enumerate(jobs)}
    rows = kdo.summarize(done, jobs)['rows']
    assert [r['row'] for r in rows] == ['max', 'min']
    assert math.isnan(rows[0]['alpha_minus_kl']['std']) and rows[0]['alpha_minus_kl']['mean'] == 1.0
    assert '± n/a' in kdo.table({'rows': rows}, 'supernet')


def test_no_kd_student_is_exactly_the_label_loss(kdo):
    """The trainer's KD path with weight 0 (the script's no-KD baseline): loss and gradients of the label loss alone."""
    from timm_alphanet.task import AlphaDistillationTask
    torch.manual_seed(0)
    student = timm.create_model('mobilenetv2_035', num_classes=10)
    placeholder = timm.create_model(kdo.PLACEHOLDER_TEACHER, num_classes=10)
    task = AlphaDistillationTask(student, placeholder, criterion_kwargs=dict(smoothing=0.1), distill_loss_weight=0.0,
                                 verbose=False).train()
    x, y = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 2, 3, 4])
    out = task(x, y)
    out['loss'].backward()
    kd_grads = [p.grad.clone() for p in student.parameters()]
    assert out['kd_loss'] != 0  # there is a KD term; its weight is what is zero
    student.zero_grad()
    from timm.loss import LabelSmoothingCrossEntropy
    with torch.random.fork_rng():
        plain = LabelSmoothingCrossEntropy(0.1)(student(x), y)
    plain.backward()
    torch.testing.assert_close(out['loss'], plain, rtol=0, atol=0)
    for a, p in zip(kd_grads, student.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=0)


def test_supernet_baseline_trains_with_in_place_kd_off(kdo, tmp_path):
    """The no-KD supernet run is the trainer's run with SandwichTask.inplace_kd False at every step (and KD on else)."""
    from timm_alphanet.task import SandwichTask
    from timm_alphanet.train import TrainConfig, run
    data = kdo.digits_subset(tmp_path / 'data', 0.05)
    cfg = TrainConfig(space=kdo.mini_space(12), dataset='', data_dir=str(data),
                      input_size=(3, 12, 12), epochs=1, batch_size=32, no_progress=True, bn_calib_batches=1,
                      output=str(tmp_path / 'runs'))
    seen = []
    forward = SandwichTask.forward

    def spy(self, *args, **kwargs):
        seen.append(self.inplace_kd)
        return forward(self, *args, **kwargs)
    with mock.patch.object(SandwichTask, 'forward', spy):
        kdo._run_without_inplace_kd(cfg.replace(experiment='off'))
        assert seen == [False, False]
        run(cfg.replace(experiment='on'))
    assert seen == [False, False, True, True]


def _cells(md: str, part: str):
    section = md.split(f'## {part}')[1].split('\n## ')[0]
    rows = [line for line in section.splitlines() if line.startswith('| ') and not line.startswith('| sub')
            and not line.startswith('| student')]
    return {r.split(' | ')[0][2:]: [c.strip() for c in r.strip('| ').split(' | ')] for r in rows}


def test_tiny_run_writes_consistent_table_json_and_plot(kdo, tmp_path, capsys):
    out = tmp_path / 'kdo'
    argv = ['--output', str(out), '--seeds', '0', '1', '--epochs', '1', '--teacher-epochs', '1',
            '--supernet-epochs', '1', '--students', 'mobilenetv2_035', '--train-fraction', '0.05', '--jobs', '1',
            '--threads', '1', '--set', 'bn_calib_batches=1', '--lr-grid-factors', '0.5', '2']
    assert kdo.main(argv) == 0
    data = json.loads((out / 'kd_ordering.json').read_text())
    md = (out / 'kd_ordering.md').read_text()
    png = (out / 'kd_ordering.png').read_bytes()
    budget = data['meta']['settings']['budget']  # a reported run's budget: the lr is per method, not a tuning run's
    assert 'lr per method' in budget['students'] and 'lr per method' in budget['supernet']
    assert 'lr per method' not in budget['teacher']
    assert png.startswith(b'\x89PNG\r\n\x1a\n')
    import matplotlib.image
    assert matplotlib.image.imread(str(out / 'kd_ordering.png')).shape[0] > 100

    rows = {(r['part'], r['row']): r for r in data['rows']}
    assert set(rows) == {('supernet', 'max'), ('supernet', 'random'), ('supernet', 'min'),
                         ('students', 'mobilenetv2_035')}
    assert data['teacher'] and 0 <= data['teacher']['mobilenetv2_100'] <= 100
    assert data['meta']['settings']['seeds'] == [0, 1]
    n_val = len(list((out / 'data').glob('digits*_train0.05/validation/*/*')))
    assert n_val > 300 and f'all {n_val} validation images' in data['meta']['settings']['data']
    n_train = len(list((out / 'data').glob('digits*_train0.05_fit*/train/*/*')))  # the students', not the teacher's
    n_held = len(list((out / 'data').glob('digits*_train0.05_tune*/validation/*/*')))
    assert n_held and f'training split ({n_train} images for training, {n_held} more held out' in \
        data['meta']['settings']['data']
    cpu = data['meta']['settings']['run_cpu_seconds']  # every run's cost, for sizing the default
    assert len(cpu) == 25 and all(v > 0 for v in cpu.values())
    assert f'CPU time of the 25 run(s) {sum(cpu.values()) / 60:.1f} min' in md
    for (part, name), r in rows.items():
        for m in kdo.METHODS:  # the JSON's per-seed values give its summary ...
            values = list(r['per_seed'][m].values())
            assert len(values) == 2 and all(0 <= v <= 100 for v in values)
            assert r[m]['mean'] == pytest.approx(statistics.fmean(values))
            assert r[m]['std'] == pytest.approx(statistics.stdev(values))
        for s, d in r['alpha_minus_kl']['per_seed'].items():  # ... the paired differences are alpha - KL per seed
            assert d == pytest.approx(r['per_seed']['alpha'][s] - r['per_seed']['kl'][s])
        cells = _cells(md, part)[name]  # ... and the table shows exactly those numbers
        assert cells[1:4] == [f"{r[m]['mean']:.2f} ± {r[m]['std']:.2f}" for m in kdo.METHODS]
        d = r['alpha_minus_kl']
        assert cells[4] == f"{d['mean']:+.2f} ± {d['std']:.2f}"
        assert cells[6] == f"{d['wins']}/2"
        assert cells[7] == ', '.join(f'{v:+.1f}' for v in d['per_seed'].values())

    # every run went through the trainer with the switches the table claims
    args = {p.parent.name: p.read_text() for p in (out / 'runs').glob('*/args.yaml')}
    assert re.search(r'^kd_weight: 0\.0$', args['mobilenetv2_035-none-s1'], re.M)
    assert f'teacher: local-dir:{out / "runs" / "teacher" / "final"}' in args['mobilenetv2_035-kl-s1']
    assert re.search(r'^kd_loss: kl$', args['mobilenetv2_035-kl-s1'], re.M)
    assert re.search(r'^kd_loss: alpha$', args['supernet-alpha-s0'], re.M)
    assert (out / 'runs' / 'teacher' / 'final' / 'model.safetensors').is_file()

    # the protocol: KD as (1 - l) CE + l KD; the teacher augmented, on training images the students never see
    assert re.search(r'^kd_weight: 0\.9$', args['mobilenetv2_035-alpha-s0'], re.M)
    assert re.search(r'^task_weight: 0\.1$', args['mobilenetv2_035-alpha-s0'], re.M)
    assert re.search(r'^no_aug: false$', args['teacher'], re.M) and re.search(r'^no_aug: true$',
                                                                              args['mobilenetv2_035-kl-s0'], re.M)
    teacher_dir = Path(re.search(r'^data_dir: (.+)$', args['teacher'], re.M).group(1))
    student_dir = Path(re.search(r'^data_dir: (.+)$', args['mobilenetv2_035-kl-s0'], re.M).group(1))
    names = {d: {p.relative_to(d / 'train') for p in (d / 'train').glob('*/*')} for d in (teacher_dir, student_dir)}
    assert names[teacher_dir] and names[student_dir] and not names[teacher_dir] & names[student_dir]
    info = data['teacher_information']
    assert info['num_images'] == len(names[student_dir]) and info['kl_to_smoothed'] > 0 and 0 <= info['top1'] <= 100
    assert f"KL to the smoothed labels {info['kl_to_smoothed']:.3f} nats" in md
    assert md.count('- H1 (KL-KD > no KD') == 4 and 'Minimum detectable effect at 80 % power' in md

    # the mechanism next to top-1: every student run measured against the teacher on the same validation images
    records = [json.loads(line) for line in (out / 'results.jsonl').read_text().splitlines()]
    students = [r for r in records if r['key'].startswith('students/')]
    assert len(students) == 6 and all('mechanism' in r for r in students)
    for r in students:  # the same images and pipeline as the trainer's own validation of the student and teacher
        assert r['mechanism']['student_top1'] == pytest.approx(r['top1']['mobilenetv2_035'], abs=1e-6)
        assert r['mechanism']['teacher_top1'] == pytest.approx(data['teacher']['mobilenetv2_100'], abs=1e-6)
        assert r['mechanism']['kl'] > 0
    mech = rows[('students', 'mobilenetv2_035')]['mechanism']
    assert set(mech) == set(kdo.METHODS)
    kl_runs = [r['mechanism']['kl'] for r in students if '/kl/' in r['key']]
    assert mech['kl']['kl'] == pytest.approx(statistics.fmean(kl_runs))
    assert f"| mobilenetv2_035: KL-KD | {mech['kl']['kl']:.4f} |" in md
    assert not (out / 'runs' / 'mobilenetv2_035-kl-s1' / 'checkpoints').exists()  # cleaned once recorded

    # the protocol's lr: per row and method, the same tuning runs (2 lrs x tuning seed 1000) ...
    tuning = [r for r in records if r['key'].startswith('tune/')]
    by_row = {}
    for r in tuning:
        part, model, method, lr, seed = r['key'].split('/')[1:]
        by_row.setdefault(f'{part}/{model}/{method}', {})[(float(lr[2:]), int(seed[1:]))] = statistics.fmean(
            r['top1'].values())
    assert len(by_row) == 6 and all(set(runs) == {(0.01, 1000), (0.04, 1000)} for runs in by_row.values())
    assert set(data['lr_tuning']) == set(by_row)
    for row, runs in by_row.items():  # ... the chosen lr is the argmax of the recorded held-out top-1 (ties: smaller)
        best = max(sorted(runs), key=lambda k: runs[k])[0]
        t = data['lr_tuning'][row]
        assert t['chosen'] == best and t['held_out_top1'] == {f'{lr:g}': v for (lr, _), v in runs.items()}
        assert data['meta']['settings']['lr'][row] == best
        part, model, method = row.split('/')
        run = f"{'supernet' if part == 'supernet' else model}-{method}-s1"
        assert re.search(rf'^lr: {best}$', args[run], re.M)  # the reported runs train at it
        assert f"| {model}: {kdo.METHOD_NAMES[method]} | " in md
    # ... and the tuning runs never see the validation images: they train on the reported runs' training part and
    # are scored on a held-out part of the students' training images, disjoint from both
    tune_dir = Path(re.search(r'^data_dir: (.+)$', args['tune-mobilenetv2_035-kl-lr0.04-s1000'], re.M).group(1))
    subset = student_dir.parent / student_dir.name.split('_fit')[0]
    files = {d: {p.relative_to(d) for p in d.glob('*/*')} for d in
             (tune_dir / 'train', tune_dir / 'validation', student_dir / 'validation', subset / 'train',
              subset / 'validation')}
    held = files[tune_dir / 'validation']
    assert held and held <= files[subset / 'train'] and not held & files[subset / 'validation']
    assert not held & names[student_dir] and files[tune_dir / 'train'] == names[student_dir]
    assert not held & names[teacher_dir]  # the teacher never saw the images the lr is chosen on
    assert files[student_dir / 'validation'] == files[subset / 'validation']
    for run, text in args.items():  # every reported run on the students' part; every tuning run on the tuning folder
        if run != 'teacher':
            want = tune_dir if run.startswith('tune-') else student_dir
            assert Path(re.search(r'^data_dir: (.+)$', text, re.M).group(1)) == want, run
            assert re.search(r'^head_init: zero$', text, re.M), run  # zero-initialised classifier everywhere
    assert data['initial_logit_scale'].keys() == {'supernet', 'mobilenetv2_035'}
    for v in data['initial_logit_scale'].values():
        assert v['run'] == 0 and v['timm_default'] > 0  # zero head: every logit 0; timm's own init is not
    assert 'Initial logit scale' in md and 'mobilenetv2_035 0 (' in md

    # a second invocation reuses every finished run (nothing is trained again)
    lines = (out / 'results.jsonl').read_text().splitlines()
    assert len(lines) == 25  # teacher + 2 seeds x 3 methods x 2 rows + 2 lrs x 3 methods x 2 rows of tuning
    capsys.readouterr()
    assert kdo.main(argv) == 0
    assert 'reusing 25 finished run(s)' in capsys.readouterr().out
    assert (out / 'results.jsonl').read_text().splitlines() == lines
    assert json.loads((out / 'kd_ordering.json').read_text())['rows'] == data['rows']


def test_distilled_deit_no_kd_baseline_is_deit_without_the_token(kdo):
    assert kdo.without_distillation_token('deit_tiny_distilled_patch16_224') == 'deit_tiny_patch16_224'
    assert kdo.without_distillation_token('mobilenetv2_050') == 'mobilenetv2_050'
    assert kdo.without_distillation_token('local-dir:/x/deit') == 'local-dir:/x/deit'


def test_a_given_teacher_replaces_the_trained_one(kdo, tmp_path):
    spec = 'local-dir:/elsewhere/teacher'
    args = kdo.parse_args(['--output', str(tmp_path), '--parts', 'students', '--students', 'mobilenetv2_035',
                           '--seeds', '0', '--trained-teacher', spec])
    jobs = [j for j in kdo.plan(args) if j.tuning_lr is None]
    assert [j.part for j in jobs] == ['students'] * 3  # no teacher run to wait for
    kd = {j.method: j for j in jobs}
    assert kd['kl'].cfg.teacher == spec and kd['alpha'].cfg.teacher == spec and kd['kl'].needs is None
    assert kd['none'].cfg.teacher != spec and kd['none'].cfg.kd_weight == 0.0


def test_a_results_line_cut_short_is_skipped_not_fatal(kdo, capsys):
    text = '{"key": "a", "top1": 1.0}\n{"key": "b", "to\n[1, 2]\n'
    assert kdo._read_records(text) == [{'key': 'a', 'top1': 1.0}]
    assert 'skipping a damaged results line' in capsys.readouterr().err


def test_choose_lrs_takes_each_rows_best_mean_held_out_top1(kdo):
    """Hand-made tuning results: the best lr is neither the smallest nor the same for both rows, and a supernet's
    score is the mean over its validated subnets."""
    top1 = {('a', 0.01): ({'s': 50.0}, {'s': 52.0}), ('a', 0.02): ({'s': 70.0}, {'s': 68.0}),
            ('a', 0.04): ({'s': 60.0}, {'s': 61.0}),
            ('b', 0.01): ({'max': 90.0, 'min': 80.0}, {'max': 90.0, 'min': 82.0}),
            ('b', 0.02): ({'max': 95.0, 'min': 60.0}, {'max': 95.0, 'min': 60.0}),  # best max, worst mean
            ('b', 0.04): ({'max': 50.0, 'min': 50.0}, {'max': 50.0, 'min': 50.0})}
    jobs, done = [], {}
    for (row, lr), per_seed in top1.items():
        for seed, t in zip((1000, 1001), per_seed):
            key = f'tune/{row}/lr{lr:g}/s{seed}'
            jobs.append(SimpleNamespace(key=key, row=row, seed=seed, tuning_lr=lr))
            done[key] = {'top1': t}
    jobs.append(SimpleNamespace(key='reported', row='a', seed=0, tuning_lr=None))  # not a tuning run: ignored
    lrs, tuning = kdo.choose_lrs(jobs, done)
    assert lrs == {'a': 0.02, 'b': 0.01}
    assert tuning['a']['held_out_top1'] == {'0.01': 51.0, '0.02': 69.0, '0.04': 60.5}
    assert tuning['b']['held_out_top1']['0.01'] == pytest.approx(85.5) and tuning['b']['runs'] == 6
    assert tuning['a']['tuning_seeds'] == [1000, 1001] and tuning['a']['grid'] == [0.01, 0.02, 0.04]
