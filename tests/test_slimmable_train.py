"""Slimmable MobileNets through the trainer: --no-inplace-kd, per-width validation resolved by the model's width space,
the recipes, sync BN over the elastic BN, two gloo processes against one with the doubled batch, and resume."""
import os
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from timm_alphanet.evaluation import validate_subnets
from timm_alphanet.layers.dynamic import DynamicBatchNormAct2d
from timm_alphanet.layers.sync_bn import SyncDynamicBatchNormAct2d
from timm_alphanet.models.slimmable_mobilenet import SLIMMABLE_FAMILIES
from timm_alphanet.spaces import WidthConfig, WidthSpace
from timm_alphanet.data import build_digits_folder
from timm_alphanet.train import TrainConfig, build_accelerator, build_model, build_task, run, validation_archs

from test_train_run import COMMON, _assert_same_weights, _train, _weights, env  # noqa: F401 (env: a fixture)

ROOT = Path(__file__).resolve().parent.parent
TINY = {'widths': [0.5, 0.75, 1.0], 'resolutions': [16]}


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return str(build_digits_folder(tmp_path_factory.mktemp('data') / 'digits32'))


@pytest.fixture(scope='module')
def acc():
    return build_accelerator(TrainConfig())


def _cfg(digits, **changes):
    base = dict(model='slimmable_mobilenetv2_100', space=TINY, data_dir=digits, no_aug=True, batch_size=64,
                bn_calib_batches=2, lr=0.05, no_progress=True, workers=0)
    return TrainConfig(**{**base, **changes})


def test_same_seed_gives_timms_initial_weights_whatever_the_width_cache():
    """The per-width shapes come from timm models built on the meta device; building them (a cold cache) must not
    draw from the RNG, or the same seed would give another initialisation than with a warm cache."""
    from timm_alphanet.models import slimmable_mobilenet
    torch.manual_seed(0)
    reference = timm.create_model('mobilenetv1_100', num_classes=10).state_dict()  # timm's own, same seed
    for cold in (True, False):
        if cold:
            slimmable_mobilenet.width_shapes.cache_clear()
        torch.manual_seed(0)
        model = timm.create_model('slimmable_mobilenetv1_100', num_classes=10, space={'widths': [0.3, 0.6, 1.0]})
        for k, v in model.state_dict().items():
            assert torch.equal(v, reference[k]), k


def test_no_inplace_kd_flag_reaches_the_sandwich_task(acc, digits):
    from timm_alphanet.cli.train import parse_args
    assert TrainConfig().inplace_kd is True
    assert parse_args(['--no-inplace-kd']).inplace_kd is False and parse_args(['--inplace-kd']).inplace_kd is True
    for inplace_kd in (True, False):
        cfg = _cfg(digits, inplace_kd=inplace_kd)
        task = build_task(cfg, acc, build_model(cfg, acc, 10))
        assert task.inplace_kd is inplace_kd
        x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        out = task(x, y, 0, backward=lambda loss: loss.backward())
        assert ('kd_divergence' in out) is inplace_kd  # only in-place KD distils from the max width
    with pytest.raises(ValueError, match=r"inplace_kd: off \(--no-inplace-kd\) is for supernets; model "
                                         r"'mobilenetv2_050'"):
        build_model(TrainConfig(model='mobilenetv2_050', teacher='resnet10t', inplace_kd=False), acc, 10)


def test_the_demo_default_space_gives_way_to_the_models_own(acc):
    cfg = TrainConfig(model='slimmable_mobilenetv1_100')  # space left at the demo's AlphaNet default
    with torch.device('meta'):
        model = build_model(cfg, acc, 10)
    assert model.space == WidthSpace(SLIMMABLE_FAMILIES['mobilenetv1'].widths)
    with pytest.raises(ValueError, match=r"space: not a WidthSpace, the space of model 'slimmable_mobilenetv1_100'"):
        build_model(cfg.replace(space={**cfg.space, 'resolutions': [32]}), acc, 10)  # not the default: an error


