"""Model folders: named and custom AlphaNets round-trip through local-dir:, cards describe the model that is saved
(its own license, real usage lines), and folders are written whole: refused when non-empty unless overwrite, no stale
files, nothing partial after a full disk."""
import errno
import json
import os

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard

import timm_alphanet
from timm_alphanet import ALPHANET_ARCHS, save_pretrained
from timm_alphanet.export import OutputExistsError, update_metadata
from timm_alphanet.export.folder import record_evaluation
from timm_alphanet.testing import randomize_bn_stats
from timm_alphanet.testing.tiny import TINY_SPACE, tiny_supernet


def _random_bn(model, seed=0):
    randomize_bn_stats(model, torch.Generator().manual_seed(seed))
    return model.eval()


@pytest.mark.parametrize('name', ['alphanet_a0', 'alphanet_a5_base'])
def test_named_alphanet_round_trips_through_local_dir(tmp_path, name):
    # the bug: config.json recorded `arch`, and the named entrypoint then got it twice
    model = _random_bn(timm.create_model(name, num_classes=7))
    save_pretrained(model, tmp_path / 'm')
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert config['architecture'] == name and 'arch' not in config.get('model_args', {})
    loaded = timm.create_model(f'local-dir:{tmp_path / "m"}', pretrained=True).eval()
    assert loaded.arch == ALPHANET_ARCHS[name[len('alphanet_'):]] and loaded.num_classes == 7
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_custom_arch_equal_to_a_named_one_is_saved_as_the_named_model(tmp_path):
    model = _random_bn(timm.create_model('alphanet_custom', arch=ALPHANET_ARCHS['a2'].to_dict(), num_classes=3))
    save_pretrained(model, tmp_path / 'm')
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert config['architecture'] == 'alphanet_a2'
    loaded = timm.create_model(f'local-dir:{tmp_path / "m"}', pretrained=True).eval()
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_subnet_of_another_space_keeps_arch_and_space(tmp_path):
    supernet = tiny_supernet()
    arch = supernet.space.min_config()
    model = timm_alphanet.extract_subnet(supernet, arch).eval()
    save_pretrained(model, tmp_path / 'm')
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert config['architecture'] == 'alphanet_custom' and config['model_args']['arch'] == arch.to_dict()
    loaded = timm.create_model(f'local-dir:{tmp_path / "m"}', pretrained=True).eval()
    assert loaded.space == supernet.space
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_card_of_a_non_alphanet_model_describes_it_with_its_own_license(tmp_path, monkeypatch):
    student = timm.create_model('mobilenetv2_050', num_classes=4)  # e.g. a KD student in a run's final/
    save_pretrained(student, tmp_path / 'final')
    card = ModelCard.load(tmp_path / 'final' / 'README.md')
    assert card.data.license == student.pretrained_cfg['license'] == 'apache-2.0'
    assert card.data.library_name == 'timm'
    assert 'mobilenetv2_050' in card.text and 'supernet' not in card.text and 'AlphaNet subnet' not in card.text
    assert '<org>' not in card.content and 'cc-by-nc' not in card.content.lower()
    # the usage names the folder relatively (a card is published; this machine's paths are not), and runs as written
    assert "timm.create_model('local-dir:final', pretrained=True)" in card.text and str(tmp_path) not in card.content
    monkeypatch.chdir(tmp_path)
    assert timm.create_model('local-dir:final', pretrained=True).num_classes == 4
    assert 'import timm_alphanet' not in card.text  # a plain timm model needs no plugin


def test_alphanet_cards_carry_cc_by_nc_and_real_usage(tmp_path):
    save_pretrained(timm.create_model('alphanet_a1'), tmp_path / 'a1')
    save_pretrained(tiny_supernet(), tmp_path / 'sn')
    a1 = ModelCard.load(tmp_path / 'a1' / 'README.md')
    sn = ModelCard.load(tmp_path / 'sn' / 'README.md')
    for card in (a1, sn):
        assert card.data.license == 'cc-by-nc-4.0' and '<org>' not in card.content
        assert 'import timm_alphanet' in card.text
    assert 'AlphaNet subnet' in a1.text and 'supernet' not in a1.text.split('## Usage')[0]
    assert 'weight-sharing supernet' in sn.text and 'supernet' in sn.data.tags
    assert '| MFLOPs (multiply-adds, official counter) | 279.24 |' in a1.text  # A1's published count


