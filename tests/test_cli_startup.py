"""Every console script answers --help and argument errors before importing torch or timm (seconds on an idle
machine, a minute under load): the check is on what a fresh interpreter has imported, a wall bound only backs it."""
import configparser
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ('torch', 'timm', 'torchvision', 'accelerate')


def _entry_points():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    lines = [ln.strip() for ln in cfg['options.entry_points']['console_scripts'].splitlines() if ln.strip()]
    return {name.strip(): target.strip() for name, target in (ln.split('=', 1) for ln in lines)}


SCRIPTS = _entry_points()
# argv that reaches `--help` (latency's subcommands have their own) and argv that argparse refuses
HELP_ARGV = {'alphanet-latency': [['--help'], ['build', '--help'], ['validate', '--help']]}
BAD_ARGV = ['--no-such-flag']

_PROBE = '''
import sys
sys.argv[0] = {name!r}
from {module} import {func} as main
try:
    code = main({argv!r})
except SystemExit as e:
    code = e.code
print('EXIT', code, file=sys.stderr)
print('HEAVY', ' '.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
'''


def _probe(name: str, target: str, argv: list) -> subprocess.CompletedProcess:
    module, func = target.split(':')
    code = _PROBE.format(name=name, module=module, func=func, argv=argv, heavy=HEAVY)
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _report(out: subprocess.CompletedProcess):
    lines = dict(ln.split(' ', 1) if ' ' in ln else (ln, '') for ln in out.stderr.splitlines()
                 if ln.startswith(('EXIT', 'HEAVY')))
    return lines.get('EXIT'), lines.get('HEAVY', '?').split()


def test_the_entry_points_are_all_checked():
    assert len(SCRIPTS) >= 7 and all(t.startswith('timm_alphanet.cli.') for t in SCRIPTS.values()), SCRIPTS


@pytest.mark.parametrize('name,argv', [(n, a) for n in SCRIPTS for a in HELP_ARGV.get(n, [['--help']])],
                         ids=lambda v: v if isinstance(v, str) else ' '.join(v))
def test_help_imports_no_torch(name, argv):
    out = _probe(name, SCRIPTS[name], argv)
    code, heavy = _report(out)
    assert code == '0', out.stderr[-2000:]
    assert 'usage:' in out.stdout
    assert heavy == [], f'{name} {" ".join(argv)} imported {heavy} before answering'


@pytest.mark.parametrize('name', list(SCRIPTS))
def test_a_bad_flag_is_refused_before_torch(name):
    out = _probe(name, SCRIPTS[name], BAD_ARGV)
    code, heavy = _report(out)
    assert code == '2' and f'{name}: error:' in out.stderr, out.stderr[-2000:]  # the flag, or a missing argument
    assert heavy == [], f'{name} imported {heavy} before refusing a bad flag'


def test_train_py_help_imports_no_torch():
    code = ('import runpy, sys\nsys.argv = ["train.py", "--help"]\ntry:\n    runpy.run_path("train.py", '
            'run_name="__main__")\nexcept SystemExit as e:\n    print("EXIT", e.code, file=sys.stderr)\n'
            f'print("HEAVY", " ".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert _report(out) == ('0', []), out.stderr[-2000:]


def test_importing_the_package_still_registers_the_models_with_timm():
    """The package root is lazy (no torch on import), yet `import timm_alphanet` then timm finds the models, in
    either import order."""
    check = ('import timm\nassert timm.is_model("alphanet_a0") and timm.is_model("alphanet_supernet")\n'
             'assert timm_alphanet.AlphaNet.__name__ == "AlphaNet"\nprint("ok")')
    for code in ('import sys\nimport timm_alphanet\nassert "torch" not in sys.modules\n' + check,
                 'import timm\nimport timm_alphanet\n' + check):
        out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.stdout.strip() == 'ok', out.stderr[-2000:]


def test_any_layers_or_models_module_imported_first_works():
    """The models register when timm is imported; a module they need must not be half-loaded at that moment
    (a layers module whose `from timm.layers import ...` triggered the registration was). Each in a fresh
    interpreter, side by side."""
    pkg = ROOT / 'timm_alphanet'
    modules = ['timm_alphanet.' + '.'.join(p.relative_to(pkg).with_suffix('').parts)
               for sub in ('layers', 'models') for p in sorted((pkg / sub).glob('*.py')) if p.name != '__init__.py']
    assert len(modules) >= 8
    code = 'import {}\nimport timm\nassert timm.is_model("alphanet_a0")'
    procs = {m: subprocess.Popen([sys.executable, '-c', code.format(m)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in modules}
    failed = {m: p.communicate(timeout=300)[1][-500:] for m, p in procs.items()}
    assert not {m: err for m, err in failed.items() if procs[m].returncode}, failed


def test_search_help_is_quick():
    """Secondary to the import check: < 1 s on an idle machine; the bound is generous for a loaded one."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, '-m', 'timm_alphanet.cli.search', '--help'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert out.returncode == 0 and 'usage: alphanet-search' in out.stdout, out.stderr[-2000:]
    assert seconds < 15, f'alphanet-search --help took {seconds:.1f} s'


def test_the_parsers_copies_of_library_constants_match():
    """Parsers name a few library values themselves (their modules import torch); they must not drift."""
    from timm_alphanet.calibration import CalibrationRecipe
    from timm_alphanet.cli import _calibration, convert, latency, validate
    from timm_alphanet.cost.latency import TimingConfig
    from timm_alphanet.evaluation import PIPELINES
    from timm_alphanet.loss import KD_LOSSES
    from timm_alphanet.original.convert import SUBNET_NAMES
    from timm_alphanet.train import config

    recipe = CalibrationRecipe()
    assert _calibration.RECIPE_DEFAULTS == {k: getattr(recipe, k) for k in _calibration.RECIPE_DEFAULTS}
    timing = TimingConfig()
    assert latency.TIMING_DEFAULTS == {k: getattr(timing, k) for k in latency.TIMING_DEFAULTS}
    assert validate.PIPELINES == PIPELINES and config.KD_LOSSES == KD_LOSSES
    assert convert.SUBNET_NAMES == SUBNET_NAMES
