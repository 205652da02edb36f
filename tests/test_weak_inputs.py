"""Correct outcomes with the wrong experience (issue 20, "Weak today"): each input class ends in one line naming the
file or value, or is handled, instead of a traceback or a dead end.

- a run killed before its first checkpoint: a rerun reclaims its folder (the flock shows no live holder), and
  ``--resume`` of it says so instead of pointing back at a rerun;
- a read-only output folder is refused before the slow work (training, search, export: the one check,
  `utils.check_writable_folder`), a full disk while exporting names the file and leaves no half-written folder;
- an image PIL refuses as a decompression bomb is skipped with a warning, like a corrupt one;
- model folder configs: an unknown or mismatched architecture, ``features_only``, only pickled weights, a huge
  ``num_classes``;
- a frozen teacher whose logits are NaN/+inf or all -inf in a row is refused naming the rows;
- Accelerate's ``random_states_*.pkl`` are read by our restricted reader before ``--resume`` hands them to Accelerate.
"""
import errno
import json
import logging
import math
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
import torch

from timm_alphanet import save_pretrained
from timm_alphanet.train import run
from timm_alphanet.train.checkpoint import TrainState, load_checkpoint_extras
from timm_alphanet.train.run import plan_run
from timm_alphanet.utils import LOCK_FILE, check_model_dir, check_writable_folder, claim_folder
from timm_alphanet.testing.hostile import numpy_object_array, run_bounded, write_hostile_rng_state

from test_train_build import _cfg, digits  # noqa: F401  (fixtures)


def _one_line(text):
    return '\n' not in text.strip() and 'Traceback' not in text


# ---- a run killed before its first checkpoint
def _killed_before_first_checkpoint(folder: Path, cfg) -> None:
    """What `run` leaves when killed between its first write and its first checkpoint: the claim's unlocked lock
    file, args.yaml, and a checkpoints/ folder with only a partial checkpoint (its .tmp- staging folder)."""
    (folder / 'checkpoints' / '.tmp-step_00000001').mkdir(parents=True)
    (folder / 'checkpoints' / '.tmp-step_00000001' / 'model.safetensors').write_bytes(b'partial')
    (folder / 'args.yaml').write_text(cfg.to_yaml())
    (folder / LOCK_FILE).write_text('pid 999999 host elsewhere\n')


def test_a_run_killed_before_its_first_checkpoint_is_reclaimed_by_a_rerun(tmp_path, digits, caplog):  # noqa: F811
    cfg = _cfg(digits, batch_size=256, epochs=1, max_train_steps=1, output=str(tmp_path), experiment='r')
    folder = tmp_path / 'r'
    _killed_before_first_checkpoint(folder, cfg)
    assert plan_run(cfg, 1).run_dir == folder  # a rerun is planned into it ...
    with pytest.raises(FileNotFoundError, match='this run stopped before its first checkpoint, so there is nothing '
                                                'to resume; start it again without --resume'):
        plan_run(cfg.replace(resume=str(folder)), 1)  # ... and --resume points there, not back at --resume
    with claim_folder(folder, 'run folder'):  # a run that is alive (it holds the claim) is never reclaimed
        with pytest.raises(ValueError, match=f'the run folder is in use by another process \\(pid {os.getpid()}'):
            run(cfg)
    assert (folder / 'checkpoints' / '.tmp-step_00000001').is_dir()
    with caplog.at_level(logging.WARNING):
        run(cfg)
    assert 'holds a run stopped before its first checkpoint (nothing to resume from); starting it again' in caplog.text
    names = sorted(p.name for p in (folder / 'checkpoints').iterdir())
    assert names == ['index.json', 'step_00000001'] and (folder / 'final').is_dir()
    with pytest.raises(ValueError, match='already holds a run; continue it with --resume'):
        plan_run(cfg, 1)  # with a checkpoint it is a run to continue again
    other = tmp_path / 'other'
    _killed_before_first_checkpoint(other, cfg)
    (other / 'notes.txt').write_text('mine')  # not something a run writes: the folder is not ours to clear
    with pytest.raises(ValueError, match='already holds a run'):
        plan_run(cfg.replace(experiment='other'), 1)


# ---- read-only output folders, refused before the slow work
NOBODY = 65534


