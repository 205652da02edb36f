"""alphanet-classify: an image or a synthetic batch through an AlphaNet model; careless input (another
model, a missing or non-image file, a zero batch) is one line on stderr and exit code 2, before any model is built."""
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import save_for_hf

from timm_alphanet.cli.classify import classify, main


def _exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and 'Traceback' not in err
    return out, err.strip()


def test_careless_input_is_one_line_and_exit_2(tmp_path, capsys):
    out, err = _exit_2(['-m', 'resnet18'], capsys)
    assert "model 'resnet18' is not an AlphaNet model; allowed: alphanet_a0," in err and out == ''
    out, err = _exit_2(['-m', 'alphanet_a0', '--image', str(tmp_path / 'missing.jpg')], capsys)
    assert err.endswith(f"error: image file not found: {tmp_path / 'missing.jpg'}") and out == ''
    (tmp_path / 'cat.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg' * 10)
    _, err = _exit_2(['--image', str(tmp_path / 'cat.jpg')], capsys)
    assert f'{tmp_path / "cat.jpg"}: not an image PIL can read' in err
    _, err = _exit_2(['--image', str(tmp_path)], capsys)
    assert 'is a directory, not an image file' in err
    with pytest.raises(SystemExit) as e:  # argparse's own refusal: the usage, then the error line
        main(['-b', '0'])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err.endswith('argument -b/--batch-size: expected a positive integer, got 0')


def test_a_local_dir_of_another_model_is_refused_by_name(tmp_path):
    save_for_hf(timm.create_model('test_resnet', num_classes=3), tmp_path / 'resnet', safe_serialization=True)
    with pytest.raises(ValueError, match=r'resnet: a ResNet, not an AlphaNet model'):
        classify(f"local-dir:{tmp_path / 'resnet'}")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got '0'"):
        classify('alphanet_a0', batch_size=0)


def test_an_image_is_classified_with_the_models_eval_transform(tmp_path):
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(40, 56, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / 'x.png')
    torch.manual_seed(0)
    result = classify('alphanet_a0', image=str(tmp_path / 'x.png'), topk=3)
    torch.manual_seed(0)  # the same random weights, run here by hand with timm's own pipeline
    model = timm.create_model('alphanet_a0').eval()
    x = create_transform(**resolve_data_config(model=model))(Image.open(tmp_path / 'x.png').convert('RGB'))
    with torch.no_grad():
        top = model(x[None]).softmax(-1).topk(3)
    assert result['input_size'] == (1, *x.shape)
    assert result['top_classes'] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor(result['top_probs']), top.values)


def test_a_tagged_name_is_an_alphanet_name():
    from timm_alphanet.cli.classify import _check_model_name
    _check_model_name('alphanet_a0.in1k')  # timm.create_model takes it, so must we
    with pytest.raises(ValueError, match='not an AlphaNet model'):
        _check_model_name('resnet18.a1_in1k')
