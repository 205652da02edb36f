"""What a plain `pip install .` gives: models build without the extras, and each optional package is one extra away,
named in a one-line error by the command that needs it."""
import configparser
import os
import subprocess
import sys

import pytest

from timm_alphanet.utils import EXTRAS, MissingExtraError, import_optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST_NAMES = {'sklearn': 'scikit-learn'}  # import name -> distribution name where they differ


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    return cfg


def _requirement_names(text):
    names = set()
    for line in text.splitlines():
        line = line.split('#')[0].strip()
        if line:
            for sep in '<>=!~[; ':
                line = line.split(sep)[0]
            names.add(line.lower().replace('_', '-'))
    return names


def test_optional_packages_are_in_their_extra_and_not_in_the_base_install():
    cfg = _setup_cfg()
    base = _requirement_names(cfg['options']['install_requires'])
    for module, extra in EXTRAS.items():
        dist = DIST_NAMES.get(module, module)
        assert dist not in base, f'{dist} is optional but in install_requires'
        assert dist in _requirement_names(cfg['options.extras_require'][extra]), (dist, extra)
        assert dist in _requirement_names(cfg['options.extras_require']['test']), dist  # the tests use them all
    assert {'torch', 'torchvision', 'timm', 'accelerate', 'safetensors', 'huggingface-hub'} <= base


def test_models_build_and_run_without_any_extra():
    blocked = sorted(EXTRAS)
    code = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: importing it raises ImportError, find_spec gives None
import torch, timm, timm_alphanet
from timm_alphanet.utils import import_optional, MissingExtraError
model = timm.create_model('alphanet_a0').eval()
with torch.no_grad():
    print(tuple(model(torch.randn(1, 3, 192, 192)).shape))
try:
    import_optional('scipy.stats', 'the thing')
except MissingExtraError as e:
    print(e)
print(sorted(m for m in sys.modules if m.split('.')[0] in {blocked!r} and sys.modules[m] is not None))
"""
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines == ['(1, 1000)', 'the thing needs scipy: pip install "timm_alphanet[demo]"', '[]']


def test_import_optional_names_the_extra_and_refuses_unknown_names():
    assert import_optional('scipy', 'x').__name__ == 'scipy'
    with pytest.raises(ValueError, match="'numpy' is not an optional dependency; the optional ones are matplotlib"):
        import_optional('numpy', 'x')
    assert issubclass(MissingExtraError, ImportError)


def test_a_missing_extra_is_one_line_and_exit_2_before_any_work(tmp_path):
    # the search refuses before it scores a subnet; the message names the extra that installs the plot
    code = """
import sys
import timm
from timm_alphanet import save_pretrained
from timm_alphanet.archs import DEMO_SPACE
save_pretrained(timm.create_model('alphanet_supernet', space=DEMO_SPACE, num_classes=10), sys.argv[1])
sys.modules['matplotlib'] = None
from timm_alphanet.cli.search import main
main([sys.argv[1], '--output', sys.argv[2], '--population', '3', '--generations', '1'])
"""
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'supernet'), str(tmp_path / 'out')],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if 'error' in line]
    assert len(errors) == 1 and 'needs matplotlib: pip install "timm_alphanet[demo]"' in errors[0], out.stderr[-1000:]
    assert not (tmp_path / 'out' / 'candidates.jsonl').exists()
