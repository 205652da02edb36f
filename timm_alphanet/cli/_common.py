"""What every console script shares: user errors become one line on stderr and exit code 2.

The library raises `ValueError` / `FileNotFoundError` / `TypeError` (and `pickle.UnpicklingError` for refused
checkpoints, `MissingExtraError` for an extra that is not installed) naming the bad value; only here do they turn into exit codes. Anything else is a bug and keeps
its traceback.
"""
import argparse
import pickle
import sys
from typing import Callable, NoReturn, Tuple, Type

from ..utils import NO_SPACE_ERRNOS, MissingExtraError

__all__ = ['USER_ERRORS', 'MAX_MESSAGE', 'HelpFormatter', 'int_at_least', 'fail', 'user_errors_exit']

USER_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                                PermissionError, TypeError, pickle.UnpicklingError, MissingExtraError)
MAX_MESSAGE = 2000  # a backstop: library messages are bounded already, a console line should be too


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, minus "(default: None)" / "(default: False)" and minus a second default where
    the help already states one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if action.default in (None, False, argparse.SUPPRESS) or 'default' in text:
            return text
        return super()._get_help_string(action)


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` (one line, bounded) to stderr and exit with status 2."""
    text = ' '.join(str(message).split())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + ' ...'
    print(f'{prog}: error: {text}', file=sys.stderr, flush=True)
    raise SystemExit(2)


def user_errors_exit(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn`; a user error (`USER_ERRORS`) ends the process with `fail`, without a traceback."""
    try:
        return fn()
    except USER_ERRORS as e:
        fail(prog, str(e) or type(e).__name__)
    except OSError as e:  # a full disk or quota: the writers (utils.files) name the file in strerror
        if e.errno not in NO_SPACE_ERRNOS:
            raise
        fail(prog, e.strerror or str(e))
    finally:
        _release_process_group()


def _release_process_group() -> None:
    """Destroy the process group a distributed run joined: left to the interpreter's exit, gloo's threads can abort
    the process ('terminate called without an active exception', SIGABRT) after the work succeeded."""
    dist = sys.modules.get('torch.distributed')  # only when the command used torch; no torch import here
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an int >= `minimum`, with a message naming the bad value."""
    what = {0: 'a non-negative integer', 1: 'a positive integer'}.get(minimum, f'an integer >= {minimum}')

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {what}, got {text[:40]!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'expected {what}, got {value}')
        return value
    return parse
