"""load_supernet: run folders, model folders, original checkpoints; clear errors for anything else."""
import hashlib

import pytest
import timm
import torch

from timm_alphanet import save_pretrained
from timm_alphanet.sources import load_supernet
from timm_alphanet.utils import sha256_file
from timm_alphanet.testing.original_ckpt import SMALL_SUPERNET_CONFIG, original_manifest, write_original_checkpoint
from timm_alphanet.testing import randomize_bn_stats

TINY = {'resolutions': [16], 'first_conv': {'c': [8], 's': 2}, 'mb1': {'c': [8], 'd': [1, 2], 'k': [3], 't': [1]},
        'mb2': {'c': [8, 16], 'd': [1], 'k': [3], 't': [2], 's': 2}, 'last_conv': {'c': [32]}}


def _supernet():
    model = timm.create_model('alphanet_supernet', space=TINY, num_classes=5)
    randomize_bn_stats(model, torch.Generator().manual_seed(0))
    return model.eval()


def test_model_folder_run_folder_and_local_dir_load_the_same_weights(tmp_path):
    model = _supernet()
    save_pretrained(model, tmp_path / 'run' / 'final' / 'supernet')
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = model(x)
    for spec, kind in [(tmp_path / 'run', 'run'), (tmp_path / 'run' / 'final' / 'supernet', 'local-dir'),
                       (f"local-dir:{tmp_path / 'run' / 'final' / 'supernet'}", 'local-dir')]:
        loaded, source = load_supernet(str(spec))
        assert source.kind == kind and not loaded.training
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        data = (tmp_path / 'run' / 'final' / 'supernet' / 'model.safetensors').read_bytes()
        assert source.sha256 == hashlib.sha256(data).hexdigest()


def test_original_checkpoint_loads_with_its_sha256(tmp_path):
    path = tmp_path / 'small.pth.tar'
    write_original_checkpoint(path, seed=3, supernet_config=SMALL_SUPERNET_CONFIG,
                              manifest=original_manifest(SMALL_SUPERNET_CONFIG, n_classes=10))
    model, source = load_supernet(str(path))
    assert source.kind == 'original' and source.sha256 == sha256_file(path)
    assert model.num_classes == 10


