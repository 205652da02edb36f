"""Training throughput on this machine: images/s of supernet sandwich training (with the per-subnet breakdown)
and of teacher KD, single process, synthetic batches (no data loading).

    python benchmarks/train_throughput.py                       # demo space, 32 px, batch 64
    python benchmarks/train_throughput.py --space paper --batch-size 32 --steps 5   # the paper's space (slow on CPU)
"""
import argparse
import time

import timm
import torch

import timm_alphanet  # noqa: F401  (registers the models)
from timm_alphanet import ALPHANET_SPACE, AlphaDistillationTask, SearchSpace
from timm_alphanet.task import SandwichTask
from timm_alphanet.train.config import DEMO_SPACE


def _time(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--space', default='demo', choices=('demo', 'paper'))
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--num-subnets', type=int, default=4)
    p.add_argument('--student', default='mobilenetv2_050')
    p.add_argument('--teacher', default='resnet18')
    p.add_argument('--threads', type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    space = SearchSpace.from_dict(DEMO_SPACE) if args.space == 'demo' else ALPHANET_SPACE
    res = max(space.resolutions)
    b = args.batch_size
    x, y = torch.randn(b, 3, res, res), torch.randint(0, 10, (b,))
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, batch {b}, {args.space} space at {res} px')

    model = timm.create_model('alphanet_supernet', space=space, num_classes=10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    task = SandwichTask(model, num_subnets=args.num_subnets, seed=0, verbose=False)
    state = {'step': 0}

    def sandwich_step():
        opt.zero_grad()
        task(x, y, state['step'], backward=lambda loss: loss.backward())
        opt.step()
        state['step'] += 1
    dt = _time(sandwich_step, args.steps)
    print(f'supernet sandwich ({args.num_subnets} subnets/step): {b / dt:8.1f} images/s ({dt * 1e3:.0f} ms/step)')

    print('per subnet (forward + backward of one subnet, the images of one step):')
    for name, arch in [('max', space.max_config()), ('random', space.sample(__import__('random').Random(0))),
                       ('min', space.min_config())]:
        model.set_subnet(arch)
        xi = task.resize(x, arch.resolution)

        def one():
            opt.zero_grad()
            model(xi).logsumexp(-1).mean().backward()
        dt = _time(one, args.steps)
        print(f'  {name:7s} res {arch.resolution:3d} {timm_alphanet.mflops(arch, space):8.2f} MFLOPs: '
              f'{b / dt:8.1f} images/s')
    model.set_subnet(space.max_config())

    student = timm.create_model(args.student, num_classes=10).train()
    teacher = timm.create_model(args.teacher, num_classes=10)
    kd = AlphaDistillationTask(student, teacher, verbose=False).train()
    kd_opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def kd_step():
        kd_opt.zero_grad()
        kd(x, y)['loss'].backward()
        kd_opt.step()
    dt = _time(kd_step, args.steps)
    print(f'teacher KD ({args.teacher} -> {args.student}, {res} px): {b / dt:8.1f} images/s ({dt * 1e3:.0f} ms/step)')


if __name__ == '__main__':
    main()
