"""Unit tests of the training library pieces that need no training run."""
import json
from pathlib import Path

import pytest

from timm_alphanet.train import CheckpointManager, TrainState, build_digits_folder, find_checkpoint


class _FakeAccelerator:
    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / 'random_states_0.pkl').write_bytes(b'x')


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