@pytest.fixture
def read_only(digits):  # noqa: F811
    """A read-only folder (and world-readable inputs), with a runner that calls a function as a user it binds: the
    tests run as root in some places, where mode bits do not stop writes, so then the call runs in a forked child
    that has dropped to uid/gid 65534."""
    base = Path(tempfile.mkdtemp(prefix='alphanet-ro-'))
    os.chmod(base, 0o755)
    data = base / 'digits'
    shutil.copytree(digits, data)
    (base / 'mpl').mkdir(mode=0o777)
    os.chmod(base / 'mpl', 0o777)
    ro = base / 'ro'
    ro.mkdir()
    os.chmod(ro, 0o555)

    def call(fn, *args):
        if os.geteuid() != 0:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001
                return type(e).__name__, str(e)
            return 'returned', ''

        def unprivileged():
            os.environ['MPLCONFIGDIR'] = str(base / 'mpl')  # matplotlib's cache: not root's home
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            return fn(*args)
        out = run_bounded(unprivileged, memory_mb=4096)
        return ('returned', '') if out.kind == 'returned' else ((out.exc_type or out.kind).split('.')[-1], out.message)
    yield ro, str(data), call
    os.chmod(ro, 0o755)
    shutil.rmtree(base, ignore_errors=True)


def test_check_writable_folder_names_a_read_only_folder(read_only):
    ro, _, call = read_only
    kind, message = call(check_writable_folder, ro / 'new' / 'out', 'export output folder')
    assert kind == 'ValueError' and _one_line(message), message
    assert message.startswith(f'{ro}/new/out: cannot write the export output folder there (it would be created in '
                              f'{ro}): Permission denied'), message
    writable = ro.parent / 'writable'
    writable.mkdir(mode=0o777)
    os.chmod(writable, 0o777)
    assert call(check_writable_folder, writable / 'new', 'x') == ('returned', '')
    assert list(writable.iterdir()) == []  # the probe file is gone


def test_training_and_export_refuse_a_read_only_output_before_reading_data(read_only):
    from timm_alphanet.export.folder import check_output_folder

    ro, data, call = read_only
    cfg = _cfg(data, output=str(ro / 'runs'), experiment='e')
    kind, message = call(plan_run, cfg, 1)  # plan_run runs before the dataset, the model and any calibration
    assert kind == 'ValueError' and 'runs: cannot write the training output folder there' in message, message
    kind, message = call(check_output_folder, ro / 'out')  # alphanet-export's first check, before calibration
    assert kind == 'ValueError' and 'out: cannot write the output folder there' in message, message


def test_search_refuses_a_read_only_output_before_scoring(read_only, monkeypatch):
    from timm_alphanet.search import runner
    from timm_alphanet.search.runner import SearchConfig, run_search
    from timm_alphanet.search.evolution import EvolutionConfig
    from timm_alphanet.data import open_image_dataset
    from timm_alphanet.calibration import recipe_for
    from timm_alphanet.testing.tiny import tiny_supernet

    ro, data, call = read_only
    supernet = tiny_supernet()
    recipe = recipe_for(supernet, num_images=8, batch_size=8)
    dataset = open_image_dataset('', data, 'train')
    dataset.transform = recipe.transform()

    def scoring(*args, **kwargs):
        raise AssertionError('scored before the output folder was checked')
    monkeypatch.setattr(runner.Scorer, 'from_data', scoring)
    config = SearchConfig(evolution=EvolutionConfig(population=4, generations=1), calibration=recipe,
                          selection_images=8)
    kind, message = call(run_search, supernet, dataset, str(ro / 'search'), config)
    assert kind == 'ValueError' and 'search: cannot write the search output folder there' in message, message


