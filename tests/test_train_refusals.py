"""Refused before anything is written, in one line (issue "Harden", rough edges; issue "The first ten minutes",
pretrained weights): bad values, missing or empty data, unknown models, a teacher whose weights cannot be fetched
or whose classes differ from the data's, fp16 without a GPU; and the AlphaNet weights error says what it tried and
how to get working weights, without waiting on the network when offline."""
import pytest
import timm
import torch

from timm_alphanet.cli.train import main
from timm_alphanet.cli.validate import main as validate_main
from timm_alphanet.models.alphanet import PretrainedWeightsError

from test_train_build import digits  # noqa: F401  (fixture)


@pytest.fixture(scope='module')
def small_teacher(tmp_path_factory):
    from timm_alphanet import save_pretrained
    folder = tmp_path_factory.mktemp('teacher') / 'five'
    save_pretrained(timm.create_model('resnet10t', num_classes=5), folder)  # a 5-class head; the digits have 10
    return f'local-dir:{folder}'


def _refused(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('alphanet-train: error: '), err
    return err


KD = ['--model', 'mobilenetv2_050', '--input-size', '3', '16', '16']


@pytest.mark.parametrize('args, message', [
    (['--lr', '0'], 'lr: must be a finite number in (0, inf), got 0.0'),
    (['--epochs', '0'], 'epochs: must be >= 1, got 0'),
    (['-b', '0'], 'batch_size: must be >= 1, got 0'),
    (['--dataset', '', '--data-dir', '{tmp}/nowhere'], 'data_dir {tmp}/nowhere: not found'),
    (['--dataset', '', '--data-dir', '{tmp}/empty'], "no images for split 'train' in {tmp}/empty"),
    (['--model', 'alphanet_supernett'], "unknown timm model 'alphanet_supernett'"),
    ([*KD, '--teacher', 'resnet10tt'], "teacher: unknown timm model 'resnet10tt'"),
    ([*KD, '--teacher', 'resnet10t'], "teacher 'resnet10t': its pretrained weights could not be loaded"),
    ([*KD, '--teacher', '{teacher}'], 'has 5 classes, the student (and the data) 10'),
    (['--pretrained'], 'pretrained: No pretrained weights exist for alphanet_supernet'),
    (['--experiment', 'latest'], "experiment: 'latest' is not allowed"),
    (['--model-ema'], "model_ema: model 'alphanet_supernet' is a supernet"),
])
def test_bad_runs_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, digits, small_teacher,  # noqa
                                                                     args, message):
    (tmp_path / 'empty' / 'train' / 'a').mkdir(parents=True)  # class folders without images
    (tmp_path / 'empty' / 'validation' / 'a').mkdir(parents=True)
    fill = dict(tmp=tmp_path, teacher=small_teacher)
    args = [a.format(**fill) for a in args]
    data = [] if '--data-dir' in args else ['--data-dir', digits]
    batch = [] if '-b' in args else ['-b', '64']
    err = _refused(capsys, [*args, *data, *batch, '--output', str(tmp_path / 'out'), '--no-progress', '-j', '0'])
    assert message.format(**fill) in err
    assert not (tmp_path / 'out').exists()
    if 'resnet10t' in args:  # the teacher's way out: a local copy
        assert 'local-dir:' in err and '--teacher-pretrained-path' in err and 'HF_HUB_OFFLINE is set' in err


@pytest.mark.skipif(torch.cuda.is_available(), reason='fp16 works on a GPU')
def test_fp16_without_a_gpu_is_refused_instead_of_training_in_float32(tmp_path, capsys):
    err = _refused(capsys, ['--mixed-precision', 'fp16', '--output', str(tmp_path / 'out')])
    assert 'fp16 needs a GPU' in err and 'silently train in float32' in err and '--mixed-precision bf16' in err
    assert not (tmp_path / 'out').exists()


def test_missing_alphanet_weights_say_they_are_not_published_and_how_to_get_them(capsys, digits):  # noqa: F811
    with pytest.raises(PretrainedWeightsError) as e:
        timm.create_model('alphanet_a0', pretrained=True)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "Hugging Face Hub repository 'timm-alphanet/alphanet_a0.in1k'" in msg and 'Not yet published' in msg
    assert 'HF_HUB_OFFLINE is set, so only the local cache was searched' in msg  # no network, no retries
    assert 'alphanet-convert' in msg and "'local-dir:converted/alphanet_a0'" in msg
    assert 'github.com/facebookresearch/AlphaNet' in msg  # where the original checkpoint comes from
    assert len(msg) < 500, len(msg)  # one readable line (it was ~900 characters)
    assert 'check your connection' not in msg.lower()
    with pytest.raises(SystemExit) as exit_:
        validate_main(['--model', 'alphanet_a0', '--data-dir', digits, '-j', '0', '--no-progress'])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and 'Not yet published' in err


def test_search_and_train_share_the_launcher_check(monkeypatch):
    from timm_alphanet.search.runner import process_state
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match=r'started 2 processes \(WORLD_SIZE\) but the Accelerator has 1: each '
                                         'process would search alone'):
        process_state()
