"""timm_alphanet.evaluation's KD mechanism figures against float64 arithmetic done here by independent formulas
(hand-worked 3-class examples, numpy and scipy), and the paired intervals against scipy's paired t-test."""
import math

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from scipy import special, stats
from torch.utils.data import DataLoader, TensorDataset

from timm_alphanet.evaluation import (KD_MECHANISM_KEYS, collect_logits, compare_kd_mechanism, format_kd_report,
                                      kd_mechanism, kd_report, paired_interval, summarize_kd_mechanism)

# teacher p and student q per image (rows); logits are their logs, so softmax gives them back exactly
P = [[0.7, 0.2, 0.1], [0.9, 0.09, 0.01], [0.97, 0.02, 0.01], [0.45, 0.35, 0.2]]
Q = [[0.5, 0.3, 0.2], [0.3, 0.3, 0.4], [0.98, 0.01, 0.01], [0.3, 0.5, 0.2]]


def _logits(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


@pytest.fixture(scope='module')
def m():
    return kd_mechanism(_logits(Q), _logits(P))


def test_hand_worked_three_class_examples(m):
    # image 0: KL = 0.7 ln(0.7/0.5) + 0.2 ln(0.2/0.3) + 0.1 ln(0.1/0.2); D_-1 = (sum q^2/p - 1) / 2 (no clip reached)
    kl0 = 0.7 * math.log(1.4) + 0.2 * math.log(2 / 3) + 0.1 * math.log(0.5)
    d0 = (0.25 / 0.7 + 0.09 / 0.2 + 0.04 / 0.1 - 1) / 2  # = 0.1035714...
    assert m['kl'][0].item() == pytest.approx(kl0, rel=1e-12)
    assert m['d_minus1'][0].item() == pytest.approx(d0, rel=1e-12)
    assert m['d_minus1'][0].item() == pytest.approx(0.10357142857142857, rel=1e-12)
    h_q = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    h_p = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert m['entropy_gap'][0].item() == pytest.approx(h_q - h_p, rel=1e-12)
    assert m['top_gap'][0].item() == pytest.approx(-0.2, abs=1e-14)
    assert m['secondary_gap'][0].item() == pytest.approx((0.3 - 0.2) + (0.2 - 0.1), abs=1e-14)  # both are >= 0.05
    assert m['agree'][0].item() == 1.0 and not m['unsure'][0]

    # image 1: q/p on the last class is 40, so the loss's clip (w^-1 <= 5) binds there
    d1 = (0.3 * (0.3 / 0.9 - 1) + 0.3 * (0.3 / 0.09 - 1) + 0.4 * (5 - 1)) / 2
    assert m['d_minus1'][1].item() == pytest.approx(d1, rel=1e-12)
    assert m['secondary_gap'][1].item() == pytest.approx(0.3 - 0.09, abs=1e-14)  # p = 0.01 is not secondary
    assert m['agree'][1].item() == 0.0  # the student's top class is the third

    # image 2: no secondary class (0.02, 0.01 < 0.05); image 3: the teacher is unsure (0.45 < 0.5) and disagreed with
    assert math.isnan(m['secondary_gap'][2].item()) and not m['has_secondary'][2]
    assert m['unsure'].tolist() == [False, False, False, True] and m['agree'][3].item() == 0.0
    assert m['teacher_top_p'].tolist() == pytest.approx([0.7, 0.9, 0.97, 0.45], abs=1e-14)
    assert all(v.dtype == torch.float64 for k, v in m.items() if k not in ('unsure', 'has_secondary'))


def test_random_batch_against_numpy_and_scipy():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(64, 7, generator=g, dtype=torch.float64) * 3, torch.randn(64, 7, generator=g,
                                                                                   dtype=torch.float64) * 3
    m = kd_mechanism(zs, zt, clip=5.0)
    q, p = special.softmax(zs.numpy(), axis=1), special.softmax(zt.numpy(), axis=1)
    np.testing.assert_allclose(m['kl'].numpy(), special.rel_entr(p, q).sum(1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(m['d_minus1'].numpy(), (q * (np.minimum(q / p, 5.0) - 1)).sum(1) / 2, rtol=1e-10,
                               atol=1e-14)
    np.testing.assert_allclose(m['entropy_gap'].numpy(), stats.entropy(q, axis=1) - stats.entropy(p, axis=1),
                               rtol=1e-10, atol=1e-13)
    top = p.argmax(1)
    np.testing.assert_allclose(m['top_gap'].numpy(), q[np.arange(64), top] - p[np.arange(64), top], atol=1e-14)
    sec = (p >= 0.05)
    sec[np.arange(64), top] = False
    expected = np.where(sec.any(1), np.where(sec, q - p, 0).sum(1), np.nan)
    np.testing.assert_allclose(m['secondary_gap'].numpy(), expected, atol=1e-14)
    np.testing.assert_array_equal(m['agree'].numpy(), (q.argmax(1) == top).astype(float))
    # unclipped, D_-1 is half the chi-square divergence of q from p
    free = kd_mechanism(zs, zt, clip=math.inf)['d_minus1'].numpy()
    np.testing.assert_allclose(free, ((q - p) ** 2 / p).sum(1) / 2, rtol=1e-9)


def test_a_masked_teacher_class_counts_as_zero_probability():
    zt = torch.tensor([[2.0, 0.0, -math.inf]], dtype=torch.float64)
    zs = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    m = kd_mechanism(zs, zt)
    p = np.array([math.e ** 2, 1.0, 0.0]) / (math.e ** 2 + 1)
    q = np.array([math.e, 1.0, 1.0]) / (math.e + 2)
    assert m['kl'].item() == pytest.approx(float(special.rel_entr(p, q).sum()), rel=1e-12)
    # q / p is infinite on the masked class: the clip (5) bounds it
    assert m['d_minus1'].item() == pytest.approx(
        (q[0] * (q[0] / p[0] - 1) + q[1] * (q[1] / p[1] - 1) + q[2] * 4) / 2, rel=1e-12)
    assert m['entropy_gap'].item() == pytest.approx(float(stats.entropy(q) - stats.entropy(p)), rel=1e-12)


def test_identical_distributions_give_zero_everywhere():
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = kd_mechanism(z, z.clone())
    for key in ('kl', 'd_minus1', 'entropy_gap', 'top_gap'):
        assert torch.allclose(m[key], torch.zeros(5, dtype=torch.float64), atol=1e-15), key
    assert m['agree'].tolist() == [1.0] * 5


def test_summary_means(m):
    s = summarize_kd_mechanism(m)
    assert s['kl'] == pytest.approx(m['kl'].mean().item()) and s['num_images'] == 4
    assert s['secondary_gap'] == pytest.approx(np.nanmean(m['secondary_gap'].numpy()))  # over the 3 images with one
    assert s['agree'] == 0.5 and s['agree_unsure'] == 0.0 and s['unsure'] == 0.25 and s['has_secondary'] == 0.75
    assert s['student_less_sure'] == pytest.approx(float((m['entropy_gap'] > 0).double().mean()))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match='one shape'):
        kd_mechanism(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match='secondary_min'):
        kd_mechanism(torch.zeros(2, 3), torch.zeros(2, 3), secondary_min=0.0)


def test_paired_t_interval_matches_scipy():
    a = torch.tensor([0.3, 0.1, 0.5, 0.2, 0.9, 0.4], dtype=torch.float64)
    b = torch.tensor([0.2, 0.3, 0.1, 0.2, 0.5, 0.1], dtype=torch.float64)
    r = paired_interval(a, b)
    ci = stats.ttest_rel(a.numpy(), b.numpy()).confidence_interval(0.95)
    d = (a - b).numpy()
    assert r['mean'] == pytest.approx(d.mean()) and r['std'] == pytest.approx(d.std(ddof=1)) and r['n'] == 6
    assert (r['low'], r['high']) == pytest.approx((ci.low, ci.high), rel=1e-10)
    # by hand: 2.5706 is the 97.5 % t quantile at 5 degrees of freedom (tables)
    assert r['high'] - r['mean'] == pytest.approx(2.570582 * d.std(ddof=1) / math.sqrt(6), rel=1e-5)


def test_paired_interval_drops_nan_pairs_and_handles_tiny_samples():
    a = torch.tensor([1.0, float('nan'), 3.0])
    b = torch.tensor([0.0, 1.0, 1.0])
    assert paired_interval(a, b)['n'] == 2 and paired_interval(a, b)['mean'] == pytest.approx(1.5)
    one = paired_interval(torch.tensor([2.0]), torch.tensor([1.0]))
    assert one['mean'] == 1.0 and math.isnan(one['low']) and math.isnan(one['std'])


def test_bootstrap_interval_needs_and_follows_its_generator():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, generator=g, dtype=torch.float64) + 0.3, torch.randn(200, generator=g,
                                                                                  dtype=torch.float64)
    with pytest.raises(ValueError, match='Generator'):
        paired_interval(a, b, method='bootstrap')
    r1 = paired_interval(a, b, method='bootstrap', generator=torch.Generator().manual_seed(5))
    r2 = paired_interval(a, b, method='bootstrap', generator=torch.Generator().manual_seed(5))
    r3 = paired_interval(a, b, method='bootstrap', generator=torch.Generator().manual_seed(6))
    assert r1 == r2 and r1 != r3
    t = paired_interval(a, b)
    assert r1['low'] < r1['mean'] < r1['high']
    assert (r1['low'], r1['high']) == pytest.approx((t['low'], t['high']), abs=0.05)  # n = 200: close to t
    flat = paired_interval(torch.ones(10), torch.zeros(10), method='bootstrap', generator=torch.Generator())
    assert (flat['low'], flat['high']) == (1.0, 1.0)


def test_compare_pairs_two_students_on_the_teacher_unsure_images():
    teacher = _logits(P)
    a, b = kd_mechanism(_logits(Q), teacher), kd_mechanism(teacher.clone(), teacher)
    c = compare_kd_mechanism(a, b)
    assert set(c) == {*KD_MECHANISM_KEYS, 'agree_unsure'}
    assert c['kl']['mean'] == pytest.approx((a['kl'] - b['kl']).mean().item())
    # only image 3 has an unsure teacher: student A disagrees there, B (the teacher itself) agrees
    assert c['agree_unsure']['n'] == 1 and c['agree_unsure']['mean'] == -1.0
    assert c['secondary_gap']['n'] == 3
    with pytest.raises(ValueError, match='same teacher'):
        compare_kd_mechanism(a, kd_mechanism(_logits(Q), _logits(Q)))


def test_collect_logits_and_report_on_a_loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    student, teacher = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    s, t, targets = collect_logits(Accelerator(cpu=True), student, teacher,
                                   DataLoader(TensorDataset(x, y), batch_size=4))
    with torch.no_grad():
        torch.testing.assert_close(s, student(x))
        torch.testing.assert_close(t, teacher(x))
    assert torch.equal(targets, y)
    r = kd_report(s, t, targets)
    assert r['student_top1'] == pytest.approx(100 * (student(x).argmax(1) == y).double().mean().item())
    assert r['kl'] == pytest.approx(kd_mechanism(s, t)['kl'].mean().item())
    text = format_kd_report(r)
    assert 'KL(p||q)' in text and 'D_-1(p||q)' in text and '10 images' in text
