"""BN calibration against statistics computed directly in float64, on static models and supernet subnets."""
import os
import socket

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from timm_alphanet import calibrate_bn, extract_subnet

SMALL_SPACE = {
    'resolutions': [32, 48],
    'first_conv': {'c': [8, 16], 's': 2},
    'mb1': {'c': [8, 16], 'd': [1, 2], 'k': [3], 't': [1], 's': 1, 'se': False},
    'mb2': {'c': [16, 24], 'd': [1, 2], 'k': [3, 5], 't': [3, 4], 's': 2, 'se': True},
    'last_conv': {'c': [32, 48]},
}


def _batches(n, size=32, seed=0, bs=6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, size, size, generator=g) * 2 + 0.5, torch.zeros(bs, dtype=torch.long))
            for _ in range(n)]


def _direct_stats(model, batches):
    """Per BN: the average over batches of the float64 batch mean and unbiased batch variance of its input."""
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    sums = {n: [0, 0] for n in bns}
    seen = {}

    def hook(name):
        def fn(module, inputs):
            x = inputs[0].detach().double()
            c = x.shape[1]
            flat = x.transpose(0, 1).reshape(c, -1)
            sums[name][0] = sums[name][0] + flat.mean(1)
            sums[name][1] = sums[name][1] + flat.var(1, unbiased=True)
            seen[name] = seen.get(name, 0) + 1
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in bns.items()]
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in handles:
        h.remove()
    return {n: (s[0] / seen[n], s[1] / seen[n]) for n, s in sums.items() if n in seen}


def test_static_model_matches_float64_statistics():
    model = timm.create_model('alphanet_a0', num_classes=10)
    batches = _batches(5)
    # reference: the input of every BN with the model as it will be once calibrated (computed layer by layer
    # would need the calibrated stats; in train mode BN normalises with batch stats, so inputs don't depend on them)
    ref = _direct_stats(model, batches)
    model.eval()
    used = calibrate_bn(model, batches, num_batches=5, progress=False)
    assert used == 5 and not model.training  # mode restored
    for name, m in model.named_modules():
        if name in ref:
            torch.testing.assert_close(m.running_mean.double(), ref[name][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(m.running_var.double(), ref[name][1], rtol=1e-4, atol=1e-5)
            assert m.momentum == 0.1 and m.num_batches_tracked.item() == 5


def test_num_batches_limits_and_errors():
    model = timm.create_model('alphanet_a0', num_classes=10).train()
    assert calibrate_bn(model, _batches(5), num_batches=2, progress=False) == 2
    assert model.training
    assert calibrate_bn(model, _batches(3), num_batches=10, progress=False) == 3  # loader ran out
    with pytest.raises(ValueError, match='num_batches'):
        calibrate_bn(model, _batches(1), num_batches=0)
    with pytest.raises(ValueError, match='no batch'):
        calibrate_bn(model, [], num_batches=3, progress=False)
    with pytest.raises(TypeError, match='cannot find the input images'):
        calibrate_bn(model, [{'x': 1}], num_batches=1, progress=False)


def test_supernet_subnet_calibration_equals_calibrating_the_extracted_model():
    supernet = timm.create_model('alphanet_supernet', space=SMALL_SPACE, num_classes=10, bn_momentum=0.0)
    arch = {**supernet.space.min_config().to_dict(), 'resolution': 48, 'kernel_sizes': [3, 5]}
    supernet.set_subnet(arch)
    batches = _batches(4, size=64)  # resized to the subnet's 48 px inside calibrate_bn
    calibrate_bn(supernet, batches, num_batches=4, progress=False)
    from_supernet = extract_subnet(supernet)
    static = extract_subnet(supernet)
    for m in static.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    calibrate_bn(static, batches, num_batches=4, resolution=48, progress=False)
    for (n, a), (_, b) in zip(from_supernet.state_dict().items(), static.state_dict().items()):
        if 'running' in n:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    assert supernet.blocks[0][0].bn2.momentum == 0.0  # the supernet's own setting is restored


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.manual_seed(0)
    model = timm.create_model('alphanet_supernet', space=SMALL_SPACE, num_classes=10)
    calibrate_bn(model, _batches(3, seed=10 + rank), num_batches=3, progress=False)
    if rank == 0:
        torch.save({k: v for k, v in model.state_dict().items() if 'running' in k}, out)
    dist.destroy_process_group()


def test_statistics_are_averaged_across_processes(tmp_path):
    out = str(tmp_path / 'stats.pt')
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    model = timm.create_model('alphanet_supernet', space=SMALL_SPACE, num_classes=10)
    # one process over both processes' batches: each averages 3 batches, so the mean of means is the same
    calibrate_bn(model, _batches(3, seed=10) + _batches(3, seed=11), num_batches=6, progress=False)
    for k, v in distributed.items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=1e-5, atol=1e-6, msg=k)


# ---- all or nothing: a failed calibration leaves the previous statistics as they were

def _calibrated_supernet():
    """A small supernet whose BN statistics are distinctive (a reset to 0/1 would show)."""
    from timm_alphanet.testing import randomize_bn_stats
    model = timm.create_model('alphanet_supernet', space=SMALL_SPACE, num_classes=10, bn_momentum=0.0).eval()
    randomize_bn_stats(model, torch.Generator().manual_seed(3))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.num_batches_tracked.fill_(7)
    return model


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k}


