"""Writers never write through a symbolic link (issue 20), and one process at a time owns an output folder.

Links to a file outside the folder are planted at each writer's target and at the temp names one would guess; the
outside file must stay as it was. `claim_folder` (an flock on ``folder/.lock``) refuses a second claim naming the
holder, frees the folder on exit, on an exception and when the holder is killed; training, the search and export
claim their output folders.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch

from timm_alphanet import save_pretrained
from timm_alphanet.utils import (
    LOCK_FILE, append_jsonl, claim_folder, replace_directory, replace_symlink, staged_directory, write_atomic,
)

pytestmark = pytest.mark.skipif(not hasattr(os, 'symlink') or sys.platform == 'win32', reason='POSIX links and flock')

ROOT = Path(__file__).resolve().parent.parent
SECRET = b'outside: must never change\n'


@pytest.fixture
def outside(tmp_path):
    """A file outside the folder the writers write to."""
    f = tmp_path / 'outside' / 'secret.txt'
    f.parent.mkdir()
    f.write_bytes(SECRET)
    return f


def _plant(target: Path, outside: Path) -> None:
    """Links to `outside` at `target` and at the temp names one would guess for it."""
    d, n = target.parent, target.name
    for name in (n, f'{n}.tmp', f'.{n}.tmp', f'.{n}.0.tmp', f'{n}~', f'.{n}.swp', f'{n}.part'):
        if not os.path.lexists(d / name):
            os.symlink(outside, d / name)


def _unchanged(outside: Path) -> None:
    assert outside.read_bytes() == SECRET


def _writes_replace_the_link(target: Path, outside: Path) -> None:
    assert not target.is_symlink() and target.is_file()
    _unchanged(outside)


# ---- every writer class
def test_write_atomic_replaces_a_link_and_ignores_planted_temp_names(tmp_path, outside):
    for i, data in enumerate(['text', b'bytes']):
        target = tmp_path / f'out{i}.json'
        _plant(target, outside)
        write_atomic(target, data)
        assert target.read_bytes() == (data if isinstance(data, bytes) else data.encode())
        _writes_replace_the_link(target, outside)
    dangling = tmp_path / 'dangling.json'
    os.symlink(tmp_path / 'outside' / 'not_there', dangling)
    write_atomic(dangling, 'x')
    assert not (tmp_path / 'outside' / 'not_there').exists() and dangling.read_text() == 'x'


@pytest.mark.filterwarnings('ignore::UserWarning')  # a two-repeat latency table is noisy
def test_pareto_and_latency_table_writers_replace_links(tmp_path, outside):
    from test_pareto_file import _document
    from timm_alphanet.cost.latency import LatencyTable, TimingConfig, build_latency_table
    from timm_alphanet.search.pareto_file import write_pareto
    from timm_alphanet.spaces import SearchSpace

    pareto = tmp_path / 'pareto.json'
    _plant(pareto, outside)
    write_pareto(pareto, _document())
    _writes_replace_the_link(pareto, outside)
    space = SearchSpace.from_dict({'resolutions': [16], 'first_conv': {'c': [8], 's': 2},
                                   'mb1': {'c': [8], 'd': [1], 'k': [3], 't': [1]}, 'last_conv': {'c': [16]},
                                   'head_expand_ratio': 2})
    table = build_latency_table(space, threads=1, num_classes=5, timing=TimingConfig(warmup=0, repeats=2, trim=0.0),
                                progress=False)
    lut = tmp_path / 'lut.json'
    _plant(lut, outside)
    table.save(lut)
    _writes_replace_the_link(lut, outside)
    assert LatencyTable.load(lut).entries == table.entries


def test_staged_and_replaced_directories_replace_a_link_not_its_target(tmp_path, outside):
    outdir = outside.parent
    before = sorted(p.name for p in outdir.iterdir())
    folder = tmp_path / 'model'
    os.symlink(outdir, folder)  # a link at the folder: replaced, the linked folder untouched
    with staged_directory(folder) as tmp:
        (tmp / 'secret.txt').write_bytes(b'new')
    assert not folder.is_symlink() and (folder / 'secret.txt').read_bytes() == b'new'
    assert sorted(p.name for p in outdir.iterdir()) == before
    _unchanged(outside)
    other = tmp_path / 'other'
    os.symlink(outdir, other)
    staged = tmp_path / 'staged'
    staged.mkdir()
    (staged / 'a').write_text('a')
    replace_directory(staged, other)
    assert not other.is_symlink() and (other / 'a').read_text() == 'a'
    assert sorted(p.name for p in outdir.iterdir()) == before
    _unchanged(outside)


def test_replace_symlink_replaces_the_link_itself(tmp_path, outside):
    link = tmp_path / 'latest'
    os.symlink(outside, link)
    replace_symlink(link, 'run2')
    assert os.readlink(link) == 'run2'
    _unchanged(outside)


def test_append_jsonl_refuses_links_and_non_regular_files(tmp_path, outside):
    log = tmp_path / 'candidates.jsonl'
    append_jsonl(log, {'a': 1})
    append_jsonl(log, {'a': 2})
    assert [json.loads(line) for line in log.read_text().splitlines()] == [{'a': 1}, {'a': 2}]
    link = tmp_path / 'link.jsonl'
    os.symlink(outside, link)
    with pytest.raises(ValueError, match=r'link\.jsonl: is a symbolic link') as e:
        append_jsonl(link, {'a': 1})
    assert '\n' not in str(e.value)
    _unchanged(outside)
    dangling = tmp_path / 'dangling.jsonl'
    os.symlink(tmp_path / 'outside' / 'new.jsonl', dangling)
    with pytest.raises(ValueError, match='is a symbolic link'):
        append_jsonl(dangling, {'a': 1})
    assert not (tmp_path / 'outside' / 'new.jsonl').exists()
    fifo = tmp_path / 'fifo.jsonl'
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match='not a regular file'):
        append_jsonl(fifo, {'a': 1})
    with pytest.raises(ValueError, match='not a regular file'):
        append_jsonl(tmp_path, {'a': 1})  # a folder


def test_validate_write_to_replaces_linked_config_and_card(tmp_path, outside, monkeypatch):
    from timm_alphanet.cli.validate import main as validate_main

    folder = tmp_path / 'model'
    torch.manual_seed(0)
    save_pretrained(timm.create_model('test_efficientnet', num_classes=10), folder)
    kept = {}
    for name in ('config.json', 'README.md'):  # the real files move outside; links to them take their place
        real = outside.parent / name
        os.replace(folder / name, real)
        kept[name] = real.read_bytes()
        os.symlink(real, folder / name)
        _plant(folder / name, outside)
    monkeypatch.setenv('TIMM_ALPHANET_CACHE', str(tmp_path / 'cache'))
    assert validate_main(['--model', f'local-dir:{folder}', '--data-dir', 'sklearn/digits', '--split', 'validation',
                          '--workers', '0', '--no-progress', '--write-to', str(folder)]) == 0
    for name, data in kept.items():
        assert not (folder / name).is_symlink() and (outside.parent / name).read_bytes() == data
    assert json.loads((folder / 'config.json').read_text())['timm_alphanet']['results']
    _unchanged(outside)


# ---- one process per folder
def test_a_second_claim_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / 'runs' / 'a'
    with claim_folder(folder, 'run folder') as claimed:
        assert claimed == folder and folder.is_dir()
        assert (folder / LOCK_FILE).read_text() == f'pid {os.getpid()} host {socket.gethostname()}\n'
        with pytest.raises(ValueError) as e:
            with claim_folder(folder, 'run folder'):
                pass
        msg = str(e.value)
        assert 'a: the run folder is in use by another process' in msg and f'pid {os.getpid()} on host' in msg
        assert '\n' not in msg
    assert not (folder / LOCK_FILE).exists()  # removed on release
    with claim_folder(folder):  # released on exit
        pass
    with pytest.raises(RuntimeError):
        with claim_folder(folder):
            raise RuntimeError('boom')
    with claim_folder(folder):  # released on an exception
        pass


def test_a_claim_refuses_a_linked_lock_file(tmp_path, outside):
    folder = tmp_path / 'f'
    folder.mkdir()
    os.symlink(outside, folder / LOCK_FILE)
    with pytest.raises(ValueError, match='cannot claim the folder .its .lock is a symbolic link'):
        with claim_folder(folder):
            pass
    _unchanged(outside)


def test_a_claim_held_by_a_killed_process_is_free_again(tmp_path):
    folder = tmp_path / 'f'
    code = textwrap.dedent(f'''
        import sys, time
        from timm_alphanet.utils import claim_folder
        with claim_folder({str(folder)!r}):
            print('claimed', flush=True)
            time.sleep(60)
    ''')
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'claimed'
        with pytest.raises(ValueError, match=f'in use by another process .pid {proc.pid} on host'):
            with claim_folder(folder):
                pass
    finally:
        proc.kill()
        proc.wait()
    with claim_folder(folder):  # the kernel dropped the dead process's flock
        assert (folder / LOCK_FILE).read_text().startswith(f'pid {os.getpid()} ')


def test_a_resume_of_a_run_still_training_is_refused(tmp_path, capsys):
    from test_train_run import COMMON, TINY_SPACE
    import yaml
    from timm_alphanet.cli.train import main as train_main

    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump({'space': TINY_SPACE, 'dataset': 'sklearn/digits'}))
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore',
               TIMM_ALPHANET_CACHE=str(tmp_path / 'cache'))
    env.pop('WORLD_SIZE', None)
    args = ['-c', str(cfg), *COMMON, '-b', '128', '--checkpoint-interval', '2', '--checkpoint-hist', '1000',
            '--output', str(tmp_path)]
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *args, '--epochs', '500', '--experiment', 'a'],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = tmp_path / 'a' / 'checkpoints' / 'step_00000002'
        deadline = time.time() + 180
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, 'the run ended before a second one could try its folder'
        os.environ['TIMM_ALPHANET_CACHE'] = env['TIMM_ALPHANET_CACHE']
        try:
            with pytest.raises(SystemExit, match='2'):
                train_main([*args, '--epochs', '500', '--resume', str(first)])
        finally:
            os.environ.pop('TIMM_ALPHANET_CACHE')
        err = capsys.readouterr().err
        assert proc.poll() is None, 'the first run ended while the second tried its folder'
        assert f'the run folder is in use by another process (pid {proc.pid} on host' in err, err[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope='module')
def supernet_dir(tmp_path_factory):
    from timm_alphanet.testing.tiny import tiny_supernet

    folder = tmp_path_factory.mktemp('supernet') / 'supernet'
    save_pretrained(tiny_supernet(), folder)
    return folder


def test_export_into_a_claimed_folder_is_refused(tmp_path, supernet_dir, capsys):
    from timm_alphanet.cli.export import main as export_main

    out = tmp_path / 'out'
    with claim_folder(out, 'export output folder'):
        with pytest.raises(SystemExit, match='2'):
            export_main([str(supernet_dir), '--arch', 'min', '--output', str(out), '--no-calib', '--no-progress',
                         '--no-latency'])
        err = capsys.readouterr().err
        assert f'the export output folder is in use by another process (pid {os.getpid()} on host' in err
    assert export_main([str(supernet_dir), '--arch', 'min', '--output', str(out), '--no-calib', '--no-progress',
                        '--no-latency']) == 0  # the lock file alone does not make the folder "not empty"
    assert [p.name for p in out.iterdir()] == ['alphanet_min']  # no lock file left behind


@pytest.fixture(scope='module')
def search_args(tmp_path_factory, supernet_dir):
    from timm_alphanet.data import build_digits_folder

    digits = build_digits_folder(tmp_path_factory.mktemp('digits') / 'digits')
    return [str(supernet_dir), '--dataset', 'sklearn/digits', '--data-dir', str(digits), '--population', '4',
            '--generations', '1', '--calib-images', '16', '--selection-images', '16', '--calib-batch-size', '16',
            '--batch-size', '16', '--no-progress']


def test_search_refuses_a_linked_candidates_file_and_a_claimed_folder(tmp_path, outside, search_args, capsys):
    from timm_alphanet.cli.search import main as search_main

    for i, target in enumerate([outside, outside.parent / 'not_there.jsonl']):  # a link, then a dangling one
        out = tmp_path / f'out{i}'
        out.mkdir()
        os.symlink(target, out / 'candidates.jsonl')
        for resume in ([], ['--resume']):
            with pytest.raises(SystemExit, match='2'):
                search_main([*search_args, '--output', str(out), *resume])
            err = capsys.readouterr().err
            assert 'candidates.jsonl: is a symbolic link' in err, err[-2000:]
        assert not (outside.parent / 'not_there.jsonl').exists() and not (out / 'pareto.json').exists()
    _unchanged(outside)
    out = tmp_path / 'claimed'
    with claim_folder(out, 'search output folder'):
        with pytest.raises(SystemExit, match='2'):
            search_main([*search_args, '--output', str(out)])
        err = capsys.readouterr().err
        assert f'the search output folder is in use by another process (pid {os.getpid()} on host' in err
    assert not (out / 'pareto.json').exists()


# ---- a training run's writers (args.yaml, summaries, checkpoint JSON) and the readers that take its folders
def test_run_folder_writers_replace_links_and_readers_read_only_regular_files(tmp_path, outside):
    """A resumed run rewrites args.yaml, summary.json/.csv, checkpoints/index.json and writes a checkpoint's
    train_state.json and manifest.json: links planted at each (and at their guessable temp names, and a linked
    staging folder) are replaced, never written through. The readers of a checkpoint folder follow links (a Hub
    cache is made of them) but read only regular files, bounded: a link to a device is refused naming the file."""
    from test_train_build import _cfg
    from timm_alphanet.data import build_digits_folder
    from timm_alphanet.train import run
    from timm_alphanet.train.checkpoint import TrainState, find_checkpoint, load_checkpoint_extras
    from timm_alphanet.train.run import plan_run

    digits = str(build_digits_folder(tmp_path / 'digits'))
    cfg = _cfg(digits, batch_size=256, epochs=2, max_train_steps=1, output=str(tmp_path), experiment='r')
    run(cfg)
    folder = tmp_path / 'r'
    ckpts = folder / 'checkpoints'
    targets = [folder / 'args.yaml', folder / 'summary.json', folder / 'summary.csv']
    for target in targets:
        if target.exists():
            target.unlink()
        _plant(target, outside)
    _plant(ckpts / 'index.json', outside)  # the index is read on resume: links at its temp names only
    outside_dir = outside.parent / 'staging'
    outside_dir.mkdir()
    os.symlink(outside_dir, ckpts / '.tmp-step_00000005')  # the staging folder of the checkpoint to come
    run(cfg.replace(resume=str(folder), max_train_steps=0))  # to the end of epoch 2 (5 steps each)
    for target in [*targets, ckpts / 'index.json']:
        _writes_replace_the_link(target, outside)
    assert list(outside_dir.iterdir()) == [] and (ckpts / 'step_00000005' / 'train_state.json').is_file()
    assert not (ckpts / 'step_00000005' / 'manifest.json').is_symlink()

    ckpt = find_checkpoint(folder)
    for name in ('train_state.json', 'random_states_0.pkl'):
        shutil.copy(ckpt / name, tmp_path / name)
        (ckpt / name).unlink()
        os.symlink('/dev/zero', ckpt / name)  # endless: read only after checking it is a regular file
        with pytest.raises(ValueError, match=f'{ckpt / name}: not a regular file'):
            load_checkpoint_extras(ckpt, TrainState())
        (ckpt / name).unlink()
        shutil.copy(tmp_path / name, ckpt / name)
    (folder / 'args.yaml').unlink()
    os.symlink('/dev/zero', folder / 'args.yaml')
    with pytest.raises(ValueError, match=f'{folder / "args.yaml"}: not a regular file'):
        plan_run(cfg.replace(resume=str(folder)), 1)


def test_model_folder_readers_follow_links_to_regular_files_only(tmp_path, supernet_dir):
    from timm_alphanet.utils import check_model_dir

    folder = tmp_path / 'model'
    folder.mkdir()
    for name in ('config.json', 'model.safetensors'):  # as in a Hub cache snapshot: links to the blobs
        os.symlink(supernet_dir / name, folder / name)
    assert check_model_dir(folder)['architecture'] == 'alphanet_supernet'
    for name in ('config.json', 'model.safetensors'):
        (folder / name).unlink()
        os.symlink('/dev/zero', folder / name)
        with pytest.raises(ValueError, match=f'{folder / name}: not a regular file'):
            check_model_dir(folder)
        (folder / name).unlink()
        os.symlink(supernet_dir / name, folder / name)