def test_validation_archs_resolve_widths_by_the_models_space(acc, digits):
    text = _cfg(digits, eval_archs=('0.5', ' max', '{width: 0.75, resolution: 16}', '1'))
    mappings = _cfg(digits, eval_archs=('0.5', 'max', {'width': 0.75, 'resolution': 16}, '1.0'))
    model = build_model(text, acc, 10)
    named = validation_archs(text, model)
    assert named == validation_archs(mappings, model)  # CLI text and YAML mappings resolve alike
    assert named == [('max', WidthConfig(1.0, 16)), ('min', WidthConfig(0.5, 16)), ('w0.5', WidthConfig(0.5, 16)),
                     ('max', WidthConfig(1.0, 16)), ('w0.75', WidthConfig(0.75, 16)), ('w1.0', WidthConfig(1.0, 16))]
    two = _cfg(digits, space={'widths': [0.5, 1.0], 'resolutions': [16, 24]},
               eval_archs=('{width: 0.5, resolution: 24}',))
    assert validation_archs(two, build_model(two, acc, 10))[-1] == ('w0.5@24', WidthConfig(0.5, 24))
    for bad, message in (('0.6', r'eval_archs: .*width 0.6 not allowed; allowed: \[0.5, 0.75, 1.0\]'),
                         ('a3', r"eval_archs: unknown arch 'a3' for a WidthSpace; allowed: max, min"),
                         ('{width: 0.5, resolution: 32}', r'resolution 32 not allowed; allowed: \[16\]'),
                         ('[', r"eval_archs: unknown arch '\['"),
                         ('{width: [', r'eval_archs: arch text: not valid YAML')):
        with pytest.raises(ValueError, match=message):
            validation_archs(_cfg(digits, eval_archs=(bad,)), model)
    with pytest.raises(ValueError, match=r'ambiguous in a space with resolutions \[16, 24\]'):
        validation_archs(two.replace(eval_archs=('0.5',)), build_model(two, acc, 10))


def test_recipes_parse_and_validate_the_papers_widths(acc):
    from timm_alphanet.cli.train import parse_args
    counts = {'mobilenetv1': 11, 'mobilenetv2': 9}  # the paper's columns
    for family, n in counts.items():
        cfg = parse_args(['-c', str(ROOT / 'train_configs' / f'slimmable_{family}_in1k.yaml')])
        assert cfg.model == f'slimmable_{family}_100' and cfg.kd_loss == 'alpha' and cfg.inplace_kd
        assert parse_args(['-c', str(ROOT / 'train_configs' / f'slimmable_{family}_in1k.yaml'),
                           '--no-inplace-kd']).inplace_kd is False
        with torch.device('meta'):
            model = build_model(cfg, acc, 1000)
        names = [name for name, _ in validation_archs(cfg, model)]
        widths = [w for _, w in validation_archs(cfg, model)[2:]]
        assert names[:2] == ['max', 'min'] and len(widths) == n
        assert widths[0] == model.space.min_config() and widths[-1] == model.space.max_config()
        assert all(w.resolution == 224 for w in widths)


# where a recipe's data lives and how often it logs or saves: no effect on the result
_NOT_HYPER_PARAMETERS = {'model', 'dataset', 'train_split', 'val_split', 'workers', 'checkpoint_interval',
                         'checkpoint_hist', 'log_interval'}
_SOURCES = ('[US-Nets]', '[AlphaNet]', 'GUESS', '[ours]')


def _annotations(text):
    """{top-level key: its line, its indented continuation lines and the column-0 comments right above it}."""
    lines = text.splitlines()
    out = {}
    for i, line in enumerate(lines):
        if not line or line[0] in ' #':
            continue
        key = line.split(':', 1)[0]
        above = []
        j = i - 1
        while j >= 0 and lines[j].startswith('#'):
            above.append(lines[j])
            j -= 1
        below = []
        j = i + 1
        while j < len(lines) and lines[j].startswith(' '):
            below.append(lines[j])
            j += 1
        out[key] = '\n'.join([*above, line, *below])
    return out


