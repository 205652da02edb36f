"""`compile_norm_act`: a supernet's BN + activation layers compiled once for every subnet (dynamic shapes), with
the eager layers' outputs, gradients and running statistics."""
import copy
import random

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from timm_alphanet.calibration import calibrate_bn
from timm_alphanet.layers.dynamic import DynamicBatchNormAct2d, compile_norm_act
from timm_alphanet.layers.sync_bn import convert_sync_dynamic_bn
from timm_alphanet.testing.tiny import tiny_supernet


def _step(model, arch, x):
    model.set_subnet(arch)
    model.zero_grad(set_to_none=True)
    out = model(torch.nn.functional.interpolate(x, size=arch.resolution))
    out.square().sum().backward()
    return out.detach()


def test_compiled_norm_act_matches_eager_for_new_subnets_without_recompiling():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = tiny_supernet().train()
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend('aot_eager')  # autograd traced as inductor would, without code generation
    layers = compile_norm_act(compiled, backend=counter)
    assert layers == sum(isinstance(m, DynamicBatchNormAct2d) for m in compiled.modules()) > 0
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    archs = [eager.space.max_config(), eager.space.min_config(), *(eager.space.sample(rng) for _ in range(10))]
    assert len({(a.widths, a.resolution) for a in archs}) >= 6  # new widths and resolutions keep coming
    frames = []
    for arch in archs:
        x = torch.randn(3, 3, 32, 32, generator=gen)
        torch.testing.assert_close(_step(compiled, arch, x), _step(eager, arch, x), rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
        frames.append(counter.frame_count)
    for b, c in zip(compiled.buffers(), eager.buffers()):  # running statistics written through the sliced views
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)
    # a few graphs (per activation kind; static shapes first, then dynamic) for the whole space
    assert frames[-1] == frames[len(frames) // 2] and frames[-1] <= 6, frames


def test_calibration_and_sync_bn_stay_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tiny_supernet()
    counter = CompileCounterWithBackend('eager')
    compile_norm_act(model, backend=counter)
    model.set_subnet(model.space.min_config())
    r = model.space.min_config().resolution
    calibrate_bn(model, [(torch.randn(4, 3, r, r), None) for _ in range(3)], 3, progress=False)  # momentum None
    assert counter.frame_count == 0
    synced = copy.deepcopy(model)
    convert_sync_dynamic_bn(synced)
    assert compile_norm_act(synced, backend=counter) == 0  # its forward all-reduces: not this shared function


@pytest.mark.parametrize('train', [True, False])
def test_torchscript_still_scripts_the_eager_path(train):
    model = tiny_supernet().train(train)
    compile_norm_act(model, backend='eager')
    layer = next(m for m in model.modules() if isinstance(m, DynamicBatchNormAct2d))
    scripted = torch.jit.script(copy.deepcopy(layer))  # scripting takes the eager branch
    x = torch.randn(2, layer.num_features, 4, 4)
    torch.testing.assert_close(scripted(x), copy.deepcopy(layer)(x))
