"""benchmarks/reproduce/kd_mechanism.py: methods differ only in the loss (same subsample, order and zero start per
seed), the splits are disjoint, and a tiny run's table, paired differences and hypotheses agree with its JSON
(the CI smoke test; seconds)."""
import importlib.util
import json
import statistics
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--seeds', '3', '--tuning-seeds', '1', '--lr-grid', '0.03', '0.1', '--epochs', '2', '--teacher-epochs', '2',
        '--threads', '1']


@pytest.fixture(scope='module')
def kdm():
    spec = importlib.util.spec_from_file_location('kd_mechanism', ROOT / 'benchmarks' / 'reproduce' / 'kd_mechanism.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_splits_are_disjoint_and_the_teacher_never_sees_the_students_images(kdm):
    x, y, splits = kdm.load_data()
    seen = set()
    for rows in splits:
        assert not seen & set(rows)
        seen |= set(rows)
    assert [len(r) for r in splits] == [629, 629, 179, 358] and len(seen) <= len(y)


def test_kd_at_share_zero_is_the_no_kd_run_so_only_the_loss_differs(kdm):
    x, y, (_, train_rows, _, _) = kdm.load_data()
    feats = kdm.backbone_features(x, train_rows, 8)
    teacher = torch.randn(len(y), 10, generator=torch.Generator().manual_seed(0))
    common = dict(feats=feats, y=y, teacher_logits=teacher, rows=train_rows, epochs=2, batch_size=64)
    none = kdm.train_head('none', 0.05, 3, kd_share=0.9, **common)
    for method in ('kl', 'alpha-1', 'adaptive'):
        zero = kdm.train_head(method, 0.05, 3, kd_share=0.0, **common)
        assert torch.equal(zero.weight, none.weight) and torch.equal(zero.bias, none.bias), method
        kd = kdm.train_head(method, 0.05, 3, kd_share=0.9, **common)
        assert not torch.equal(kd.weight, none.weight), method


def test_tiny_run_report_agrees_with_its_json(kdm, tmp_path, capsys):
    assert kdm.main(['--out', str(tmp_path), *TINY]) == 0
    data = json.loads((tmp_path / 'kd_mechanism.json').read_text())
    md = (tmp_path / 'kd_mechanism.md').read_text()
    assert data['meta']['initial_logit_scale'] == 0.0
    assert data['teacher']['students_inputs']['kl_to_smoothed'] > 0
    assert set(data['lr']) == set(kdm.METHODS) and all(v in (0.03, 0.1) for v in data['lr'].values())
    for method in kdm.METHODS:
        top1 = data['per_seed_top1'][method]
        assert len(top1) == 3 and top1 == [r['top1'] for r in data['per_seed'][method]]
        assert data['summary']['methods'][method]['top1']['mean'] == pytest.approx(statistics.fmean(top1))
        assert f"| {kdm.NAMES[method]} | {statistics.fmean(top1):.2f} ± {statistics.stdev(top1):.2f} |" in md
    d = data['summary']['paired']['adaptive - kl']['worst']
    diffs = [a['worst'] - b['worst'] for a, b in zip(data['per_seed']['adaptive'], data['per_seed']['kl'])]
    assert d['mean'] == pytest.approx(statistics.fmean(diffs)) and d['n'] == 3
    assert '- H1 (KL-KD > no KD' in md and '- H2 (alpha-KD not worse than KL-KD by > 1' in md
    assert 'Minimum detectable effect at 80 % power' in md and 'Protocol (fixed before the runs)' in md
    assert str(tmp_path) not in md  # no machine paths in the report