def _assert_untouched(model, before):
    after = _bn_state(model)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert not model.training
    assert all(m.momentum == 0.0 for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def _loader_failing_after(n, error):
    for x in _batches(n, size=48):
        yield x
    raise error


@pytest.mark.parametrize('loader, error, match', [
    ([], ValueError, 'no batch'),
    ([{'x': 1}], TypeError, 'cannot find the input images'),
    ([torch.randn(2, 1, 48, 48)], ValueError, r'\(batch, 3, H, W\).*\(2, 1, 48, 48\)'),  # grey images
    ([torch.randint(0, 255, (2, 3, 48, 48))], ValueError, 'float images'),
    ([torch.randn(3, 48, 48)], ValueError, r'shape \(3, 48, 48\)'),
    ([_batches(1, size=48)[0], [torch.randn(2, 1, 48, 48)]], ValueError, r'\(2, 1, 48, 48\)'),  # a later bad batch
    ([_batches(1, size=48)[0], {'x': 1}], TypeError, 'cannot find the input images'),
    ([_batches(1, size=48)[0], (torch.full((2, 3, 48, 48), float('nan')),)], ValueError, 'NaN/inf statistics'),
], ids=['empty', 'no-images', 'grey', 'integer', 'unbatched', 'bad-second', 'no-images-second', 'nan-images'])
def test_failed_calibration_keeps_the_previous_statistics(loader, error, match):
    model = _calibrated_supernet()
    before = _bn_state(model)
    with pytest.raises(error, match=match):
        calibrate_bn(model, loader, num_batches=4, progress=False)
    _assert_untouched(model, before)


@pytest.mark.parametrize('error', [RuntimeError('worker died'), KeyboardInterrupt()])
def test_loader_errors_and_interrupts_restore_the_statistics(error):
    model = _calibrated_supernet()
    before = _bn_state(model)
    with pytest.raises(type(error)):
        calibrate_bn(model, _loader_failing_after(2, error), num_batches=4, progress=False)
    _assert_untouched(model, before)


@pytest.mark.parametrize('num_batches', [0, -2, 2.5, True, '3', None])
def test_invalid_num_batches_is_refused_before_anything_changes(num_batches):
    model = _calibrated_supernet()
    before = _bn_state(model)
    consumed = []

    def loader():
        consumed.append(1)
        yield from _batches(2, size=48)

    with pytest.raises(ValueError, match='num_batches must be an int >= 1'):
        calibrate_bn(model, loader(), num_batches=num_batches, progress=False)
    _assert_untouched(model, before)
    assert not consumed


def test_numpy_num_batches_is_an_int():
    import numpy as np
    model = _calibrated_supernet()
    assert calibrate_bn(model, _batches(3, size=48), num_batches=np.int64(2), progress=False) == 2
    assert model.blocks[0][0].bn2.num_batches_tracked.item() == 2
