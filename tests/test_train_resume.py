"""Run folders and resume (issue "Harden", training items; issue "The first ten minutes", resume edge): a run
folder holds one run, default names are unique and `latest` follows the newest, a resume with other essentials is
refused naming them, resume is exact with augmentation on and any number of loader processes, a max_train_steps
stop leaves a checkpoint, more epochs continue on a recomputed schedule, a finished run says so, and two KD runs
with equal seeds are bit-identical."""
import importlib
import json
import os
import shutil

import pytest
import timm
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from timm_alphanet.data import open_image_dataset
from timm_alphanet.evaluation import validate_model
from timm_alphanet.train import TrainConfig, run
from timm_alphanet.train.run import plan_run

from test_train_build import _cfg, digits, teacher_dir  # noqa: F401  (fixtures)
from test_train_run import TINY_SPACE

run_module = importlib.import_module('timm_alphanet.train.run')  # `timm_alphanet.train.run` is also the function


def _supernet(folder):
    return load_file(str(folder / 'final' / 'supernet' / 'model.safetensors'))


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob('*'))


def test_resume_with_augmentation_is_exact_whatever_the_workers(tmp_path, digits):  # noqa: F811
    base = _cfg(digits, no_aug=False, batch_size=128, epochs=2, output=str(tmp_path))
    assert base.color_jitter > 0 and base.scale[0] < 1 and base.train_interpolation == 'random'
    run(base.replace(experiment='full'))
    run(base.replace(experiment='cut', max_train_steps=7))  # stops mid-epoch 0 (11 steps per epoch)
    assert (tmp_path / 'cut' / 'checkpoints' / 'step_00000007').is_dir()  # ... and leaves a checkpoint
    run(base.replace(experiment='cut', resume=str(tmp_path / 'cut'), workers=2))
    full, resumed = _supernet(tmp_path / 'full'), _supernet(tmp_path / 'cut')
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    # ... and so is what each epoch recorded: the resumed epoch's mean loss and its BN-calibrated validation
    rows = [[{k: v for k, v in r.items() if k != 'time_s'} for r in json.loads((tmp_path / name / 'summary.json')
             .read_text())] for name in ('full', 'cut')]
    assert len(rows[0]) == 2 and rows[0] == rows[1]


def test_more_epochs_continue_on_a_recomputed_schedule_and_a_finished_run_says_so(tmp_path, digits, capsys):  # noqa
    cfg = _cfg(digits, batch_size=256, epochs=1, warmup_epochs=0.0, output=str(tmp_path), experiment='r')
    run(cfg)  # 1442 // 256 = 5 steps
    folder = tmp_path / 'r'
    before, tree = _supernet(folder), _tree(folder / 'final')
    capsys.readouterr()
    assert run(cfg.replace(resume=str(folder))) == {}
    said = capsys.readouterr().out
    assert f'run {folder} is already finished (epoch 1, step 5: 1 epochs); nothing to train' in said
    assert f'{folder / "final" / "max"}  top1 ' in said and 'alphanet-search' in said
    assert _tree(folder / 'final') == tree  # its models are left alone
    run(cfg.replace(resume=str(folder), epochs=2))
    said = capsys.readouterr().out
    # cosine over 2 x 5 updates, at update 5: 0.1 * (1 + cos(pi / 2)) / 2; the 1-epoch schedule ended at min_lr 0
    assert ('the run was planned for 1 epochs, now 2: the cosine schedule is recomputed over 2 epochs, so lr '
            'continues at 0.05 (the 1-epoch schedule had reached 0)') in said
    after = _supernet(folder)
    assert not torch.equal(before['conv_stem.weight'], after['conv_stem.weight'])  # lr 0 would change nothing


