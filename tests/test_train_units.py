"""Unit tests of the training library pieces that need no training run."""
import errno
import json
import logging
from pathlib import Path

import pytest

from timm_alphanet.data import build_digits_folder
from timm_alphanet.train import CheckpointManager, TrainState, find_checkpoint
from timm_alphanet.train.checkpoint import load_checkpoint_extras


class _FakeAccelerator:
    is_main_process = True
    num_processes = 1

    def wait_for_everyone(self):
        pass

    def save_state(self, path):  # what Accelerate's save_state writes of the RNGs (the restricted reader checks it)
        import random

        import numpy as np
        import torch
        Path(path).mkdir(parents=True)
        torch.save({'step': 0, 'random_state': random.getstate(), 'numpy_random_seed': np.random.get_state(),
                    'torch_manual_seed': torch.get_rng_state()}, Path(path) / 'random_states_0.pkl')


def test_checkpoints_keep_last_k_plus_best_and_are_complete(tmp_path):
    m = CheckpointManager(_FakeAccelerator(), tmp_path / 'checkpoints', keep=2)
    for step, metric in [(1, 50.0), (2, 90.0), (3, None), (4, 60.0), (5, None)]:
        m.save(step, metric)
    names = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
    assert names == ['index.json', 'step_00000002', 'step_00000004', 'step_00000005']  # last 2 + best
    index = json.loads((tmp_path / 'checkpoints' / 'index.json').read_text())
    assert index['best']['name'] == 'step_00000002'
    assert find_checkpoint(tmp_path) == tmp_path / 'checkpoints' / 'step_00000005'
    (tmp_path / 'checkpoints' / '.tmp-step_00000009').mkdir()  # an interrupted save is never picked
    assert find_checkpoint(tmp_path).name == 'step_00000005'
    with pytest.raises(FileNotFoundError, match='nothing'):
        find_checkpoint(tmp_path / 'nothing')


def test_train_state_round_trip():
    s = TrainState()
    s.step, s.epoch, s.batch_in_epoch, s.subnet_digest, s.history = 7, 1, 3, 'ab', [{'epoch': 0, 'top1': 1.0}]
    t = TrainState()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()


def test_digits_folder(tmp_path):
    root = build_digits_folder(tmp_path / 'digits', size=16)
    train = sorted((root / 'train').iterdir())
    assert [p.name for p in train] == [str(i) for i in range(10)]
    n_train = sum(len(list(d.iterdir())) for d in train)
    n_val = sum(len(list(d.iterdir())) for d in (root / 'validation').iterdir())
    assert n_train + n_val == 1797 and 340 < n_val < 370
    assert build_digits_folder(tmp_path / 'digits', size=16) == root  # cached


def test_world_size_mismatch_refuses_to_start(monkeypatch):
    from timm_alphanet.train import check_world_size
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match=r'started 2 processes \(WORLD_SIZE\) but the Accelerator has 1'):
        check_world_size(1)
    check_world_size(2)
    monkeypatch.delenv('WORLD_SIZE')
    check_world_size(1)


class _FullDisk(_FakeAccelerator):
    """Writes part of a checkpoint, then fails the way torch.save does on a full disk (a bare RuntimeError)."""

    def __init__(self, error):
        self.error = error

    def save_state(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / 'model.safetensors').write_bytes(b'partial')
        raise self.error


@pytest.mark.parametrize('error', [OSError(errno.ENOSPC, 'No space left on device'),
                                   RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos')])
def test_full_disk_while_checkpointing_removes_the_partial_folder_and_names_it(tmp_path, monkeypatch, error):
    from timm_alphanet.train import checkpoint
    if isinstance(error, RuntimeError):  # torch's message says nothing: the free space tells
        monkeypatch.setattr(checkpoint.shutil, 'disk_usage', lambda p: type('U', (), {'free': 0})())
    m = CheckpointManager(_FullDisk(error), tmp_path / 'run' / 'checkpoints')
    with pytest.raises(OSError) as e:
        m.save(7)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value.strerror).startswith(f'no space left on {tmp_path / "run" / "checkpoints"}: checkpoint '
                                            'step_00000007 was not written')
    assert f'--resume {tmp_path / "run"}' in e.value.strerror
    assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()) == []  # no partial folder, no index