# ---- a full disk while exporting
def test_a_full_disk_while_exporting_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from timm_alphanet.cli.export import main as export_main
    from timm_alphanet.export import folder as folder_module
    from timm_alphanet.testing.tiny import tiny_supernet
    from timm_alphanet.utils import files

    save_pretrained(tiny_supernet(), tmp_path / 'supernet')
    real = folder_module.write_atomic

    def no_space(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')

    def full_disk(path, data):  # the card's bytes are written, then the disk is full when they are synced
        with monkeypatch.context() as m:
            if Path(path).name == 'README.md':
                m.setattr(files.os, 'fsync', no_space)
            real(path, data)
    monkeypatch.setattr(folder_module, 'write_atomic', full_disk)
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_:
        export_main([str(tmp_path / 'supernet'), '--arch', 'min', '--output', str(out), '--no-calib',
                     '--no-progress', '--no-latency'])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and _one_line(err), err
    assert (f'alphanet-export: error: {out}/alphanet_min/README.md: no space left on its device; '
            f'{out}/alphanet_min was not written (its partial copy was removed)') in err
    assert not out.exists() or [p.name for p in out.iterdir()] == []  # nothing half-written, no staging folder


def test_write_atomic_names_the_file_on_a_full_disk(tmp_path, monkeypatch):
    from timm_alphanet.utils import files

    target = tmp_path / 'args.yaml'
    target.write_text('old')

    def no_space(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(files.os, 'fsync', no_space)
    with pytest.raises(OSError) as e:
        files.write_atomic(target, 'new')
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert e.value.strerror == f'{target}: no space left on its device; it was not written (the file is as it was)'
    assert target.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['args.yaml']


# ---- decompression bombs in training data
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels (a few dozen bytes: PIL reads the header first)."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)) \
        + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b'')


def test_a_decompression_bomb_is_skipped_with_a_warning_like_a_corrupt_image(tmp_path, caplog):
    from PIL import Image
    from timm_alphanet.data import open_image_dataset

    for c in 'ab':
        (tmp_path / 'train' / c).mkdir(parents=True)
        for i in range(2):
            Image.new('RGB', (8, 8), (60 * i, 0, 0)).save(tmp_path / 'train' / c / f'{i}.png')
    (tmp_path / 'train' / 'a' / '0.png').write_bytes(_png_header(20000, 20000))  # 4e8 pixels
    (tmp_path / 'train' / 'b' / '0.png').write_bytes(b'not an image')  # a corrupt one, for comparison
    dataset = open_image_dataset('', tmp_path, 'train')
    with caplog.at_level(logging.WARNING):
        samples = [dataset[i] for i in range(len(dataset))]
    assert [s[1] for s in samples] == [0, 0, 1, 1]  # each bad one replaced by the next sample
    assert all(s[0].size == (8, 8) for s in samples)
    assert 'Skipped sample (index 0)' in caplog.text and 'a/0.png: Image size (400000000 pixels) exceeds limit' \
        in caplog.text and 'Skipped sample (index 2)' in caplog.text


# ---- model folder configs
@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    from timm_alphanet.testing.tiny import tiny_supernet

    folder = tmp_path_factory.mktemp('model') / 'supernet'
    save_pretrained(tiny_supernet(), folder)
    return folder


def _variant(base, tmp_path, edit=None, files=None):
    folder = tmp_path / 'variant'
    shutil.copytree(base, folder)
    config = json.loads((folder / 'config.json').read_text())
    if edit:
        edit(config)
    (folder / 'config.json').write_text(json.dumps(config))
    if files:
        files(folder)
    return folder


def _to_pickle(folder):
    from safetensors.torch import load_file
    torch.save(load_file(str(folder / 'model.safetensors')), folder / 'pytorch_model.bin')
    (folder / 'model.safetensors').unlink()


CONFIG_CASES = [
    ('unknown', lambda c: c.update(architecture='no_such_model'), None,
     r"config\.json: architecture 'no_such_model' is not a model timm knows"),
    ('another', lambda c: c.update(architecture='resnet18'), None,
     r"config\.json: architecture 'resnet18' does not take the search space / arch its model_args hold"),
    ('not-a-name', lambda c: c.update(architecture=['x']), None, r'config\.json: architecture must be a model name'),
    ('features', lambda c: c.update(features_only=True), None, r'config\.json: features_only is not allowed'),
    ('features-args', lambda c: c['model_args'].update(features_only=True), None,
     r'config\.json: model_args\.features_only is not allowed'),
    ('classes', lambda c: c.update(num_classes=10 ** 9), None,
     r'config\.json: num_classes must be a whole number from 0 to 1000000, got 1000000000'),
    ('classes-args', lambda c: c['model_args'].update(num_classes=10 ** 9), None,
     r'config\.json: model_args\.num_classes must be a whole number from 0 to 1000000'),
    ('classes-cfg', lambda c: c['pretrained_cfg'].update(num_classes=-1), None,
     r'config\.json: pretrained_cfg\.num_classes must be a whole number'),
    ('classes-mismatch', lambda c: c.update(num_classes=1000), None,
     r'config\.json: num_classes 1000 does not match the weights \(classifier\.weight has 10 rows\)'),
]


@pytest.mark.parametrize('case', CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_model_folder_configs_are_refused_in_one_line(model_dir, tmp_path, case):
    import timm
    from timm_alphanet.sources import load_supernet

    _, edit, files, pattern = case
    folder = _variant(model_dir, tmp_path, edit, files)
    with pytest.raises(ValueError, match=pattern) as e:
        check_model_dir(folder)
    assert _one_line(str(e.value)) and len(str(e.value)) < 500
    # what export and search open supernets with (a folder without model.safetensors is no supernet to it)
    with pytest.raises(ValueError, match=pattern if files is None else 'no supernet in this folder'):
        load_supernet(f'local-dir:{folder}')
    assert timm.is_model('alphanet_supernet')


def test_a_folder_with_only_timms_pickled_weights_is_a_teacher_but_no_supernet(model_dir, tmp_path):
    import timm
    from timm_alphanet.sources import load_supernet
    from timm_alphanet.task import AlphaDistillationTask

    folder = _variant(model_dir, tmp_path, files=_to_pickle)  # what timm's save_for_hf writes by default
    check_model_dir(folder)  # timm reads pytorch_model.bin with torch.load(weights_only=True)
    task = AlphaDistillationTask(timm.create_model('mobilenetv2_050', num_classes=10), f'local-dir:{folder}')
    assert task.teacher.model.num_classes == 10
    with pytest.raises(ValueError, match=r'no supernet in this folder') as e:
        load_supernet(f'local-dir:{folder}')
    assert _one_line(str(e.value)) and len(str(e.value)) < 500


def test_model_args_from_a_hub_config_are_bounded_too(model_dir):
    from timm_alphanet.utils.model_dir import check_saved_model_args

    assert check_model_dir(model_dir)['architecture'] == 'alphanet_supernet'  # a folder as saved passes

    with pytest.raises(ValueError, match='hf-hub:o/r config.json: model_args.num_classes must be a whole number'):
        check_saved_model_args({'num_classes': 10 ** 9}, 'hf-hub:o/r config.json')
    with pytest.raises(ValueError, match='model_args.out_indices is not allowed'):
        check_saved_model_args({'out_indices': [1]}, 'hf-hub:o/r config.json')


# ---- a frozen teacher's unusable logits
@pytest.mark.parametrize('bad', ['nan', '+inf', 'all -inf'])
def test_teacher_logits_without_a_distribution_are_refused_naming_the_rows(bad):
    from timm.task import DistillationTeacher
    from timm_alphanet.task import AlphaDistillationTask, TeacherOutputError
    from timm_alphanet.testing.tiny import tiny_supernet

    class Broken(torch.nn.Module):
        num_classes = 10

        def forward(self, x):
            out = torch.zeros(x.shape[0], 10)
            if bad == 'all -inf':
                out[[1, 4]] = -math.inf
            else:
                out[[1, 4], 3] = math.nan if bad == 'nan' else math.inf
            out[0, :5] = -math.inf  # a masked class is fine
            return out

    student = tiny_supernet()
    task = AlphaDistillationTask(student, DistillationTeacher(Broken()), kd_loss='kl')
    with pytest.raises(TeacherOutputError, match=r'the teacher gave unusable logits for 2 of 6 images in this batch '
                                                 r'\(rows 1, 4\): NaN or \+inf, or no finite logit'):
        task(torch.randn(6, 3, 16, 16), torch.zeros(6, dtype=torch.long))


# ---- Accelerate's RNG state files on --resume
def test_a_forged_rng_state_file_is_refused_before_accelerate_reads_it(tmp_path, digits):  # noqa: F811
    cfg = _cfg(digits, batch_size=256, epochs=1, max_train_steps=1, output=str(tmp_path), experiment='r')
    run(cfg)
    ckpt = tmp_path / 'r' / 'checkpoints' / 'step_00000001'
    load_checkpoint_extras(ckpt, TrainState())  # what Accelerate wrote passes the restricted reader
    forged = tmp_path / 'forged'
    shutil.copytree(ckpt, forged)
    (forged / 'manifest.json').unlink()  # forged whole, or an older checkpoint: no hashes to compare
    write_hostile_rng_state(forged / 'random_states_0.pkl', numpy_object_array())  # object dtype, forged flags
    out = run_bounded(load_checkpoint_extras, forged, TrainState(), memory_mb=2048)
    assert out.kind == 'raised' and out.exc_type == 'builtins.ValueError', out
    assert out.message.startswith(f"{forged / 'random_states_0.pkl'}: not a random state file Accelerate wrote "
                                  "(refusing the numpy dtype 'O8'"), out.message
    assert _one_line(out.message) and len(out.message) < 600
    shutil.copy(ckpt / 'random_states_0.pkl', forged / 'random_states_0.pkl')
    torch.save({'step': 0, 'random_state': (3, (1,) * 3, None), 'numpy_random_seed': 0,
                'torch_manual_seed': torch.zeros(3, dtype=torch.uint8)}, forged / 'random_states_1.pkl')
    with pytest.raises(ValueError, match=r'random_states_1\.pkl: not a random state file Accelerate wrote'):
        load_checkpoint_extras(forged, TrainState())