def test_every_recipe_hyper_parameter_names_its_source_or_is_marked_a_guess():
    for family in ('mobilenetv1', 'mobilenetv2'):
        path = ROOT / 'train_configs' / f'slimmable_{family}_in1k.yaml'
        annotations = _annotations(path.read_text())
        assert set(annotations) == set(yaml.safe_load(path.read_text()))  # every key found
        assert len(annotations) > 40
        missing = [k for k, text in annotations.items()
                   if k not in _NOT_HYPER_PARAMETERS and not any(tag in text for tag in _SOURCES)]
        assert missing == [], f'{path.name}: no source or GUESS for {missing}'


def test_validate_subnets_evaluates_an_arch_listed_twice_once(acc, digits, monkeypatch):
    import timm_alphanet.evaluation as evaluation
    cfg = _cfg(digits)
    model = build_model(cfg, acc, 10).eval()
    calls = []
    real = evaluation.calibrate_bn
    monkeypatch.setattr(evaluation, 'calibrate_bn',
                        lambda m, *a, **k: calls.append(m.active_subnet) or real(m, *a, **k))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    archs = [('max', WidthConfig(1.0, 16)), ('min', WidthConfig(0.5, 16)), ('w0.5', WidthConfig(0.5, 16)),
             ('w1.0', WidthConfig(1.0, 16))]
    results = validate_subnets(acc, model, archs, batches, batches, 2)
    assert calls == [WidthConfig(1.0, 16), WidthConfig(0.5, 16)]
    assert results['min'] == results['w0.5'] and results['max'] == results['w1.0'] and results['max'] != results['min']
    assert model.active_subnet == WidthConfig(1.0, 16)


def test_sync_bn_covers_every_elastic_bn_of_the_slimmable_model(acc, digits):
    model = build_model(_cfg(digits, sync_bn=True), acc, 10)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) > 30 and all(type(m) is SyncDynamicBatchNormAct2d for m in bns)
    assert not any(type(m) is DynamicBatchNormAct2d for m in model.modules())


def test_run_validates_each_width_and_resumes_to_the_same_weights(tmp_path, digits):
    cfg = _cfg(digits, batch_size=128, epochs=2, output=str(tmp_path), eval_archs=('0.75',))
    full = run(cfg.replace(experiment='full'))
    assert set(full) == {'max', 'min', 'w0.75'} and full['max']['top1'] > 20  # chance: 10 %
    summary = yaml.safe_load((tmp_path / 'full' / 'summary.json').read_text())
    assert [row['step'] for row in summary] == [11, 22] and summary[-1]['w0.75_top1'] == full['w0.75']['top1']
    # a run stopped part-way through epoch 1 (after the epoch-0 checkpoint), then resumed from its run folder
    run(cfg.replace(experiment='cut', max_train_steps=15))
    resumed = run(cfg.replace(experiment='cut', resume=str(tmp_path / 'cut')))
    assert resumed == full
    _assert_same_weights(_weights(tmp_path / 'full'), _weights(tmp_path / 'cut'))


