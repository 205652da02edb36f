"""Repository invariants: CI runs the README's test command, and hubconf exposes what timm registers."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    readme_cmd = re.search(r'pip install -e "\.\[test\]" && (.+)$', _read('README.md'), re.M).group(1).strip()
    ci_lines = [ln.strip() for ln in _read('.ci', 'run').splitlines() if ln.strip() and not ln.startswith('#')]
    assert ci_lines[-1] == readme_cmd