def test_a_run_folder_holds_one_run_and_resume_keeps_its_essentials(tmp_path, digits):  # noqa: F811
    cfg = _cfg(digits, batch_size=256, epochs=1, max_train_steps=1, output=str(tmp_path), experiment='r')
    run(cfg)
    folder = tmp_path / 'r'
    tree = _tree(tmp_path)
    with pytest.raises(ValueError, match=f'run folder {folder} already holds a run; continue it with --resume'):
        run(cfg.replace(seed=1))
    other_space = {**TINY_SPACE, 'last_conv': {'c': [48]}}
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in space \{.*\} -> \{.*\}; batch_size 256 "
                                         r'-> 128\. Resume with the same'):
        run(cfg.replace(resume=str(folder), batch_size=128, space=other_space))
    ckpt = folder / 'checkpoints' / 'step_00000001'
    two = tmp_path / 'two' / 'checkpoints' / 'step_00000001'
    shutil.copytree(ckpt, two)
    shutil.copy(two / 'random_states_0.pkl', two / 'random_states_1.pkl')  # as if two processes had saved it
    with pytest.raises(ValueError, match='differs from the checkpoint\'s in processes 2 -> 1'):
        run(cfg.replace(resume=str(tmp_path / 'two'), experiment='', max_train_steps=0))
    with pytest.raises(ValueError, match="experiment: 'latest' is not allowed"):
        run(cfg.replace(experiment='latest'))
    shutil.rmtree(tmp_path / 'two')
    assert _tree(tmp_path) == tree  # every refusal came before anything was written
    plan = plan_run(cfg.replace(resume=str(folder), batch_size=128, allow_resume_changes=True), 1)
    assert plan.run_dir == folder and plan.resume_from == ckpt and plan.previous['batch_size'] == 256


def test_default_run_names_are_unique_and_latest_links_the_newest(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module.time, 'strftime', lambda fmt: '20250101-000000')  # two runs in one second
    cfg = TrainConfig(output=str(tmp_path), model='hf-hub:org/x')
    a, b = run_module._new_run_dir(cfg), run_module._new_run_dir(cfg)
    assert (a.name, b.name) == ('20250101-000000-hf-hub_org_x', '20250101-000000-hf-hub_org_x-2')
    for folder in (a, b):
        run_module._link_latest(folder, tmp_path)
        assert os.readlink(tmp_path / 'latest') == folder.name and (tmp_path / 'latest').resolve() == folder
    nested = tmp_path / 'group' / 'exp'  # --experiment group/exp: latest is still <output>/latest
    nested.mkdir(parents=True)
    run_module._link_latest(nested, tmp_path)
    assert (tmp_path / 'latest').resolve() == nested and not (tmp_path / 'group' / 'latest').exists()


def test_two_kd_runs_are_bit_identical_and_final_is_the_student_as_trained(tmp_path, digits, teacher_dir):  # noqa
    base = _cfg(digits, model='mobilenetv2_050', teacher=teacher_dir, input_size=(3, 16, 16), no_aug=False,
                batch_size=64, epochs=1, max_train_steps=6, output=str(tmp_path))
    run(base.replace(experiment='a'))
    run(base.replace(experiment='b', workers=2))
    a, b = load_file(str(tmp_path / 'a' / 'final' / 'model.safetensors')), \
        load_file(str(tmp_path / 'b' / 'final' / 'model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = timm.create_model(f'local-dir:{tmp_path / "a" / "final"}', pretrained=True)
    assert model.pretrained_cfg['input_size'] == (3, 16, 16) and model.num_classes == 10
    import json
    [recorded] = json.loads((tmp_path / 'a' / 'final' / 'config.json').read_text())['timm_alphanet']['results']
    again = validate_model(Accelerator(cpu=True), model, open_image_dataset('', digits, 'validation'), 'timm')
    assert again['top1'] == pytest.approx(recorded['top1'], abs=1e-5)  # the same images right, any batch size


def test_kd_with_ema_validates_it_writes_it_to_final_and_resumes_it(tmp_path, digits, teacher_dir):  # noqa: F811
    cfg = _cfg(digits, model='mobilenetv2_050', teacher=teacher_dir, input_size=(3, 16, 16), batch_size=128,
               epochs=1, model_ema=True, model_ema_decay=0.5, output=str(tmp_path), experiment='e')
    run(cfg)
    folder = tmp_path / 'e'
    [row] = json.loads((folder / 'summary.json').read_text())
    assert {'student_top1', 'ema_top1'} <= row.keys()
    [ckpt] = sorted((folder / 'checkpoints').glob('step_*'))
    ema, final = load_file(str(ckpt / 'ema.safetensors')), load_file(str(folder / 'final' / 'model.safetensors'))
    assert ema.keys() == final.keys() and all(torch.equal(ema[k], final[k]) for k in ema)
    raw = load_file(str(ckpt / 'model.safetensors'))
    assert not torch.equal(raw['conv_stem.weight'], final['conv_stem.weight'])  # the EMA, not the raw weights
    shutil.rmtree(folder / 'final')
    run(cfg.replace(resume=str(folder), epochs=2))
    assert len(json.loads((folder / 'summary.json').read_text())) == 2