def test_refuses_a_non_empty_folder_unless_overwrite_and_leaves_no_stale_files(tmp_path):
    out = tmp_path / 'm'
    save_pretrained(timm.create_model('alphanet_a0', num_classes=3), out)
    (out / 'pytorch_model.bin').write_bytes(b'stale weights of an older export')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputExistsError, match='not empty; choose another folder or pass overwrite=True'):
        save_pretrained(timm.create_model('alphanet_a1', num_classes=3), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    save_pretrained(timm.create_model('alphanet_a1', num_classes=3), out, overwrite=True)
    assert sorted(os.listdir(out)) == ['README.md', 'config.json', 'model.safetensors']
    assert json.loads((out / 'config.json').read_text())['architecture'] == 'alphanet_a1'
    assert sorted(os.listdir(tmp_path)) == ['m']  # no temporary folder left beside it
    (tmp_path / 'empty').mkdir()
    save_pretrained(timm.create_model('alphanet_a0', num_classes=3), tmp_path / 'empty')  # an empty folder is fine


@pytest.mark.parametrize('existing', [False, True])
def test_full_disk_mid_write_leaves_no_partial_folder(tmp_path, monkeypatch, existing):
    out = tmp_path / 'm'
    if existing:
        save_pretrained(timm.create_model('alphanet_a0', num_classes=3), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()} if existing else None
    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        with open(filename, 'r+b') as f:  # a truncated file, then the error a full disk gives
            f.truncate(100)
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(safetensors.torch, 'save_file', full_disk)
    with pytest.raises(OSError) as e:
        save_pretrained(timm.create_model('alphanet_a1', num_classes=3), out, overwrite=True)
    assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == (['m'] if existing else [])
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_update_metadata_and_record_evaluation_rewrite_config_and_card(tmp_path):
    model = timm.create_model('alphanet_a0', num_classes=3)
    save_pretrained(model, tmp_path / 'm', notes='kept across card regenerations')
    result = {'top1': 71.25, 'top5': 90.5, 'loss': 1.25, 'dataset': 'digits', 'split': 'validation',
              'pipeline': 'timm', 'num_images': 80}
    record_evaluation(tmp_path / 'm', result, model=model)
    record_evaluation(tmp_path / 'm', {**result, 'top1': 72.5}, model=model)  # same data: replaces
    record_evaluation(tmp_path / 'm', {**result, 'pipeline': 'paper', 'top1': 70.0}, model=model)
    meta = json.loads((tmp_path / 'm' / 'config.json').read_text())['timm_alphanet']
    assert [(r['pipeline'], r['top1']) for r in meta['results']] == [('timm', 72.5), ('paper', 70.0)]
    card = ModelCard.load(tmp_path / 'm' / 'README.md')
    values = sorted((r.metric_name, r.metric_value) for r in card.data.eval_results)
    assert values == [('Top-1 accuracy', 70.0), ('Top-1 accuracy', 72.5), ('Top-5 accuracy', 90.5),
                      ('Top-5 accuracy', 90.5)]
    assert 'kept across card regenerations' in card.text
    other = timm.create_model('alphanet_a0', num_classes=3)
    with pytest.raises(ValueError, match='other weights'):
        record_evaluation(tmp_path / 'm', result, model=other)
    update_metadata(tmp_path / 'm', {'hub_repo': 'me/alphanet_a0'})
    assert "create_model('hf-hub:me/alphanet_a0'" in (tmp_path / 'm' / 'README.md').read_text()


def test_read_config_refuses_forged_files(tmp_path):
    from timm_alphanet.export.folder import read_config
    (tmp_path / 'config.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match='not a timm config'):
        read_config(tmp_path)
    (tmp_path / 'config.json').write_bytes(b'\xff\xfe{')
    with pytest.raises(ValueError, match='not valid JSON'):
        read_config(tmp_path)
    assert TINY_SPACE  # the tiny space is importable for the other export tests


def test_read_config_is_bounded_like_check_model_dir(tmp_path):
    from timm_alphanet import utils as io_checks
    from timm_alphanet.export.folder import MAX_CONFIG_BYTES, read_config
    assert MAX_CONFIG_BYTES == io_checks.MAX_CONFIG_BYTES  # one limit for every reader of config.json
    (tmp_path / 'config.json').write_text('{"architecture": "x", "a": ' + '[' * 100_000 + ']' * 100_000 + '}')
    with pytest.raises(ValueError, match=r'config\.json: nested deeper than 64 levels'):
        read_config(tmp_path)
    (tmp_path / 'config.json').write_text('{"architecture": "x", "pad": "' + 'x' * io_checks.MAX_CONFIG_BYTES + '"}')
    with pytest.raises(ValueError, match=rf'config\.json: too large for a config\.json .*at most {1 << 20}\)'):
        read_config(tmp_path)
