"""train.py end to end on tiny spaces and data (digits at 16 px): configs, KD, resume after SIGKILL, NaN guard,
and two CPU processes over gloo (torchrun) against one process with the doubled batch."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
TINY_SPACE = {
    'resolutions': [16],
    'first_conv': {'c': [8], 's': 2},
    'mb1': {'c': [8], 'd': [1, 2], 'k': [3], 't': [1], 's': 1},
    'mb2': {'c': [8, 16], 'd': [1, 2], 'k': [3], 't': [2, 3], 's': 2},
    'last_conv': {'c': [32]},
    'head_expand_ratio': 2,
}
COMMON = ['--no-aug', '--workers', '0', '--no-progress', '--bn-calib-batches', '2', '--lr', '0.1']


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    e = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore',
             TIMM_ALPHANET_CACHE=str(tmp_path_factory.mktemp('cache')))
    e.pop('WORLD_SIZE', None)
    return e


@pytest.fixture(scope='module')
def tiny_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny.yaml'
    path.write_text(yaml.safe_dump({'space': TINY_SPACE, 'dataset': 'sklearn/digits'}))
    return str(path)


def _train(args, env, launcher=(sys.executable,), check=True, timeout=240):
    p = subprocess.run([*launcher, str(ROOT / 'train.py'), *args], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f'train.py failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}')
    return p


def _weights(run_dir):
    final = Path(run_dir) / 'final'
    return load_file(str((final / 'supernet' if (final / 'supernet').is_dir() else final) / 'model.safetensors'))


def _assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_demo_config_is_the_builtin_default():
    from timm_alphanet.cli.train import parse_args
    from timm_alphanet.train import TrainConfig
    demo = ROOT / 'train_configs' / 'demo.yaml'
    assert parse_args([]) == parse_args(['-c', str(demo)]) == TrainConfig() == TrainConfig.from_yaml(demo)
    assert parse_args([]).to_dict() == parse_args(['-c', str(demo)]).to_dict()


def test_configs_parse_and_reject_unknown_keys(tmp_path):
    from timm_alphanet.cli.train import parse_args
    for name in ('alphanet_supernet_in1k.yaml', 'kd_alpha_in1k.yaml'):
        parse_args(['-c', str(ROOT / 'train_configs' / name)])
    bad = tmp_path / 'bad.yaml'
    bad.write_text('batchsize: 3\n')
    with pytest.raises(ValueError, match='batchsize'):
        parse_args(['-c', str(bad)])


def test_supernet_run_learns_and_writes_outputs(tmp_path, env, tiny_cfg):
    p = _train(['-c', tiny_cfg, *COMMON, '-b', '64', '--epochs', '2', '--output', str(tmp_path),
                '--experiment', 'run'], env)
    run = tmp_path / 'run'
    assert (run / 'args.yaml').exists() and (run / 'summary.csv').exists() and (run / 'summary.json').exists()
    assert '| max |' in p.stdout and '| min |' in p.stdout
    last = yaml.safe_load((run / 'summary.json').read_text())[-1]
    assert last['max_top1'] > 25  # chance is 10%
    assert sorted(os.listdir(run / 'checkpoints')) == ['index.json', 'step_00000022', 'step_00000044']


def test_kd_with_local_dir_and_named_teacher(tmp_path, env):
    import timm
    teacher = timm.create_model('resnet10t', num_classes=10)
    from timm_alphanet import save_pretrained
    save_pretrained(teacher, tmp_path / 'teacher')
    from safetensors.torch import save_file
    save_file(teacher.state_dict(), str(tmp_path / 'teacher.safetensors'))
    common = [*COMMON, '--model', 'mobilenetv2_050', '--input-size', '3', '16', '16', '--max-train-steps', '3',
              '--epochs', '1', '-b', '32', '--output', str(tmp_path)]
    p = _train([*common, '--teacher', f'local-dir:{tmp_path / "teacher"}', '--experiment', 'a'], env)
    assert 'KD training' in p.stdout
    _train([*common, '--teacher', 'resnet10t', '--teacher-pretrained-path', str(tmp_path / 'teacher.safetensors'),
            '--kd-loss', 'kl', '--experiment', 'b'], env)
    assert (tmp_path / 'b' / 'final' / 'model.safetensors').exists()


def test_resume_after_sigkill_gives_the_same_weights(tmp_path, env, tiny_cfg):
    args = ['-c', tiny_cfg, *COMMON, '-b', '128', '--epochs', '2', '--checkpoint-interval', '3',
            '--output', str(tmp_path)]
    _train([*args, '--experiment', 'full'], env)
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *args, '--experiment', 'killed'], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / 'killed' / 'checkpoints' / 'step_00000003'
    deadline = time.time() + 180
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / 'killed' / 'final').exists()
    p = _train([*args, '--resume', str(tmp_path / 'killed')], env)
    assert 'resumed from' in p.stdout
    _assert_same_weights(_weights(tmp_path / 'full'), _weights(tmp_path / 'killed'))


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path, env, tiny_cfg):
    p = _train(['-c', tiny_cfg, *COMMON, '-b', '64', '--epochs', '1', '--lr', '1e30', '--max-nonfinite', '2',
                '--output', str(tmp_path), '--experiment', 'nan'], env, check=False)
    assert p.returncode != 0
    assert 'non-finite loss' in p.stdout and 'stopped: 2 non-finite losses in a row' in p.stderr


@pytest.mark.parametrize('launcher', ['torchrun', 'accelerate'])
def test_two_processes_equal_one_with_double_batch(tmp_path, env, tiny_cfg, launcher):
    args = ['-c', tiny_cfg, *COMMON, '--epochs', '1', '--max-train-steps', '4', '--sync-bn', '--output',
            str(tmp_path)]
    cmd = ([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2'] if launcher == 'torchrun' else
           [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
            '--num_machines', '1', '--main_process_port', '0', '--mixed_precision', 'no', '--dynamo_backend', 'no'])
    p = _train([*args, '-b', '16', '--experiment', 'two'], env, launcher=cmd)
    assert '2 processes agree: same subnet sequence' in p.stdout and 'on 2 process(es)' in p.stdout
    if launcher == 'torchrun':  # the reference run once is enough
        _train([*args, '-b', '32', '--experiment', 'one'], env)
        _assert_same_weights(_weights(tmp_path / 'one'), _weights(tmp_path / 'two'), atol=1e-5)


def test_two_processes_stopped_mid_epoch_with_checkpoints_agree_without_sync_bn(tmp_path, env, tiny_cfg):
    """A max_train_steps stop that falls on a checkpoint step: every process must decide alike whether to save
    (a collective call), and the BN statistics each process updated from its own batches are made equal."""
    args = ['-c', tiny_cfg, *COMMON, '--epochs', '1', '--max-train-steps', '4', '--checkpoint-interval', '2', '-b',
            '16', '--output', str(tmp_path), '--experiment', 'two']
    p = _train(args, env, launcher=[sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2'])
    assert '2 processes agree: same subnet sequence' in p.stdout and 'stopped at max_train_steps 4' in p.stdout
    assert (tmp_path / 'two' / 'checkpoints' / 'step_00000004').is_dir()
