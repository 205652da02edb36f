"""alphanet-validate --kd-report: a tiny random student against a tiny random teacher (both local-dir:, offline) on
the digits' validation split gives the figures of `kd_mechanism` on logits computed here image by image."""
import json

import pytest
import timm
import torch

from timm_alphanet import save_pretrained
from timm_alphanet.cli.validate import main as validate_main
from timm_alphanet.data import DIGITS, open_image_dataset
from timm_alphanet.evaluation import eval_pipeline, kd_mechanism, summarize_kd_mechanism


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('kdreport')
    torch.manual_seed(0)  # two different random nets
    save_pretrained(timm.create_model('test_efficientnet', num_classes=10), tmp / 'student')
    save_pretrained(timm.create_model('test_efficientnet', num_classes=10), tmp / 'teacher')
    return tmp


def test_kd_report_equals_the_figures_of_logits_computed_here(folders, monkeypatch, capsys):
    monkeypatch.setenv('TIMM_ALPHANET_CACHE', str(folders / 'cache'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    out = folders / 'report.json'
    assert validate_main(['--model', str(folders / 'student'), '--data-dir', DIGITS, '--split', 'validation',
                          '--workers', '0', '--no-progress', '-b', '100', '--kd-report',
                          f'local-dir:{folders / "teacher"}', '--kd-report-json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'D_-1(p||q)' in printed and 'where the teacher is unsure' in printed
    report = json.loads(out.read_text())

    # independently: each model on each image of the split, with the student's eval transform
    student = timm.create_model(f'local-dir:{folders / "student"}', pretrained=True).eval()
    teacher = timm.create_model(f'local-dir:{folders / "teacher"}', pretrained=True).eval()
    dataset = open_image_dataset(DIGITS, None, 'validation')
    dataset.transform, resolution = eval_pipeline(student, 'timm')
    assert resolution is None
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    x, y = torch.stack(xs), torch.tensor(ys)
    with torch.no_grad():
        zs, zt = student(x), teacher(x)  # same mean/std: the teacher's re-normalisation is the identity
    expected = summarize_kd_mechanism(kd_mechanism(zs, zt))
    assert report['num_images'] == len(dataset) == expected['num_images']
    for key in ('kl', 'd_minus1', 'entropy_gap', 'top_gap', 'secondary_gap', 'agree', 'unsure', 'has_secondary'):
        assert report[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    assert report['student_top1'] == pytest.approx(100 * (zs.argmax(1) == y).double().mean().item(), abs=1e-9)
    assert report['teacher_top1'] == pytest.approx(100 * (zt.argmax(1) == y).double().mean().item(), abs=1e-9)
    assert report['kl'] > 0 and report['teacher'] == f'local-dir:{folders / "teacher"}'


def test_a_teacher_with_other_classes_is_refused(folders, monkeypatch, capsys):
    monkeypatch.setenv('TIMM_ALPHANET_CACHE', str(folders / 'cache'))
    save_pretrained(timm.create_model('test_efficientnet', num_classes=3), folders / 'teacher3')
    with pytest.raises(SystemExit) as e:
        validate_main(['--model', str(folders / 'student'), '--data-dir', DIGITS, '--workers', '0', '--no-progress',
                       '--kd-report', str(folders / 'teacher3')])
    assert e.value.code == 2 and '3 classes' in capsys.readouterr().err