@pytest.mark.parametrize('low_space', [False, True])
def test_other_errors_while_checkpointing_stay_themselves(tmp_path, monkeypatch, low_space):
    from timm_alphanet.train import checkpoint
    if low_space:  # a nearly full disk does not turn every error into 'no space left'
        monkeypatch.setattr(checkpoint.shutil, 'disk_usage', lambda p: type('U', (), {'free': 0})())
    m = CheckpointManager(_FullDisk(KeyError('bug')), tmp_path / 'checkpoints')
    with pytest.raises(KeyError):
        m.save(1)
    assert not any((tmp_path / 'checkpoints').iterdir())


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    m = CheckpointManager(_FakeAccelerator(), tmp_path / 'checkpoints', keep=3)
    for step in (1, 2, 3):
        m.save(step)
    latest = tmp_path / 'checkpoints' / 'step_00000003'
    manifest = json.loads((latest / 'manifest.json').read_text())
    assert manifest['num_processes'] == 1 and set(manifest['files']) == {'random_states_0.pkl'}
    assert find_checkpoint(tmp_path) == latest
    (latest / 'random_states_0.pkl').write_bytes(b'')  # truncated after it was written
    with caplog.at_level(logging.WARNING):
        assert find_checkpoint(tmp_path) == tmp_path / 'checkpoints' / 'step_00000002'
    assert 'step_00000003 is damaged (random_states_0.pkl differs from what was saved)' in caplog.text
    with pytest.raises(ValueError, match=r'damaged checkpoint \(random_states_0.pkl differs'):
        find_checkpoint(latest)  # named directly: refused, not replaced
    (tmp_path / 'checkpoints' / 'step_00000002' / 'random_states_0.pkl').unlink()
    (tmp_path / 'checkpoints' / 'step_00000001' / 'manifest.json').write_text('{"files": 3}')
    with pytest.raises(ValueError, match='every checkpoint is damaged'):
        find_checkpoint(tmp_path)


class _OtherProcess(_FakeAccelerator):
    is_main_process = False

    def save_state(self, path):  # the main process writes the folder; the others only their RNG files
        pass


def test_every_process_knows_which_checkpoints_exist(tmp_path):
    """`has` decides whether a max_train_steps stop saves (a collective call): every process must answer alike."""
    main = CheckpointManager(_FakeAccelerator(), tmp_path / 'checkpoints', keep=2)
    other = CheckpointManager(_OtherProcess(), tmp_path / 'checkpoints', keep=2)
    for step in (2, 4, 6):
        main.save(step)
        other.save(step)
        assert main.has(step) and other.has(step)
    assert main.index == other.index and not other.has(2)  # pruned alike (keep 2)


def test_checkpoints_hold_the_train_state_as_json_and_a_forged_one_is_refused(tmp_path):
    state = TrainState()
    state.step, state.epoch, state.loss_sum, state.loss_steps = 7, 1, 3.5, 2
    m = CheckpointManager(_FakeAccelerator(), tmp_path / 'checkpoints', state=state)
    folder = m.save(7)
    assert not list(folder.glob('custom_checkpoint_*'))  # Accelerate would unpickle those with weights_only=False
    again = TrainState()
    load_checkpoint_extras(folder, again)
    assert again.state_dict() == state.state_dict()
    for forged in ('[]', '{"step": -1, "epoch": 0, "batch_in_epoch": 0, "nonfinite_in_row": 0, "history": []}',
                   '{"step": "x"}', '[' * 100000):
        (folder / 'train_state.json').write_text(forged)
        with pytest.raises(ValueError, match='train_state.json'):
            load_checkpoint_extras(folder, TrainState())
    (folder / 'train_state.json').unlink()
    with pytest.raises(ValueError, match='no train_state.json'):
        load_checkpoint_extras(folder, TrainState())


def test_resuming_an_older_checkpoint_forgets_the_later_ones(tmp_path):
    m = CheckpointManager(_FakeAccelerator(), tmp_path / 'checkpoints', keep=5)
    for step, metric in [(1, 10.0), (2, 30.0), (3, 20.0)]:
        m.save(step, metric)
    assert m.forget_after(1) == ['step_00000002', 'step_00000003']
    assert sorted(p.name for p in (tmp_path / 'checkpoints').glob('step_*')) == ['step_00000001']
    assert m.index['best']['name'] == 'step_00000001'
    reread = CheckpointManager(_FakeAccelerator(), tmp_path / 'checkpoints', keep=5)
    assert [e['name'] for e in reread.index['checkpoints']] == ['step_00000001']
    assert find_checkpoint(tmp_path).name == 'step_00000001'


def test_final_writes_each_arch_once_under_its_first_name():
    from timm_alphanet.spaces import WidthSpace
    from timm_alphanet.train.final import _unique
    space = WidthSpace((0.35, 0.5, 1.0))
    named = [('max', space.max_config()), ('min', space.min_config()), ('w0.35', space.validate(0.35)),
             ('w0.5', space.validate(0.5)), ('w1.0', space.validate(1.0)), ('max', space.validate(0.5))]
    assert [n for n, _ in _unique(named)] == ['max', 'min', 'w0.5']
