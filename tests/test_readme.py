"""Every shell and Python snippet of the README runs, in order, offline, in one scratch folder.

The set-up command's install part (venv, pip) is what CI itself does, so only the job after it runs here; every
other block runs as written. A block that cannot run here (ImageNet, GPUs, a Hub token) is preceded by
``<!-- not tested: <reason> -->``.
"""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

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
    env.setdefault('OMP_NUM_THREADS', '2')
    return env


@pytest.mark.parametrize('block', [b for b in BLOCKS if not b.skip], ids=lambda b: f'line{b.line}-{b.lang}')
def test_readme_block_runs(block, workdir):
    code = INSTALL.sub('', block.code)  # CI has installed the package; the job after the install runs here
    if block.lang == 'bash':
        cmd = ['bash', '-euo', 'pipefail', '-c', code]
    else:
        cmd = [sys.executable, '-c', code]
    proc = subprocess.run(cmd, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f'README line {block.line} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