def test_refusals_name_the_input_and_what_is_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match='supernet not found: .*nothing.*training run folder'):
        load_supernet(str(tmp_path / 'nothing'))
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(ValueError, match=r'notes.txt: not a supernet source; expected'):
        load_supernet(str(tmp_path / 'notes.txt'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no supernet in this folder'):
        load_supernet(str(tmp_path / 'empty'))
    save_pretrained(timm.create_model('alphanet_custom', num_classes=3), tmp_path / 'static')
    with pytest.raises(ValueError, match='AlphaNet is not a supernet'):
        load_supernet(str(tmp_path / 'static'))


def test_a_corrupt_model_folder_is_named_before_timm_reads_it(tmp_path):
    save_pretrained(_supernet(), tmp_path / 'run' / 'final' / 'supernet')
    weights = tmp_path / 'run' / 'final' / 'supernet' / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r'model\.safetensors: .*truncated|model\.safetensors: '):
        load_supernet(str(tmp_path / 'run'))


def test_a_corrupt_local_dir_teacher_is_named(tmp_path):
    from timm_alphanet.task._teacher import create_teacher
    save_pretrained(timm.create_model('alphanet_custom', num_classes=3), tmp_path / 'teacher')
    (tmp_path / 'teacher' / 'config.json').write_text('{not json')
    with pytest.raises(ValueError, match=r'config\.json'):
        create_teacher(f"local-dir:{tmp_path / 'teacher'}", timm.create_model('alphanet_custom', num_classes=3))


def _run_with_args_yaml(tmp_path, text):
    """A training run folder (final/supernet, args.yaml with `text`) and a `latest` link to it, like train writes."""
    run = tmp_path / 'train' / 'run-1'
    save_pretrained(_supernet(), run / 'final' / 'supernet')
    (run / 'args.yaml').write_text(text)
    (tmp_path / 'train' / 'latest').symlink_to(run, target_is_directory=True)
    return run, tmp_path / 'train' / 'latest'


def test_training_data_is_found_from_every_name_of_a_run_or_its_models(tmp_path):
    from timm_alphanet.sources import training_data
    images = tmp_path / 'no-such-images'
    run, latest = _run_with_args_yaml(tmp_path, f"dataset: ''\ndata_dir: {images}\nval_split: val\nepochs: 3\n")
    save_pretrained(timm.create_model('alphanet_custom', num_classes=3), run / 'final' / 'a0')
    expected = {'dataset': '', 'data_dir': str(images), 'val_split': 'val'}
    for spec in (run, latest, f'local-dir:{latest}', latest / 'final' / 'supernet',
                 f"local-dir:{latest / 'final' / 'supernet'}", run / 'final', run / 'final' / 'a0'):
        assert training_data(spec) == expected, spec
    assert training_data('hf-hub:someone/supernet') == {}
    assert training_data(tmp_path / 'elsewhere') == {}


def test_alphanet_search_takes_the_data_of_the_run_behind_any_name_and_says_so(tmp_path, capsys):
    from timm_alphanet.cli.search import main as search_main
    images = tmp_path / 'no-such-images'
    run, latest = _run_with_args_yaml(tmp_path, f"dataset: ''\ndata_dir: {images}\n")
    small = ['--population', '3', '--generations', '0', '--calib-images', '8', '--selection-images', '8',
             '--no-progress']
    for spec in (f'local-dir:{latest}', str(latest / 'final' / 'supernet')):
        with pytest.raises(SystemExit) as e:  # the run's images, not a silent fallback to sklearn/digits
            search_main([spec, '--output', str(tmp_path / 'search'), *small])
        out, err = capsys.readouterr()
        assert e.value.code == 2
        assert f'data: image folder {images} (recorded by the training run of {spec}' in out
        assert err.strip() == f'alphanet-search: error: --data-dir {images}: not found'
    other = tmp_path / 'other-images'
    with pytest.raises(SystemExit):
        search_main([str(latest), '--data-dir', str(other), '--output', str(tmp_path / 'search'), *small])
    out, err = capsys.readouterr()
    assert f'data: image folder {other} (--data-dir given, the rest recorded by the training run of {latest})' in out
    assert err.strip() == f'alphanet-search: error: --data-dir {other}: not found'


def test_alphanet_search_refuses_a_hostile_args_yaml_in_one_line(tmp_path, capsys):
    from timm_alphanet.cli.search import main as search_main
    _, latest = _run_with_args_yaml(tmp_path, '[' * 50000)
    with pytest.raises(SystemExit) as e:
        search_main([str(latest), '--output', str(tmp_path / 'search'), '--no-progress'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert 'args.yaml' in err and 'nested deeper than' in err
    assert not (tmp_path / 'search').exists()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline huggingface_hub cache at tmp_path/hf-cache holding someone/supernet (a tiny supernet)."""
    import shutil

    import huggingface_hub.constants as hf_constants

    from timm_alphanet.testing.fake_hub import hf_cache_snapshot
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf-cache'))
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    model = _supernet()
    save_pretrained(model, tmp_path / 'local')
    snap = hf_cache_snapshot(tmp_path / 'hf-cache', 'someone/supernet', 'c' * 40)
    for name in ('config.json', 'model.safetensors'):
        shutil.copy(tmp_path / 'local' / name, snap / name)
    return model, snap


def test_an_hf_hub_supernet_loads_from_the_cache_with_its_sha256(hub_cache):
    model, snap = hub_cache
    loaded, source = load_supernet('hf-hub:someone/supernet')
    assert (source.kind, source.path) == ('hf-hub', 'someone/supernet')
    assert source.sha256 == hashlib.sha256((snap / 'model.safetensors').read_bytes()).hexdigest()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match='^hf-hub:someone/other: '):
        load_supernet('hf-hub:someone/other')


@pytest.mark.parametrize('name, data, match', [
    ('config.json', b'{"architecture": ' + b'[' * 100_000 + b']' * 100_000 + b'}',
     r'config\.json: nested deeper than 64 levels'),
    ('config.json', b'{"pad": "' + b'x' * (1 << 20) + b'"}', r'config\.json: too large for a config\.json'),
    ('model.safetensors', (10 ** 12).to_bytes(8, 'little') + b'{}', r'model\.safetensors: not a valid safetensors'),
])
def test_a_hostile_hf_hub_snapshot_is_refused_before_timm_reads_it(hub_cache, name, data, match):
    _, snap = hub_cache
    (snap / name).write_bytes(data)
    with pytest.raises(ValueError, match=match):
        load_supernet('hf-hub:someone/supernet')
