"""Every shell and Python snippet of the README runs, in order, offline, in one scratch folder.

The set-up command's install part (venv, pip) is what CI itself does, so only the job after it runs here; every
other block runs as written. A block that cannot run here (ImageNet, GPUs, a Hub token) is preceded by
``<!-- not tested: <reason> -->``.

Each block has a time budget scaled to this machine, not a fixed one: its cost recorded by the last passing run on
this checkout (pytest's cache, in idle-machine seconds; 900 s before any), times a margin, times how much slower
than idle the machine is now (wall over CPU time of a probe, the start-up of torch + timm: other jobs on the cores
stretch the one, not the other). A hang still fails, naming the block and its budget; the blocks that need a failed block's output (its ``--output`` folders, the training run's ``output/train``)
are skipped naming it, instead of failing in a cascade. ``pytest -q`` prints each block as it starts.
"""
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
INSTALL = re.compile(r'^python3 -m venv \.venv && \. \.venv/bin/activate && pip install -e [^&]+&& ', re.M)
SKIP = re.compile(r'<!-- not tested: (.+?) -->\s*$')
LINKED = ('train.py', 'train_configs', 'benchmarks', 'hubconf.py')  # repo files the snippets name by relative path


class Block(NamedTuple):
    line: int
    lang: str
    code: str
    skip: str  # the reason it is not run, '' if it runs


def readme_blocks(text: str) -> List[Block]:
    """The fenced bash/python blocks of `text`, with the reason of a `<!-- not tested: ... -->` just above."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r'^```(\w+)\s*$', lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != '```':
            body.append(lines[i])
            i += 1
        i += 1
        above = next((ln for ln in reversed(lines[:start]) if ln.strip()), '')
        marked = SKIP.match(above.strip())
        blocks.append(Block(start + 1, fence.group(1), '\n'.join(body) + '\n', marked.group(1) if marked else ''))
    return blocks


BLOCKS = [b for b in readme_blocks(README.read_text()) if b.lang in ('bash', 'python')]


def test_blocks_are_found_and_skips_give_reasons():
    assert len(BLOCKS) >= 8
    assert any(INSTALL.search(b.code) for b in BLOCKS), 'the set-up commands are in the README'
    assert all(len(b.skip) > 10 for b in BLOCKS if b.skip), 'a skipped block says why'
    assert not re.search(r'^[A-Z][A-Z_]{5,}$', README.read_text(), re.M), 'no placeholder line left'


def test_readme_block_parser():
    text = 'x\n<!-- not tested: needs a GPU here -->\n```bash\necho a\n```\n\n```python\nprint(1)\n```\n```text\nz\n```\n'
    blocks = readme_blocks(text)
    assert [(b.lang, b.code, b.skip) for b in blocks] == [
        ('bash', 'echo a\n', 'needs a GPU here'), ('python', 'print(1)\n', ''), ('text', 'z\n', '')]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp('readme')
    for name in LINKED:
        (path / name).symlink_to(ROOT / name)
    return path


def _env(workdir: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE='1', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env['PATH'] = str(Path(sys.executable).parent) + os.pathsep + env.get('PATH', '')  # the console scripts
    # one thread: the suite runs two test files side by side (pytest-xdist); OpenMP threads spin-waiting for a core
    # the other file holds make small convolutions many times slower
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


# ---- budgets and dependencies
MARGIN = 5.0  # budget = MARGIN x the recorded idle cost x the slowdown
FIRST_RUN_BUDGET_S = 900.0  # no recorded cost yet (a fresh checkout): the old fixed budget, which fit when idle
MIN_BUDGET_S, MAX_BUDGET_S = 120.0, 3 * 3600.0  # a block gets at least the first; past the second it hangs
CACHE_KEY = 'readme/idle_seconds'


def block_id(block: Block) -> str:
    """A readable id: line, language and the block's first comment or statement, e.g.
    ``line26-bash-main-job-install-then-train-the-demo``."""
    first = next((ln.strip().lstrip('#').strip() for ln in block.code.splitlines() if ln.strip()), '')
    words = re.findall(r'[a-z0-9]+', first.lower())[:8]
    return f'line{block.line}-{block.lang}' + ('-' + '-'.join(words) if words else '')


_OUTPUT = re.compile(r'\boutput/[\w.-]+')


def written(block: Block) -> Set[str]:
    """The output folders a block makes: what follows ``--output``/``--out``, else ``output/train`` for a training
    run (its config's default)."""
    out = set(re.findall(r'--out(?:put)?[ =](output/[\w.-]+)', block.code))
    if not out and re.search(r'\btrain\.py\b|\balphanet-train\b', block.code):
        out.add('output/train')
    return out


def needs(block: Block, failed: Dict[str, Set[str]]) -> List[str]:
    """The earlier failed blocks (ids) whose output folders `block` reads."""
    reads = set(_OUTPUT.findall(block.code)) - written(block)
    return [bid for bid, outs in failed.items() if reads & outs]


def budget_seconds(idle_cost: Optional[float], slowdown: float) -> float:
    """The time a block gets: MARGIN x its recorded idle cost (None: FIRST_RUN_BUDGET_S) x the machine's slowdown,
    within [MIN, MAX]_BUDGET_S."""
    base = FIRST_RUN_BUDGET_S if idle_cost is None else MARGIN * idle_cost
    return min(MAX_BUDGET_S, max(MIN_BUDGET_S, base * max(1.0, slowdown)))


def test_budget_and_dependency_rules():
    train = Block(1, 'bash', 'python train.py -c train_configs/demo.yaml\n', '')
    search = Block(2, 'bash', 'alphanet-search output/train/latest --output output/search\n', '')
    export = Block(3, 'bash', 'alphanet-export output/train/latest --pareto output/search/pareto.json\n', '')
    alone = Block(4, 'python', 'print(1)\n', '')
    assert written(train) == {'output/train'} and written(search) == {'output/search'}
    assert written(Block(5, 'bash', 'torchrun train.py --epochs 1 --output output/two\n', '')) == {'output/two'}
    failed = {block_id(train): written(train)}
    assert needs(search, failed) == [block_id(train)] and needs(alone, failed) == []
    assert needs(export, {block_id(search): written(search)}) == [block_id(search)]
    assert block_id(search) == 'line2-bash-alphanet-search-output-train-latest-output-output-search'
    assert budget_seconds(60, 1.0) == 300 and budget_seconds(60, 3.0) == 900  # scales with the slowdown
    assert budget_seconds(1, 1.0) == MIN_BUDGET_S and budget_seconds(1e6, 50) == MAX_BUDGET_S  # a hang still ends
    assert budget_seconds(None, 2.0) == 2 * FIRST_RUN_BUDGET_S


def measure_slowdown(probe: str = 'import torch, timm') -> float:
    """How much slower than idle the machine is now: wall time over CPU time of a one-thread `probe`; on free cores
    the two are about equal, with N jobs per core the wall time is about N times longer."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, '-c', probe], check=True, capture_output=True, timeout=1800)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return max(1.0, wall / max(cpu, 0.05))


def test_the_slowdown_probe_sees_a_busy_core():
    """Two CPU-bound jobs on this process's cores make the probe report a slowdown near 2x or more, not ~1x."""
    cores = os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else range(os.cpu_count() or 1)
    busy = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(2 * len(cores))]
    try:
        time.sleep(0.5)  # the busy loops are running
        loaded = measure_slowdown('sum(range(20_000_000))')  # about a second of CPU: short, for the other jobs' sake
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert loaded > 1.8, loaded


