"""TrainConfig and the alphanet-train command line: the recipes' values, YAML round trips, and rejections that name
the bad key or value (unknown keys, wrong types, out-of-range values, oversized or broken files)."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from timm_alphanet.archs import ALPHANET_ARCHS, DEMO_SPACE
from timm_alphanet.cli.train import build_parser, main, parse_args
from timm_alphanet.spaces import SearchSpace
from timm_alphanet.train import TrainConfig, learning_rate
from timm_alphanet.train.config import MAX_CONFIG_BYTES

CONFIGS = Path(__file__).resolve().parent.parent / 'train_configs'


def _yaml(tmp_path, text, name='c.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_supernet_recipe_is_the_papers():
    cfg = TrainConfig.from_yaml(CONFIGS / 'alphanet_supernet_in1k.yaml')
    assert cfg.model == 'alphanet_supernet' and cfg.space is None  # the model's own: the paper's space
    assert cfg.eval_archs == tuple(ALPHANET_ARCHS)  # a0 .. a6 by name
    assert (cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.lr) == (32, 360, 5.0, None)
    assert learning_rate(cfg, num_processes=64) == pytest.approx(0.1 * 32 * 64 / 256)  # 0.1 per 256 images
    assert (cfg.opt, cfg.momentum, cfg.weight_decay, cfg.sched, cfg.smoothing) == ('sgd', 0.9, 1e-5, 'cosine', 0.1)
    assert (cfg.clip_grad, cfg.clip_mode, cfg.num_subnets, cfg.kd_loss) == (1.0, 'value', 4, 'alpha')
    assert (cfg.alpha_min, cfg.alpha_max, cfg.alpha_clip) == (-1.0, 1.0, 5.0)
    assert (cfg.drop, cfg.drop_path, cfg.bn_momentum, cfg.aa) == (0.2, 0.2, 0.0, 'v0')
    # values the recipe used to inherit from the old (non-demo) parser defaults
    assert (cfg.hflip, cfg.scale, cfg.workers, cfg.bn_calib_batches) == (0.5, (0.08, 1.0), 8, 64)
    assert cfg.mixed_precision == 'bf16' and not cfg.no_aug and cfg.channels_last


def test_kd_recipe_keeps_its_values():
    cfg = TrainConfig.from_yaml(CONFIGS / 'kd_alpha_in1k.yaml')
    assert (cfg.model, cfg.teacher, cfg.val_teacher) == ('mobilenetv2_050', 'resnet50.a1_in1k', True)
    assert (cfg.kd_weight, cfg.task_weight, cfg.kd_loss) == (1.0, 1.0, 'alpha')
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.weight_decay) == (128, 300, None, 4e-5)
    assert learning_rate(cfg, num_processes=8) == pytest.approx(0.1 * 128 * 8 / 256)
    assert (cfg.hflip, cfg.scale, cfg.aa, cfg.drop) == (0.5, (0.08, 1.0), 'rand-m9-mstd0.5', 0.2)
    assert (cfg.model_ema, cfg.model_ema_decay, cfg.workers, cfg.mixed_precision) == (True, 0.9998, 8, 'bf16')
    assert cfg.channels_last


def test_demo_defaults():
    cfg = TrainConfig()
    assert SearchSpace.from_dict(cfg.space) == SearchSpace.from_dict(DEMO_SPACE)
    assert (cfg.epochs, cfg.lr, cfg.hflip, cfg.scale, cfg.workers, cfg.dataset) == \
        (15, 0.2, 0.0, (0.5, 1.0), 0, 'sklearn/digits')
    assert cfg.channels_last  # measured faster through the trainer (benchmarks/train_throughput.py)
    assert learning_rate(cfg, num_processes=4) == 0.2  # an explicit lr is not scaled


@pytest.mark.parametrize('name', ['demo.yaml', 'alphanet_supernet_in1k.yaml', 'kd_alpha_in1k.yaml'])
def test_yaml_round_trip(tmp_path, name):
    cfg = TrainConfig.from_yaml(CONFIGS / name)
    again = TrainConfig.from_yaml(_yaml(tmp_path, cfg.to_yaml()))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # plain types only


def test_frozen_and_replace_validates():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3
    assert cfg.replace(epochs=3).epochs == 3 and cfg.epochs == 15
    with pytest.raises(ValueError, match='epochs: must be >= 1, got 0'):
        cfg.replace(epochs=0)


def test_space_file_becomes_its_content(tmp_path):
    space_file = _yaml(tmp_path, yaml.safe_dump({'supernet_config': DEMO_SPACE}), 'space.yaml')
    cfg = TrainConfig(space=space_file)
    assert cfg.space == {'supernet_config': DEMO_SPACE}  # args.yaml holds the space, not a path
    with pytest.raises(FileNotFoundError, match='nope.yaml'):
        TrainConfig(space=str(tmp_path / 'nope.yaml'))
    with pytest.raises(ValueError, match=r'space: .*list.yaml.* holds list, not a mapping'):
        TrainConfig(space=_yaml(tmp_path, '- 1\n', 'list.yaml'))


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(ValueError, match=r"c.yaml: unknown key 'batchsize' \(did you mean 'batch_size'\?\); keys "
                                         r"are the long flag names with underscores"):
        TrainConfig.from_yaml(_yaml(tmp_path, 'batchsize: 3\n'))


@pytest.mark.parametrize('text, match', [
    ('epochs: "10"', r"epochs: expected an integer, got '10'"),
    ('epochs: true', r'epochs: expected an integer, got True'),
    ('weight_decay: 1e-5', r"weight_decay: expected a number, got '1e-5' \(YAML reads 1e-5 as text"),
    ('lr: [0.1]', r'lr: expected a number or null'),
    ('scale: [0.5]', r'scale: expected a list of 2 \(a number\)'),
    ('no_aug: 1', r'no_aug: expected true or false, got 1'),
    ('eval_archs: [3]', r'eval_archs\[0\]: expected a string or a mapping, got 3'),
])
def test_wrong_types_name_the_key(tmp_path, text, match):
    with pytest.raises(TypeError, match=match):
        TrainConfig.from_yaml(_yaml(tmp_path, text + '\n'))


@pytest.mark.parametrize('changes, match', [
    (dict(lr=0.0), r'lr: must be a finite number in \(0, inf\), got 0.0'),
    (dict(lr=-1.0), r'lr: must be a finite number'),
    (dict(lr=math.nan), r'lr: must be a finite number'),
    (dict(lr_base=math.inf), r'lr_base: must be a finite number'),
    (dict(epochs=0), r'epochs: must be >= 1'),
    (dict(batch_size=0), r'batch_size: must be >= 1'),
    (dict(num_subnets=1), r'num_subnets: must be >= 2'),
    (dict(hflip=1.5), r'hflip: must be a finite number in \[0, 1\]'),
    (dict(smoothing=1.0), r'smoothing: must be a finite number in \[0, 1\)'),
    (dict(scale=(0.9, 0.1)), r'scale: needs 0 < low <= high <= 1, got \[0.9, 0.1\]'),
    (dict(std=(0.2, 0.0, 0.2)), r'std: needs 1 or 3 finite values > 0'),
    (dict(alpha_min=2.0, alpha_max=1.0), r'alpha_min must be <= alpha_max'),
    (dict(kd_loss='l2'), r"kd_loss: 'l2' is not allowed; choose from \['alpha', 'kl'\]"),
    (dict(sched='plateau'), r"sched: 'plateau' is not allowed"),
])
def test_out_of_range_values_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_config_file_reads_are_bounded_and_checked(tmp_path):
    big = tmp_path / 'big.yaml'
    big.write_bytes(b'# ' + b'x' * MAX_CONFIG_BYTES + b'\n')
    with pytest.raises(ValueError, match=r'big.yaml: too large for a training config \(\d+ bytes; at most 1048576\)'):
        TrainConfig.from_yaml(big)
    with pytest.raises(FileNotFoundError, match='missing.yaml'):
        TrainConfig.from_yaml(tmp_path / 'missing.yaml')
    with pytest.raises(ValueError, match=r'list.yaml: expected a mapping of option names'):
        TrainConfig.from_yaml(_yaml(tmp_path, '- 1\n- 2\n', 'list.yaml'))
    with pytest.raises(ValueError, match=r'broken.yaml: not valid YAML'):
        TrainConfig.from_yaml(_yaml(tmp_path, 'epochs: [1\n', 'broken.yaml'))
    bomb = 'a: &a [x, x, x, x, x, x, x, x, x, x]\n' + ''.join(
        f'{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n' for p, n in zip('abcdefg', 'bcdefgh'))
    with pytest.raises(ValueError, match='bomb.yaml'):  # a billion laughs: refused, not expanded
        TrainConfig.from_yaml(_yaml(tmp_path, bomb, 'bomb.yaml'))
    with pytest.raises(ValueError, match=r'dir: is a directory'):
        TrainConfig.from_yaml(tmp_path.joinpath('dir').mkdir() or tmp_path / 'dir')
    assert TrainConfig.from_yaml(_yaml(tmp_path, '', 'empty.yaml')) == TrainConfig()


def test_parser_has_one_flag_per_field_and_flags_override_yaml():
    dests = {a.dest for a in build_parser()._actions} - {'help', 'config'}
    assert dests == {f.name for f in dataclasses.fields(TrainConfig)}
    recipe = str(CONFIGS / 'alphanet_supernet_in1k.yaml')
    cfg = parse_args(['-c', recipe, '--lr', '0.5', '-b', '16', '--no-aug', '--eval-archs', 'a0', '--space', 'none'])
    assert (cfg.lr, cfg.batch_size, cfg.no_aug, cfg.eval_archs, cfg.epochs) == (0.5, 16, True, ('a0',), 360)
    assert parse_args(['--lr', 'none']).lr is None
    assert parse_args(['--no-aug', '--aug']).no_aug is False
    assert parse_args(['--channels-last']).channels_last is True
    assert parse_args(['--no-channels-last']).channels_last is False
    assert parse_args(['--torchcompile']).torchcompile == 'inductor'
    assert parse_args(['--input-size', '3', '16', '16']).input_size == (3, 16, 16)


def test_help_shows_the_defaults_of_the_config(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(['-c', str(CONFIGS / 'alphanet_supernet_in1k.yaml'), '--help'])
    assert e.value.code == 0
    out = ' '.join(capsys.readouterr().out.split())
    assert 'per-process batch size (default: 32)' in out and 'epochs to train (default: 360)' in out


def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys):
    bad = _yaml(tmp_path, 'epochs: "10"\n')
    with pytest.raises(SystemExit) as e:
        main(['-c', bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1
    assert err.startswith('alphanet-train: error: ') and "epochs: expected an integer, got '10'" in err
    with pytest.raises(SystemExit) as e:
        main(['--model', 'mobilenetv2_050', '--output', str(tmp_path / 'out')])  # KD needs a teacher
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'teacher KD needs a teacher' in err
    assert not (tmp_path / 'out').exists()  # refused before anything was written
