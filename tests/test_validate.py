"""alphanet-validate: reproduces train.py's own evaluation of the same model on the built-in digits (one and two
processes), the paper's pipeline equals a hand-computed transform, and --write-to records into the model folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from huggingface_hub import ModelCard
from PIL import Image

from timm_alphanet import extract_subnet, save_pretrained
from timm_alphanet.cli.validate import main as validate_main
from timm_alphanet.evaluation import eval_pipeline, validate_model
from timm_alphanet.testing.tiny import tiny_supernet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A KD student trained one epoch by train.py on the digits, and the env its data cache lives in."""
    tmp = tmp_path_factory.mktemp('run')
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore',
               TIMM_ALPHANET_CACHE=str(tmp / 'cache'))
    env.pop('WORLD_SIZE', None)
    save_pretrained(timm.create_model('test_efficientnet', num_classes=10), tmp / 'teacher')
    # 160 px is test_efficientnet's pretrained_cfg size; the small validation split trains one short epoch
    p = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--model', 'test_efficientnet', '--teacher',
                        f'local-dir:{tmp / "teacher"}', '--no-aug', '--workers', '0', '--no-progress', '--epochs', '1',
                        '-b', '120', '--train-split', 'validation', '--lr', '0.05', '--output', str(tmp),
                        '--experiment', 'kd'], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp / 'kd' / 'summary.json').read_text())[-1]
    return tmp / 'kd' / 'final', summary, env


def test_validate_reproduces_train_py_evaluation_and_records_it(trained, monkeypatch, capsys):
    final, summary, env = trained
    monkeypatch.setenv('TIMM_ALPHANET_CACHE', env['TIMM_ALPHANET_CACHE'])
    assert validate_main(['--model', f'local-dir:{final}', '--data-dir', 'sklearn/digits', '--split', 'validation',
                          '--workers', '0', '--no-progress', '--write-to', str(final)]) == 0
    meta = json.loads((final / 'config.json').read_text())['timm_alphanet']
    (result,) = meta['results']
    num_images = len(list(Path(env['TIMM_ALPHANET_CACHE']).rglob('validation/*/*.png')))
    assert result['num_images'] == num_images and result['pipeline'] == 'timm' and result['split'] == 'validation'
    assert result['top1'] == pytest.approx(summary['student_top1'], abs=1e-4)  # one image is 0.28
    assert result['top5'] == pytest.approx(summary['student_top5'], abs=1e-4)
    assert result['loss'] == pytest.approx(summary['student_loss'], rel=1e-5)
    card = ModelCard.load(final / 'README.md')
    assert {(r.metric_name, r.metric_value) for r in card.data.eval_results} == {
        ('Top-1 accuracy', round(result['top1'], 3)), ('Top-5 accuracy', round(result['top5'], 3))}
    assert card.data.license == 'apache-2.0'  # test_efficientnet's own license, not AlphaNet's


def test_two_processes_give_the_same_numbers(trained):
    final, summary, env = trained
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '-m',
                        'timm_alphanet.cli.validate', '--model', str(final), '--data-dir', 'sklearn/digits',
                        '--workers', '0', '--no-progress', '-b', '50'], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [l for l in p.stdout.splitlines() if 'top1' in l]
    num_images = len(list(Path(env['TIMM_ALPHANET_CACHE']).rglob('validation/*/*.png')))
    assert len(lines) == 1 and '2 process(es)' in lines[0] and f'({num_images} images' in lines[0]
    assert f"top1 {summary['student_top1']:.3f} top5 {summary['student_top5']:.3f}" in lines[0]


def _hand_paper(img: Image.Image, mean, std, resolution: int) -> torch.Tensor:
    """Resize the shorter side to 256 (PIL bicubic), crop the centre 224, scale, normalise, resize bicubically."""
    w, h = img.size
    nw, nh = (256, int(256 * h / w)) if w < h else (int(256 * w / h), 256)
    big = np.asarray(img.resize((nw, nh), Image.BICUBIC), dtype=np.float64) / 255.0
    top, left = int(round((nh - 224) / 2)), int(round((nw - 224) / 2))
    crop = (big[top:top + 224, left:left + 224] - np.array(mean)) / np.array(std)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=(resolution, resolution), mode='bicubic', align_corners=False, antialias=False)


def test_paper_pipeline_equals_the_hand_computed_transform():
    model = timm.create_model('alphanet_a0')
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))  # 300 wide, 200 high
    transform, resolution = eval_pipeline(model, 'paper')
    assert resolution == 192
    from timm_alphanet.calibration import resize_to
    ours = resize_to(transform(img)[None], resolution)
    expected = _hand_paper(img, model.pretrained_cfg['mean'], model.pretrained_cfg['std'], 192)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    timm_tf, none = eval_pipeline(model, 'timm')
    assert none is None and timm_tf(img).shape == (3, 192, 192)  # timm's pipeline crops at the model's size
    with pytest.raises(ValueError, match="allowed: \\['timm', 'paper'\\]"):
        eval_pipeline(model, 'tf')


def test_validate_model_with_the_paper_pipeline_scores_hand_computed_logits(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ('a', 'b'):
        (tmp_path / 'data' / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(
                tmp_path / 'data' / cls / f'{i}.png')
    supernet = tiny_supernet(num_classes=2, seed=3)
    model = extract_subnet(supernet, supernet.space.max_config()).eval()
    from timm.data import create_dataset
    dataset = create_dataset('', root=str(tmp_path / 'data'))
    result = validate_model(Accelerator(cpu=True), model, dataset, 'paper', batch_size=4)
    cfg = model.pretrained_cfg
    files = [(f, t) for f, t in dataset.reader.samples]
    with torch.no_grad():
        logits = torch.cat([model(_hand_paper(Image.open(f).convert('RGB'), cfg['mean'], cfg['std'], 24))
                            for f, _ in files])
    targets = torch.tensor([t for _, t in files])
    assert result['top1'] == pytest.approx(100.0 * (logits.argmax(-1) == targets).float().mean().item())
    assert result['loss'] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-4)
    assert result['num_images'] == 6


def test_bad_input_is_one_line(tmp_path, capsys):
    save_pretrained(timm.create_model('alphanet_a0', num_classes=3), tmp_path / 'a0')
    cases = [
        (['--model', 'no_such_model', '--data-dir', str(tmp_path)], 'unknown model'),
        (['--model', 'alphanet_a0', '--data-dir', str(tmp_path / 'nope')],
         f'--data-dir {tmp_path / "nope"}: not found'),
        (['--model', 'alphanet_a0', '--data-dir', str(tmp_path)], "no images for split 'validation' in"),
        (['--model', 'alphanet_a0', '--data-dir', str(tmp_path), '--write-to', str(tmp_path / 'x')],
         'not a model folder'),
    ]
    for argv, match in cases:
        with pytest.raises(SystemExit) as e:
            validate_main([*argv, '--workers', '0', '--no-progress'])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and match in err and len(err.splitlines()) == 1, err