@pytest.fixture(scope='module')
def slowdown() -> float:
    return measure_slowdown()


_FAILED: Dict[str, Set[str]] = {}  # id -> output folders, of the blocks that failed in this session


@pytest.mark.parametrize('block', [b for b in BLOCKS if not b.skip], ids=block_id)
def test_readme_block_runs(block, workdir, slowdown, request, capsys):
    bid = block_id(block)
    missing = needs(block, _FAILED)
    if missing:
        pytest.skip(f'README line {block.line} needs the output of {", ".join(missing)}, which failed')
    recorded = request.config.cache.get(f'{CACHE_KEY}/{bid}', None)
    recorded = recorded if isinstance(recorded, (int, float)) and recorded > 0 else None
    budget = budget_seconds(recorded, slowdown)
    with capsys.disabled():  # -q shows dots only: say which block runs, and for how long it may
        print(f'\n[README line {block.line} {block.lang}: {bid}; budget {budget:.0f} s, machine x{slowdown:.1f} '
              'slower than idle]', flush=True)
    code = INSTALL.sub('', block.code)  # CI has installed the package; the job after the install runs here
    if block.lang == 'bash':
        cmd = ['bash', '-euo', 'pipefail', '-c', code]
    else:
        cmd = [sys.executable, '-c', code]
    _FAILED[bid] = written(block)  # until it passes: a timeout or failure below leaves it marked
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b'')[-3000:] if isinstance(e.stdout, bytes) else (e.stdout or '')[-3000:]
        pytest.fail(f'README line {block.line} ({bid}) did not finish within its budget of {budget:.0f} s (recorded '
                    f'idle cost {recorded} s, machine x{slowdown:.1f}): a hang, or far slower than before; last '
                    f'output:\n{out!s}', pytrace=False)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f'README line {block.line} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    del _FAILED[bid]
    request.config.cache.set(f'{CACHE_KEY}/{bid}', round(seconds / slowdown, 1))  # the next run's budget