# ---- 2 processes x batch b == 1 process x batch 2b
def _sandwich_steps(rank, world, steps, out):
    """`steps` sandwich steps (SGD) of the tiny slimmable net in float64 on rank `rank` of `world` gloo processes
    (sync BN, DDP, the trainer's one backward per subnet), each on its share of one fixed batch; rank 0 saves."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from timm_alphanet.layers.sync_bn import convert_sync_dynamic_bn
    from timm_alphanet.task import SandwichTask
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(out[1]))
        dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.manual_seed(0)
    import timm
    model = timm.create_model('slimmable_mobilenetv2_100', space={'widths': [0.5, 0.75, 1.0], 'resolutions': [32]},
                              num_classes=10).double()
    if world > 1:
        assert convert_sync_dynamic_bn(model) > 30
        model = DistributedDataParallel(model, find_unused_parameters=True)
    task = SandwichTask(model, num_subnets=3, seed=0, kd_loss='alpha', verbose=False).train()
    opt = torch.optim.SGD(task.trainable_module.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, 3, 32, 32, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (16,), generator=g)
        share = slice(rank * 16 // world, (rank + 1) * 16 // world)
        opt.zero_grad()
        task(x[share], y[share], step, backward=lambda loss: loss.backward())
        opt.step()
    if rank == 0:
        torch.save(task.supernet.state_dict(), out[0])
    if world > 1:
        dist.destroy_process_group()


def test_sync_bn_ddp_sandwich_two_processes_equal_one_in_float64(tmp_path):
    """The arithmetic of a distributed sandwich step (sync BN over the elastic BN, per-subnet backward under DDP's
    no_sync, gradient averaging) checked exactly: in float64, where rounding cannot be amplified to a visible
    difference (in float32, full-depth MobileNets on small inputs amplify rounding to O(1) within two steps: one
    process in channels-last vs contiguous layout already differs that much)."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    mp.spawn(_sandwich_steps, args=(2, 2, (str(tmp_path / 'two.pt'), port)), nprocs=2)
    _sandwich_steps(0, 1, 2, (str(tmp_path / 'one.pt'), None))
    two, one = torch.load(tmp_path / 'two.pt'), torch.load(tmp_path / 'one.pt')
    start = _sandwich_start()
    moved = max((one[k] - start[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert moved > 1e-2  # the steps changed the weights
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-9, atol=1e-9, msg=k)


def _sandwich_start():
    import timm
    torch.manual_seed(0)
    return timm.create_model('slimmable_mobilenetv2_100', space={'widths': [0.5, 0.75, 1.0], 'resolutions': [32]},
                             num_classes=10).double().state_dict()


def _distance(a, b):
    keys = [k for k in a if a[k].is_floating_point() and 'running' not in k]
    return sum(((a[k] - b[k]) ** 2).sum() for k in keys).sqrt().item()


def test_train_py_two_processes_equal_one_with_double_batch(tmp_path, env):
    """train.py end to end (sharding, sync BN, DDP, the subnet sequence) on 2 gloo processes x batch 16 against one
    process x batch 32, one step in float32: equal up to float32 rounding (amplified by the net, see above), far
    closer than a one-process step on half the batch."""
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump({'model': 'slimmable_mobilenetv2_100', 'space': TINY, 'dataset': 'sklearn/digits'}))
    args = ['-c', str(path), *COMMON, '--lr', '0.01', '--epochs', '1', '--max-train-steps', '1', '--sync-bn',
            '--output', str(tmp_path)]
    two = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2']
    p = _train([*args, '-b', '16', '--experiment', 'two'], env, launcher=two)
    assert '2 processes agree: same subnet sequence' in p.stdout and 'on 2 process(es)' in p.stdout
    _train([*args, '-b', '32', '--experiment', 'one'], env)
    _train([*args, '-b', '16', '--experiment', 'half'], env)
    from timm_alphanet.cli.train import parse_args
    cfg = parse_args([*args, '-b', '32'])
    start = build_model(cfg, build_accelerator(cfg), 10).state_dict()
    one = _weights(tmp_path / 'one')
    update = _distance(one, start)
    assert update > 0
    assert _distance(_weights(tmp_path / 'two'), one) < 0.1 * update  # measured: ~1 %
    assert _distance(_weights(tmp_path / 'half'), one) > 0.3 * update  # another batch: a different step
    running = [k for k in one if 'running' in k]
    for k in running:  # the first forward is not yet chaotic: the BN statistics agree closely
        torch.testing.assert_close(_weights(tmp_path / 'two')[k], one[k], rtol=1e-3, atol=1e-4, msg=k)
