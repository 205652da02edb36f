"""Every console script's --help: defaults shown once, and never the meaningless "(default: None)"."""
import contextlib
import importlib
import io
import re

import pytest

SCRIPTS = [('search', []), ('export', []), ('validate', []), ('convert', []), ('latency', ['build']),
           ('latency', ['validate'])]


def _help(module: str, sub: list) -> str:
    main = importlib.import_module(f'timm_alphanet.cli.{module}').main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main([*sub, '--help'])
    assert e.value.code == 0
    return ' '.join(out.getvalue().split())  # argparse wraps lines; one line makes the patterns simple


@pytest.mark.parametrize('module,sub', SCRIPTS)
def test_help_states_each_default_once(module, sub):
    text = _help(module, sub)
    assert '(default: None)' not in text and '(default: False)' not in text
    assert re.search(r'\(default: [^)]*\) \(default:', text) is None  # a stated default and argparse's
    assert re.search(r'default: \d', text), 'numeric defaults are still shown'
