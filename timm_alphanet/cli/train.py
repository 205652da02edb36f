"""``alphanet-train`` / ``train.py``: supernet sandwich training or teacher KD on HF Accelerate.

    accelerate launch train.py -c train_configs/demo.yaml          # or plain: python train.py

The flags are derived from `TrainConfig`'s fields (timm's names; ``-c/--config`` is a YAML file of option values,
which flags on the command line override); with no config the defaults are the demo run.
"""
import argparse
import dataclasses
import errno
import reprlib
import sys
from typing import Any, Callable, Optional, Sequence, Union, get_args, get_origin, get_type_hints

from ..train import TrainConfig  # torch-free; the trainer (torch) is imported once the flags are parsed
from ._common import user_errors_exit

__all__ = ['build_parser', 'main', 'parse_args']

PROG = 'alphanet-train'
_NONE = ('none', 'null')


class _Switch(argparse.Action):
    """A bool option: its flag sets True, the negated flag (``--no-x`` for ``--x``, ``--aug`` for ``--no-aug``) False.

    argparse's BooleanOptionalAction reads any flag starting with ``--no-`` as False, which breaks timm's
    ``--no-aug`` / ``--no-progress``.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.negations = [_negate(s) for s in option_strings if s.startswith('--')]
        super().__init__([*option_strings, *self.negations], dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, option_string not in self.negations)

    def format_usage(self) -> str:
        return ' | '.join(self.option_strings)


def _negate(flag: str) -> str:
    return '--' + flag[len('--no-'):] if flag.startswith('--no-') else '--no-' + flag[2:]


def _scalar(tp: Any) -> Callable[[str], Any]:
    """argparse `type` for a scalar (or Optional scalar) field; 'none' gives None where the field allows it."""
    optional = get_origin(tp) is Union and type(None) in get_args(tp)
    base = next((a for a in get_args(tp) if a is not type(None)), tp) if optional else tp
    base = str if get_origin(base) in (Union, dict) else base  # space: a YAML path on the command line

    def parse(text: str) -> Any:
        if optional and text.strip().lower() in _NONE:
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {base.__name__}, got {text[:40]!r}') from None
    parse.__name__ = getattr(base, '__name__', 'value')  # argparse names the type in its messages
    return parse


def _argument(f: dataclasses.Field, tp: Any, default: Any) -> dict:
    """add_argument keywords for one TrainConfig field."""
    meta = f.metadata
    shown = 'the demo space' if f.name == 'space' and default is not None else reprlib.repr(default)
    text = meta['help'] if '(default' in meta['help'] else f"{meta['help']} (default: {shown})"
    kw: dict = dict(dest=f.name, default=default, help=text.replace('%', '%%'))
    if meta['choices']:
        kw['choices'] = meta['choices']
    inner = next((a for a in get_args(tp) if a is not type(None)), None) if get_origin(tp) is Union else tp
    if tp is bool:
        kw['action'] = _Switch
    elif get_origin(inner) is tuple:
        args = get_args(inner)
        variadic = len(args) == 2 and args[1] is Ellipsis
        kw['nargs'] = ('*' if f.name == 'eval_archs' else '+') if variadic else len(args)
        kw['type'] = str if get_origin(args[0]) is Union else args[0]
        kw['metavar'] = f.name.split('_')[-1].upper()
    else:
        kw['type'] = _scalar(tp)
        if meta['const'] is not None:
            kw['nargs'], kw['const'] = '?', meta['const']
    return kw


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def build_parser(defaults: Optional[TrainConfig] = None) -> argparse.ArgumentParser:
    """The command line of `TrainConfig`: one flag per field (timm's names), `defaults` shown in --help (None: the
    fields' own defaults, read without constructing a config, which would check the KD loss with torch)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description='AlphaNet supernet training (sandwich rule + in-place alpha-KD) or teacher KD into '
        'any timm model, on HF Accelerate. Without -c the defaults are the demo run.')
    parser.add_argument('-c', '--config', default='', metavar='FILE',
                        help='YAML file of option values (keys: the long flag names with underscores); '
                             'flags given here override it')
    groups = {}
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        group = groups.get(f.metadata['group']) or groups.setdefault(
            f.metadata['group'], parser.add_argument_group(f.metadata['group']))
        flags = f.metadata['flags'] or ('--' + f.name.replace('_', '-'),)
        default = _field_default(f) if defaults is None else getattr(defaults, f.name)
        group.add_argument(*flags, **_argument(f, hints[f.name], default))
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """The TrainConfig of a command line: the ``-c`` YAML (else the demo defaults), then the flags over it.

    Raises:
        ValueError / TypeError / FileNotFoundError: a bad config file or value (argparse exits on bad flags).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='')
    pre.add_argument('-h', '--help', action='store_true')
    known, _ = pre.parse_known_args(argv)
    if not (known.config and known.help):  # flags (and plain --help) checked before the YAML and torch
        ns = build_parser().parse_args(argv)
    if known.config:  # its values are the defaults the flags override, and what -c FILE --help shows
        ns = build_parser(TrainConfig.from_yaml(known.config)).parse_args(argv)
    return TrainConfig(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig)})


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, train; a user error exits 2 with one line, a run stopped by non-finite losses or a full disk exits 1."""
    def train() -> int:
        cfg = parse_args(argv)
        from ..train import NonFiniteLossError, run  # torch: only once the command line is known good

        try:
            run(cfg)
        except NonFiniteLossError as e:
            print(f'{PROG}: error: {e}', file=sys.stderr, flush=True)
            return 1
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            print(f'{PROG}: error: {e.strerror}', file=sys.stderr, flush=True)  # names the folder
            return 1
        return 0  # `run` leaves the process group to its caller; `user_errors_exit` destroys it
    return user_errors_exit(PROG, train)


if __name__ == '__main__':
    sys.exit(main())
