"""The training step the benchmarks time: one sandwich step with a plain optimizer, cycling through a fixed set of
steps so every variant and repeat trains the same subnets."""
from typing import Callable, Iterable


def sandwich_step(task, parameters: Iterable, x, y, period: int) -> Callable[[], None]:
    """A function that runs one step of `task` (a `SandwichTask`) on ``(x, y)``: backward per subnet, SGD step."""
    import torch
    opt = torch.optim.SGD(parameters, lr=0.01, momentum=0.9)
    state = {'step': 0}

    def step() -> None:  # steps cycle through 0..period-1: every variant and repeat trains the same subnets
        opt.zero_grad()
        task(x, y, state['step'] % period, backward=lambda loss: loss.backward())
        opt.step()
        state['step'] += 1
    return step


def variant_list(choices: Iterable[str]) -> Callable[[str], list]:
    """argparse type of a ``--variants a,b`` option: the comma-separated names, each one of `choices`."""
    import argparse
    allowed = list(choices)

    def parse(text: str) -> list:
        names = [v.strip() for v in text.split(',') if v.strip()]
        bad = [v for v in names if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f'unknown variants {bad}; choose from {allowed}')
        return names
    return parse
