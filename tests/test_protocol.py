"""benchmarks/reproduce/_protocol.py: splits, loss weights, lr choice and the power arithmetic against hand values,
scipy's noncentral t and independent float64 formulas."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def protocol():
    spec = importlib.util.spec_from_file_location('_protocol', ROOT / 'benchmarks' / 'reproduce' / '_protocol.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault('_protocol', module)
    spec.loader.exec_module(module)
    return module


def test_splits_are_disjoint_stratified_and_fixed(protocol):
    labels = [i % 3 for i in range(60)]  # 20 per class
    a, b, c = protocol.disjoint_splits(labels, [0.5, 0.3, 0.2], seed=0)
    assert not (set(a) & set(b)) and not (set(a) & set(c)) and not (set(b) & set(c))
    assert len(a) == 30 and len(b) == 18 and len(c) == 12
    for part, per_class in ((a, 10), (b, 6), (c, 4)):
        assert [sum(labels[i] == k for i in part) for k in range(3)] == [per_class] * 3
    assert protocol.disjoint_splits(labels, [0.5, 0.3, 0.2], seed=0) == [a, b, c]
    assert protocol.disjoint_splits(labels, [0.5, 0.3, 0.2], seed=1) != [a, b, c]
    with pytest.raises(ValueError):
        protocol.disjoint_splits(labels, [0.7, 0.5])


def test_convex_weights(protocol):
    assert protocol.convex_weights(0.5) == (0.5, 0.5) and protocol.convex_weights(1.0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        protocol.convex_weights(1.5)


def test_choose_lr_uses_the_same_runs_for_every_lr_and_breaks_ties_low(protocol):
    calls = []

    def score(lr, seed):
        calls.append((lr, seed))
        return {0.1: 80.0, 0.2: 90.0, 0.4: 90.0}[lr] + seed
    best, means = protocol.choose_lr([0.4, 0.1, 0.2], score, [0, 1])
    assert best == 0.2 and means == {0.1: 80.5, 0.2: 90.5, 0.4: 90.5}
    assert sorted(calls) == sorted((lr, s) for lr in (0.1, 0.2, 0.4) for s in (0, 1))


def test_paired_test_matches_scipy(protocol):
    diffs = [0.5, -0.2, 1.1, 0.3, 0.8, 0.0]
    r = protocol.paired_test(diffs)
    ref = stats.ttest_1samp(diffs, 0.0, alternative='greater')
    assert r['t'] == pytest.approx(ref.statistic) and r['p'] == pytest.approx(ref.pvalue)
    lower = stats.ttest_1samp(diffs, 0.0, alternative='greater').confidence_interval(0.95).low
    assert r['lower95'] == pytest.approx(lower)
    ni = protocol.paired_test(diffs, margin=1.0)  # non-inferiority: H0 mean <= -1
    assert ni['p'] == pytest.approx(stats.ttest_1samp(diffs, -1.0, alternative='greater').pvalue)
    assert math.isnan(protocol.paired_test([1.0])['p']) and math.isnan(protocol.paired_test([1.0, 1.0])['p'])


def test_minimum_detectable_effect_by_hand_and_by_noncentral_t(protocol):
    # n = 10, std 1: (t_.95,9 + t_.80,9) / sqrt(10) = (1.833113 + 0.883404) / 3.162278 (tables)
    assert protocol.min_detectable_effect(1.0, 10) == pytest.approx((1.833113 + 0.883404) / math.sqrt(10), rel=1e-5)
    for n in (5, 20, 100):  # the true power at that effect (noncentral t) is close to 80 %
        mde = protocol.min_detectable_effect(2.0, n)
        crit = stats.t.ppf(0.95, n - 1)
        power = stats.nct.sf(crit, n - 1, mde * math.sqrt(n) / 2.0)
        assert 0.77 < power < 0.82, (n, power)
    assert math.isnan(protocol.min_detectable_effect(1.0, 1))


def test_seeds_needed_is_the_first_n_that_reaches_the_effect(protocol):
    n = protocol.seeds_needed(3.0, 0.5)
    assert protocol.min_detectable_effect(3.0, n) <= 0.5 < protocol.min_detectable_effect(3.0, n - 1)
    assert 200 < n < 250  # about ((1.645 + 0.842) * 3 / 0.5)^2 = 223 by the normal approximation


def test_teacher_information_is_kl_to_the_smoothed_labels(protocol):
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    r = protocol.teacher_information(logits, labels, smoothing=0.1)
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        t = [0.9 + 0.1 / 3 if k == y else 0.1 / 3 for k in range(3)]
        total += sum(pk * math.log(pk / tk) for pk, tk in zip(p, t))
    assert r['kl_to_smoothed'] == pytest.approx(total / 2, rel=1e-12)
    assert r['top1'] == 50.0 and r['num_images'] == 2
    assert protocol.logit_scale(torch.zeros(4, 3)) == 0.0


def test_hypotheses_lines_state_tests_and_detectable_effects(protocol):
    lines = protocol.hypotheses_lines([1.0, 2.0, 1.5], [0.1, -0.2, 0.0])
    assert lines[0].startswith('- H1') and 'supported' in lines[0] and 'Minimum detectable effect' in lines[0]
    assert lines[1].startswith('- H2') and 'by > 1' in lines[1]


def test_tuning_table_gives_rows_with_another_grid_a_table_of_their_own(protocol):
    tuning = {'a': {'grid': [0.1, 0.2], 'held_out_top1': {'0.1': 50.0, '0.2': 60.0}, 'chosen': 0.2},
              'b': {'grid': [0.5, 1.0], 'held_out_top1': {'0.5': 70.0, '1': 65.0}, 'chosen': 0.5}}
    lines = protocol.tuning_table(tuning, str.upper, 'row')
    assert lines[0] == '| row | lr 0.1 | lr 0.2 | chosen lr |' and lines[2] == '| A | 50.00 | 60.00 | 0.2 |'
    assert '| row | lr 0.5 | lr 1 | chosen lr |' in lines and '| B | 70.00 | 65.00 | 0.5 |' in lines
    assert 'nan' not in '\n'.join(lines)


def test_tuning_arguments_refuse_choosing_on_the_reported_images(protocol, tmp_path):
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    protocol.add_tuning_arguments(parser, 0.2, (1000,))
    (tmp_path / 'data' / 'validation').mkdir(parents=True)

    def check(*argv, data_dir=None):
        protocol.check_tuning_arguments(parser, parser.parse_args(list(argv)), given_data=data_dir is not None,
                                        data_dir=data_dir)
    check()  # the defaults
    check('--tune-data-dir', str(tmp_path / 'held'), data_dir=tmp_path / 'data')
    for argv, data_dir in ((['--tune-data-dir', str(tmp_path / 'data' / '.')], tmp_path / 'data'),
                           (['--tuning-seeds', '1'], None), (['--lr-grid-factors', '0'], None),
                           (['--holdout-fraction', '1'], None), (['--no-tune', '--holdout-fraction', '-1'], None),
                           ([], tmp_path / 'data')):
        with pytest.raises(SystemExit):
            check(*argv, data_dir=data_dir)
