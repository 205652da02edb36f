"""check_device: a --device this machine lacks, or an unknown form, is refused before any slow work, in every tool
that takes one (export, convert, latency), with a one-line message naming the value and the allowed forms."""
import pytest
import torch

from timm_alphanet.processes import check_device
from timm_alphanet.testing.original_ckpt import SMALL_SUPERNET_CONFIG, original_manifest, write_original_checkpoint


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)


def test_check_device_accepts_what_this_machine_has(monkeypatch):
    assert check_device('cpu') == torch.device('cpu')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert check_device('cuda') == torch.device('cuda') and check_device('cuda:1') == torch.device('cuda', 1)
    with pytest.raises(ValueError, match=r"^device 'cuda:2': this machine has no such device \(it has cpu, cuda x2"):
        check_device('cuda:2')


@pytest.mark.parametrize('device, match', [
    ('gpu', r"^device 'gpu' is not one of the allowed forms: 'cpu', 'cuda' or 'cuda:N'"),
    ('cuda', r"^device 'cuda': this machine has no such device \(it has cpu\); allowed forms: 'cpu', 'cuda'"),
    ('cuda:0', r"^device 'cuda:0': this machine has no such device"),
    ('x' * 10_000, r"^device 'x{40}' is not one of the allowed forms"),
])
def test_check_device_refuses_unknown_forms_and_absent_devices(no_gpu, device, match):
    with pytest.raises(ValueError, match=match):
        check_device(device)
    with pytest.raises(ValueError, match="allowed forms: 'cpu', 'cuda' or 'cuda:N'$"):
        check_device('mps', allowed=('cpu', 'cuda'))
    with pytest.raises(TypeError, match='got int'):
        check_device(0)


def _exit_2(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    return err


@pytest.mark.parametrize('device', ['gpu', 'cuda'])
def test_the_tools_refuse_a_bad_device_before_reading_anything(tmp_path, capsys, no_gpu, device):
    from timm_alphanet.cli.convert import main as convert_main
    from timm_alphanet.cli.export import main as export_main
    from timm_alphanet.cli.latency import main as latency_main
    # the supernet / checkpoint do not exist: the device is named first, so it was checked before them
    missing = str(tmp_path / 'missing')
    for main, argv in ((export_main, [missing, '--arch', 'min', '--output', str(tmp_path / 'out'), '--no-calib']),
                       (convert_main, [missing + '.pth.tar', '--out', str(tmp_path / 'out')]),
                       (latency_main, ['build', '--space', missing, '--output', str(tmp_path / 'lut.json')])):
        err = _exit_2(main, argv[:1] + ['--device', device] + argv[1:], capsys)
        assert f"error: device '{device}'" in err, (main.__module__, err)
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'lut.json').exists()


def test_convert_checkpoint_checks_the_device_before_writing(tmp_path, no_gpu):
    from timm_alphanet.original.convert import convert_checkpoint
    path = tmp_path / 'small.pth.tar'
    write_original_checkpoint(path, seed=0, supernet_config=SMALL_SUPERNET_CONFIG,
                              manifest=original_manifest(SMALL_SUPERNET_CONFIG, n_classes=10))
    with pytest.raises(ValueError, match="device 'cuda': this machine has no such device"):
        convert_checkpoint(path, tmp_path / 'out', device='cuda', progress=False)
    assert not (tmp_path / 'out').exists()


def test_export_subnets_checks_the_device_before_writing(tmp_path, no_gpu):
    import timm

    from timm_alphanet.export.subnets import export_subnets, resolve_requests
    from timm_alphanet.testing.tiny import TINY_SPACE
    supernet = timm.create_model('alphanet_supernet', space=TINY_SPACE, num_classes=4).eval()
    requests = resolve_requests(supernet.space, ['min'], None, 'all')
    with pytest.raises(ValueError, match="device 'gpu' is not one of the allowed forms"):
        export_subnets(supernet, requests, tmp_path / 'out', device='gpu', progress=False)
    assert not (tmp_path / 'out').exists()
