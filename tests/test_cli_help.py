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


@pytest.mark.parametrize('outcome', ['ok', 'user error'])
def test_a_command_destroys_the_process_group_it_joined(monkeypatch, outcome):
    """Left to interpreter exit, gloo's threads can abort a finished distributed command (SIGABRT)."""
    import sys
    import types
    from timm_alphanet.cli._common import user_errors_exit
    calls = []
    fake = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: not calls,
                                 destroy_process_group=lambda: calls.append('destroyed'))
    monkeypatch.setitem(sys.modules, 'torch.distributed', fake)

    def work():
        if outcome == 'user error':
            raise ValueError('bad value')
        return 0
    if outcome == 'ok':
        assert user_errors_exit('prog', work) == 0
    else:
        with pytest.raises(SystemExit):
            user_errors_exit('prog', work)
    assert calls == ['destroyed']
