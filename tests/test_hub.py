"""Loading paths: torch.hub, timm's pretrained=True through an offline Hugging Face cache, hf-hub:, local-dir:."""
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import safetensors.torch
import timm
import torch
from timm.models import save_for_hf

import timm_alphanet
from timm_alphanet import ALPHANET_ARCHS, ALPHANET_SPACE

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = 'a' * 40


def _hf_cache_snapshot(cache_dir, repo_id):
    """Lay out `repo_id` the way huggingface_hub caches it, so HF_HUB_OFFLINE=1 lookups find it."""
    repo = os.path.join(cache_dir, 'models--' + repo_id.replace('/', '--'))
    os.makedirs(os.path.join(repo, 'refs'), exist_ok=True)
    with open(os.path.join(repo, 'refs', 'main'), 'w') as f:
        f.write(COMMIT)
    snap = os.path.join(repo, 'snapshots', COMMIT)
    os.makedirs(snap, exist_ok=True)
    return snap


def _random_state(model, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        t = torch.randn(v.shape, generator=g)
        if v.ndim > 1:  # keep activations in range: scale by fan-in
            t = t / v[0].numel() ** 0.5
        out[k] = t.abs() + 0.5 if k.endswith('running_var') else t
    return out


def _assert_state_equal(model, state):
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_torch_hub_local_repo():
    model = torch.hub.load(REPO_ROOT, 'alphanet_a3', source='local', num_classes=10)
    assert isinstance(model, timm_alphanet.AlphaNet)
    assert model.arch == ALPHANET_ARCHS['a3'] and model.num_classes == 10
    spec = importlib.util.spec_from_file_location('hubconf', os.path.join(REPO_ROOT, 'hubconf.py'))
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entry_points = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')]
    ours = timm.list_models('alphanet_*') + ['slimmable_mobilenetv1_100', 'slimmable_mobilenetv2_100']
    assert sorted(entry_points) == sorted(ours)  # ours only, not timm's registry
    assert hubconf.dependencies == ['torch', 'timm']


def test_pretrained_true_resolves_through_the_hub_cache(tmp_path):
    name = 'alphanet_a0'
    state = _random_state(timm.create_model(name), seed=1)
    snap = _hf_cache_snapshot(tmp_path, timm.create_model(name).pretrained_cfg['hf_hub_id'])
    safetensors.torch.save_file(state, os.path.join(snap, 'model.safetensors'))
    model = timm.create_model(name, pretrained=True, cache_dir=tmp_path)
    _assert_state_equal(model, state)
    # a new head keeps the backbone weights
    model = timm.create_model(name, pretrained=True, cache_dir=tmp_path, num_classes=7)
    assert model.classifier.out_features == 7
    assert torch.equal(model.conv_stem.weight, state['conv_stem.weight'])


def test_missing_weights_say_where_weights_come_from(tmp_path):
    with pytest.raises(RuntimeError) as e:
        timm.create_model('alphanet_a1', pretrained=True, cache_dir=tmp_path)
    msg = str(e.value)
    assert 'alphanet_a1' in msg and timm_alphanet.models.HF_HUB_ORG in msg and 'README' in msg


def test_hf_hub_and_local_dir_rebuild_a_searched_subnet(tmp_path):
    arch = ALPHANET_SPACE.sample(random.Random(5))
    src = timm.create_model('alphanet_custom', arch=arch.to_dict(), num_classes=12)
    state = _random_state(src, seed=2)
    src.load_state_dict(state)
    out = tmp_path / 'export'
    save_for_hf(src, out, safe_serialization=True)

    local = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert isinstance(local, timm_alphanet.AlphaNet) and local.arch == arch and local.num_classes == 12
    _assert_state_equal(local, state)
    assert local.pretrained_cfg['input_size'] == (3, arch.resolution, arch.resolution)

    cache = tmp_path / 'cache'
    snap = _hf_cache_snapshot(cache, 'someone/alphanet-searched')
    for f in os.listdir(out):
        shutil.copy(out / f, snap)
    hub = timm.create_model('hf-hub:someone/alphanet-searched', pretrained=True, cache_dir=cache)
    assert hub.arch == arch
    _assert_state_equal(hub, state)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(hub.eval()(x), src.eval()(x))


# ---- publishing: a boundary fake of HfApi records the calls and writes into a folder used as an offline HF cache

SECRET = 'hf_NeverPrintThisToken0123456789'


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A FakeHfApi behind timm_alphanet.export.hub.HfApi, a token in HF_TOKEN, and the Hub online for pushing."""
    import huggingface_hub.constants as hf_constants

    import timm_alphanet.export.hub as hub_module
    from timm_alphanet.testing.fake_hub import FakeHfApi

    fake = FakeHfApi(tmp_path / 'hf-cache')
    made = []

    def make_api(**kwargs):
        made.append(sorted(kwargs))
        assert kwargs.get('token') == SECRET  # the standard login's token is what HfApi gets
        return fake

    monkeypatch.setattr(hub_module, 'HfApi', make_api)
    monkeypatch.setenv('HF_TOKEN', SECRET)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', False)
    fake.made = made
    return fake


@pytest.fixture()
def digits_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TIMM_ALPHANET_CACHE', str(tmp_path / 'data-cache'))


def _export_pareto(tmp_path, extra):
    from timm_alphanet.calibration import CalibrationRecipe
    from timm_alphanet.cli.export import main as export_main
    from timm_alphanet.sources import load_supernet
    from timm_alphanet.testing.pareto import pareto_dict
    from timm_alphanet.testing.tiny import tiny_supernet

    timm_alphanet.save_pretrained(tiny_supernet(seed=2), tmp_path / 'supernet')
    supernet, source = load_supernet(str(tmp_path / 'supernet'))
    archs = [supernet.space.min_config(), supernet.space.max_config()]
    recipe = CalibrationRecipe(num_images=16, batch_size=8, image_size=24).to_dict()
    (tmp_path / 'pareto.json').write_text(json.dumps(pareto_dict(supernet.space, source.sha256, archs, recipe)))
    return export_main([str(tmp_path / 'supernet'), '--pareto', str(tmp_path / 'pareto.json'), '--output',
                        str(tmp_path / 'out'), '--calib-data', 'sklearn/digits', '--workers', '0', '--no-progress',
                        '--no-latency', *extra])


def _all_written_bytes(root):
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), 'rb') as fh:
                yield os.path.join(dirpath, f), fh.read()


def test_push_reloads_with_hf_hub_groups_the_front_and_updates_the_card(tmp_path, hub, digits_cache, capsys,
                                                                       caplog, monkeypatch):
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import ModelCard

    from timm_alphanet.export import push_to_hub
    from timm_alphanet.export.folder import record_evaluation

    caplog.set_level('DEBUG')
    assert _export_pareto(tmp_path, ['--push-to-hub', 'me/tiny', '--private']) == 0
    folders = sorted((tmp_path / 'out').iterdir())
    repos = [f'me/tiny-{f.name}' for f in folders]
    assert hub.calls[0][0] == 'whoami'  # access checked before any work
    assert {c[1]['repo_id'] for c in hub.calls if c[0] == 'create_repo'} == set(repos)
    assert all(c[1]['private'] and c[1]['exist_ok'] for c in hub.calls if c[0] == 'create_repo')
    (slug, items), = hub.collections.items()
    assert slug.startswith('me/') and sorted(items) == repos

    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)  # reloads come from the cache the fake wrote
    for folder, repo in zip(folders, repos):
        local = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        remote = timm.create_model(f'hf-hub:{repo}', pretrained=True, cache_dir=tmp_path / 'hf-cache').eval()
        res = local.arch.resolution
        x = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(remote(x), local(x), rtol=0, atol=0)
        card = ModelCard.load(hf_hub_snapshot(tmp_path / 'hf-cache', repo) / 'README.md')
        assert card.data.license == 'cc-by-nc-4.0' and card.data.library_name == 'timm'
        # the published metadata: the validation top-1 measured at export (timm's pipeline), never the selection score
        assert card.data.eval_results and {(r.dataset_split, r.metric_config) for r in card.data.eval_results} == {
            ('validation', 'timm eval pipeline')}
        assert f"timm.create_model('hf-hub:{repo}', pretrained=True)" in card.text and 'local-dir:' not in card.text

    # a second push regenerates the card (timm's push_to_hf_hub would keep the old one)
    model = timm.create_model(f'local-dir:{folders[0]}', pretrained=True)
    record_evaluation(folders[0], {'top1': 12.5, 'top5': 50.0, 'loss': 2.0, 'dataset': 'digits',
                                   'split': 'validation', 'pipeline': 'paper', 'num_images': 360}, model=model)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', False)
    assert push_to_hub(folders[0], repos[0]) == repos[0]
    card = ModelCard.load(hf_hub_snapshot(tmp_path / 'hf-cache', repos[0]) / 'README.md')
    assert ('validation', 12.5) in {(r.dataset_split, r.metric_value) for r in card.data.eval_results}
    assert f"hf-hub:{repos[0]}" in card.text

    out = capsys.readouterr()
    texts = [out.out, out.err, caplog.text, repr(hub.calls)]
    assert all(SECRET not in t for t in texts)
    leaked = [p for p, data in _all_written_bytes(tmp_path) if SECRET.encode() in data]
    assert not leaked


def hf_hub_snapshot(cache, repo_id):
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    return repo / 'snapshots' / (repo / 'refs' / 'main').read_text()


@pytest.mark.parametrize('problem', ['offline', 'no-token', 'hub-refuses'])
def test_push_problems_fail_before_any_work_and_the_folders_are_still_written(tmp_path, hub, digits_cache, capsys,
                                                                             monkeypatch, problem):
    import huggingface_hub.constants as hf_constants

    import timm_alphanet.export.hub as hub_module
    import timm_alphanet.sources as sources

    if problem == 'offline':
        monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    elif problem == 'no-token':
        monkeypatch.setattr(hub_module, 'get_token', lambda: None)
    else:
        def refuse():
            raise ConnectionError('the Hub cannot be reached')
        monkeypatch.setattr(hub, 'whoami', refuse)
    real_load = sources.load_supernet
    seen_before_work = []

    def load_supernet(*args, **kwargs):
        seen_before_work.append(capsys.readouterr().err)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(sources, 'load_supernet', load_supernet)
    with pytest.raises(SystemExit) as e:
        _export_pareto(tmp_path, ['--push-to-hub', 'me/tiny'])
    assert e.value.code == 2
    expected = {'offline': 'offline mode', 'no-token': 'not logged in', 'hub-refuses': 'cannot be reached'}[problem]
    assert len(seen_before_work) == 2  # the helper's own load, then the CLI's
    assert expected in seen_before_work[-1] and 'will still be written' in seen_before_work[-1]
    assert 'nothing was pushed' in capsys.readouterr().err
    assert len(list((tmp_path / 'out').iterdir())) == 2
    assert not [c for c in hub.calls if c[0] in ('create_repo', 'upload_folder')]


def test_revision_branch_and_bad_targets(tmp_path, hub):
    from timm_alphanet.export import HubPublisher
    from timm_alphanet.export.hub import parse_hub_target

    timm_alphanet.save_pretrained(timm.create_model('alphanet_a0', num_classes=3), tmp_path / 'a0')
    publisher = HubPublisher('me', revision='v2')
    assert publisher.push(tmp_path / 'a0') == 'me/a0'
    assert ('create_branch', {'repo_id': 'me/a0', 'branch': 'v2'}) in hub.calls
    assert [c[1]['revision'] for c in hub.calls if c[0] == 'upload_folder'] == ['v2']
    for bad in ('', 'a/b/c', 'me/-x', 'm e'):
        with pytest.raises(ValueError, match='Hub target'):
            parse_hub_target(bad)
    with pytest.raises(ValueError, match='bad revision'):
        HubPublisher('me', revision='../x')


def test_convert_push_creates_the_repositories_pretrained_true_loads(tmp_path, hub, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import ModelCard
    from PIL import Image

    from timm_alphanet.cli.convert import main as convert_main
    from timm_alphanet.models import HF_HUB_ORG
    from timm_alphanet.testing.original_ckpt import write_original_checkpoint

    ckpt = tmp_path / 'alphanet.pth.tar'
    write_original_checkpoint(ckpt, seed=3, legacy=False)
    images = tmp_path / 'images' / 'cls'
    images.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        Image.fromarray(torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8).numpy()).save(
            images / f'{i}.png')
    common = [str(ckpt), '--out', str(tmp_path / 'out'), '--subnets', 'a0', '--workers', '0', '--no-progress',
              '--push-to-hub', HF_HUB_ORG]
    with pytest.raises(SystemExit):  # publishing uncalibrated subnets under the registry's names is refused
        convert_main(common)
    assert 'calibrate them' in capsys.readouterr().err and not hub.calls
    assert convert_main([*common, '--calib-data', str(images.parent), '--calib-images', '2',
                         '--calib-batch-size', '2']) == 0
    assert [c[1]['repo_id'] for c in hub.calls if c[0] == 'upload_folder'] == [
        f'{HF_HUB_ORG}/alphanet_supernet', f'{HF_HUB_ORG}/alphanet_a0.in1k']

    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    published = timm.create_model('alphanet_a0', pretrained=True, cache_dir=tmp_path / 'hf-cache').eval()
    local = timm.create_model(f'local-dir:{tmp_path / "out" / "alphanet_a0"}', pretrained=True).eval()
    x = torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(published(x), local(x), rtol=0, atol=0)
    card = ModelCard.load(hf_hub_snapshot(tmp_path / 'hf-cache', f'{HF_HUB_ORG}/alphanet_a0.in1k') / 'README.md')
    assert card.data.base_model == f'{HF_HUB_ORG}/alphanet_supernet' and card.data.license == 'cc-by-nc-4.0'
    assert "timm.create_model('alphanet_a0', pretrained=True)" in card.text


def test_hf_hub_org_can_be_overridden_for_mirrors():
    code = ('import timm, timm_alphanet; from timm_alphanet.models import WEIGHTS_HELP; '
            "print(timm.models.get_pretrained_cfg('alphanet_a3').hf_hub_id); print(WEIGHTS_HELP)")
    env = dict(os.environ, TIMM_ALPHANET_HF_ORG='my-mirror')
    p = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    hub_id, help_text = p.stdout.splitlines()[:2]
    assert hub_id == 'my-mirror/alphanet_a3.in1k' and 'huggingface.co/my-mirror' in help_text
    env['TIMM_ALPHANET_HF_ORG'] = 'not/an org'
    p = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "TIMM_ALPHANET_HF_ORG='not/an org' is not a Hugging Face organisation" in p.stderr


def _refusal(*args, **kwargs):
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError
    response = SimpleNamespace(headers={'x-request-id': 'r1'}, status_code=403, request=None)
    raise HfHubHTTPError(f'403 Forbidden: token {SECRET} may not write\nto this repository', response=response)


@pytest.mark.parametrize('step', ['create_repo', 'upload_folder'])
def test_a_failed_push_leaves_the_folder_unchanged_and_is_one_line(tmp_path, hub, monkeypatch, step):
    from timm_alphanet.export import HubPublisher

    timm_alphanet.save_pretrained(timm.create_model('alphanet_a0', num_classes=3), tmp_path / 'out' / 'a0')
    before = dict(_all_written_bytes(tmp_path / 'out'))
    monkeypatch.setattr(hub, step, _refusal)
    with pytest.raises(ValueError) as e:
        HubPublisher('me').push(tmp_path / 'out' / 'a0')
    message = str(e.value)
    assert '\n' not in message and SECRET not in message and 'hf_***' in message
    assert 'Hugging Face Hub repository me/a0 failed (HfHubHTTPError: 403 Forbidden' in message
    assert dict(_all_written_bytes(tmp_path / 'out')) == before  # no hub_repo claimed, no staging copy left
    assert 'hub_repo' not in (tmp_path / 'out' / 'a0' / 'config.json').read_text()
    # the next push that works records the repository, locally and in what was uploaded
    monkeypatch.undo()
    monkeypatch.setenv('HF_TOKEN', SECRET)
    import timm_alphanet.export.hub as hub_module
    monkeypatch.setattr(hub_module, 'HfApi', lambda **kw: hub)
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', False)
    assert HubPublisher('me').push(tmp_path / 'out' / 'a0') == 'me/a0'
    local = json.loads((tmp_path / 'out' / 'a0' / 'config.json').read_text())
    assert local['timm_alphanet']['hub_repo'] == 'me/a0'
    assert json.loads(hub.repos['me/a0']['files']['config.json']) == local
    assert hub.repos['me/a0']['files']['README.md'] == (tmp_path / 'out' / 'a0' / 'README.md').read_bytes()
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a0']


def test_alphanet_export_reports_a_refused_upload_in_one_line(tmp_path, hub, digits_cache, capsys, monkeypatch):
    monkeypatch.setattr(hub, 'upload_folder', _refusal)
    with pytest.raises(SystemExit) as e:
        _export_pareto(tmp_path, ['--push-to-hub', 'me/tiny'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'Traceback' not in err and SECRET not in err
    assert 'alphanet-export: error: ' in err and 'Hub repository me/tiny-' in err and '403 Forbidden' in err
    for folder in (tmp_path / 'out').iterdir():
        assert 'hub_repo' not in (folder / 'config.json').read_text()


def test_a_refused_collection_is_one_line(tmp_path, hub, monkeypatch):
    from timm_alphanet.export import HubPublisher

    monkeypatch.setattr(hub, 'create_collection', _refusal)
    with pytest.raises(ValueError, match=r"collection 'front' of me failed \(HfHubHTTPError: 403.*hf_\*\*\*"):
        HubPublisher('me').collect('front', ['me/a0'])


# ---- a push uploads only the files the export writes, never what a link points to (issue 20, item 6)

def _outside(tmp_path):
    outside = tmp_path / 'outside'
    (outside / 'dir').mkdir(parents=True)
    (outside / 'secret.txt').write_text('OUTSIDE-CONTENT')
    (outside / 'dir' / 'key.txt').write_text('OUTSIDE-CONTENT')
    return outside


@pytest.mark.parametrize('case', ['file-link', 'folder-link', 'card-link', 'both-links', 'stray-file', 'subfolder'])
def test_a_push_refuses_links_and_stray_entries_and_uploads_nothing(tmp_path, hub, case):
    from timm_alphanet.export import HubPublisher

    folder = tmp_path / 'out' / 'a0'
    timm_alphanet.save_pretrained(timm.create_model('alphanet_a0', num_classes=3), folder)
    outside = _outside(tmp_path)
    named = []
    if case in ('file-link', 'both-links'):
        os.symlink(outside / 'secret.txt', folder / 'model.onnx')  # an allowed name, but a link
        named.append("'model.onnx' (a symbolic link)")
    if case in ('folder-link', 'both-links'):
        os.symlink(outside / 'dir', folder / 'extra')
        named.append("'extra' (a symbolic link)")
    if case == 'card-link':
        (folder / 'README.md').unlink()
        os.symlink(outside / 'secret.txt', folder / 'README.md')
        named.append("'README.md' (a symbolic link)")
    if case == 'stray-file':
        (folder / 'notes.txt').write_text('private')
        named.append("'notes.txt' (not a file the export writes)")
    if case == 'subfolder':
        (folder / 'sub').mkdir()
        (folder / 'sub' / 'x.txt').write_text('private')
        named.append("'sub' (not a file the export writes)")
    before = sorted(p.name for p in (tmp_path / 'out').iterdir())
    with pytest.raises(ValueError) as e:
        HubPublisher('me').push(folder)
    message = str(e.value)
    assert '\n' not in message and str(folder) in message and 'nothing was uploaded' in message
    assert all(n in message for n in named), message
    assert not [c for c in hub.calls if c[0] in ('create_repo', 'upload_folder')]
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == before  # no staging copy left
    assert 'hub_repo' not in (folder / 'config.json').read_text()


def test_a_clean_folder_publishes_exactly_the_export_files(tmp_path, hub):
    from timm_alphanet.export import HubPublisher
    from timm_alphanet.export.hub import HUB_FILES, upload_files

    folder = tmp_path / 'out' / 'a0'
    timm_alphanet.save_pretrained(timm.create_model('alphanet_a0', num_classes=3), folder)
    (folder / '.hidden').write_text('never uploaded')
    assert upload_files(folder) == ['README.md', 'config.json', 'model.safetensors']
    assert HubPublisher('me').push(folder) == 'me/a0'
    (upload,) = [c[1] for c in hub.calls if c[0] == 'upload_folder']
    assert upload['files'] == ['README.md', 'config.json', 'model.safetensors']
    (folder / 'pareto.png').write_bytes(b'\x89PNG')
    HubPublisher('me').push(folder)
    assert [c[1]['files'] for c in hub.calls if c[0] == 'upload_folder'][-1] == [
        'README.md', 'config.json', 'model.safetensors', 'pareto.png']
    assert set(hub.repos['me/a0']['files']) <= set(HUB_FILES)


# ---- a saved config.json may not make the loader read a file (issue 20, item 7)

def _config_with(tmp_path, field, value):
    """A model folder (alphanet_custom) whose config.json's model_args[field] is `value`."""
    folder = tmp_path / 'model'
    src = timm.create_model('alphanet_custom', arch=ALPHANET_ARCHS['a0'].to_dict(), num_classes=3)
    save_for_hf(src, folder, safe_serialization=True)
    config = json.loads((folder / 'config.json').read_text())
    config['model_args'][field] = value
    (folder / 'config.json').write_text(json.dumps(config))
    return folder


@pytest.fixture()
def no_file_reads(monkeypatch):
    """Fails a test whose model creation reads a space YAML or an arch file."""
    import timm_alphanet.archs as archs
    from timm_alphanet.spaces import SearchSpace

    reads = []

    def from_yaml(path):
        reads.append(path)
        raise AssertionError(f'read {path}')

    def read_arch_file(path):
        reads.append(path)
        raise AssertionError(f'read {path}')

    monkeypatch.setattr(SearchSpace, 'from_yaml', staticmethod(from_yaml))
    monkeypatch.setattr(archs, 'read_arch_file', read_arch_file)
    return reads


@pytest.mark.parametrize('field,value', [('space', '/etc/passwd'), ('space', '../x.yaml'), ('space', 'space.yaml'),
                                         ('arch', '/etc/passwd'), ('arch', '../arch.json'), ('space', 3)])
def test_a_saved_config_naming_a_file_is_refused_before_it_is_read(tmp_path, monkeypatch, no_file_reads, field,
                                                                    value):
    import huggingface_hub.constants as hf_constants

    from timm_alphanet.utils import check_model_dir

    folder = _config_with(tmp_path, field, value)
    (tmp_path / 'x.yaml').write_text('supernet_config: {}\n')
    (folder / 'space.yaml').write_text('supernet_config: {}\n')
    expected = f'model_args.{field} must be the'
    for create in (lambda: check_model_dir(folder),
                   lambda: timm.create_model(f'local-dir:{folder}', pretrained=True),
                   lambda: timm.create_model(f'local-dir:{folder}')):
        with pytest.raises(ValueError) as e:
            create()
        message = str(e.value)
        assert '\n' not in message and expected in message and repr(value) in message, message
        assert str(folder / 'config.json') in message
    # the same config.json from the Hub
    snap = _hf_cache_snapshot(tmp_path / 'hf-cache', 'someone/hostile')
    for f in ('config.json', 'model.safetensors'):
        shutil.copy(folder / f, snap)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(ValueError) as e:
        timm.create_model('hf-hub:someone/hostile', pretrained=True, cache_dir=tmp_path / 'hf-cache')
    assert expected in str(e.value) and 'hf-hub:someone/hostile' in str(e.value)
    assert no_file_reads == []


def test_a_saved_config_with_the_space_inline_or_an_arch_name_loads(tmp_path, no_file_reads):
    from timm_alphanet.sources import load_supernet
    from timm_alphanet.testing.tiny import tiny_supernet
    from timm_alphanet.utils import check_model_dir

    timm_alphanet.save_pretrained(tiny_supernet(seed=2), tmp_path / 'supernet')  # what export writes: space inline
    assert isinstance(check_model_dir(tmp_path / 'supernet')['model_args']['space'], dict)
    model = timm.create_model(f'local-dir:{tmp_path / "supernet"}', pretrained=True)
    supernet, _ = load_supernet(str(tmp_path / 'supernet'))
    assert model.space == supernet.space
    folder = _config_with(tmp_path, 'arch', 'a0')
    assert timm.create_model(f'local-dir:{folder}', pretrained=True).arch == ALPHANET_ARCHS['a0']
    assert no_file_reads == []


def test_the_callers_own_arch_file_is_still_read(tmp_path):
    (tmp_path / 'arch.json').write_text(json.dumps(ALPHANET_ARCHS['a1'].to_dict()))
    model = timm.create_model('alphanet_custom', arch=str(tmp_path / 'arch.json'), num_classes=3)
    assert model.arch == ALPHANET_ARCHS['a1']
