"""candidates.jsonl: a search's cache, one JSON line per scored subnet, appended as scores come in.

Two kinds of line: ``selection`` (top-1 on the selection images, the costs, the generation and process that scored
it) and ``validation`` (top-1 of a front arch on the whole validation split). A kill can tear the last line; the
reader skips torn and corrupt lines with a warning naming them, and a resume ends the torn line before appending.
Lines are appended with `timm_alphanet.utils.append_jsonl` (one write, then fsync). The reader is bounded: the
file by `MAX_CANDIDATES_BYTES` (refused beyond it), each line by `MAX_LINE_BYTES` and its nesting by
`timm_alphanet.utils.MAX_DEPTH`, scores to [0, 100] (`pareto_file.check_top1`, as pareto.json's reader and writer);
a line outside them is skipped with a warning, as a torn one is.
"""
import os
from typing import Any, Callable, Dict, Mapping, Tuple

from ..utils import bounded_repr, display_path, parse_json
from .pareto_file import arch_json, check_top1

__all__ = ['CANDIDATES', 'MAX_LINE_BYTES', 'MAX_CANDIDATES_BYTES', 'MAX_VAL_IMAGES', 'read_candidates',
           'end_torn_line', 'selection_line', 'validation_line']

CANDIDATES = 'candidates.jsonl'
MAX_LINE_BYTES = 1 << 16  # a candidate line is a few hundred bytes
# the largest search (`evolution.MAX_EVALUATIONS`, a million subnets) writes ~500 MB of lines; the whole file is
# read into dicts on --resume
MAX_CANDIDATES_BYTES = 1 << 30
MAX_VAL_IMAGES = 1 << 40  # a validation split's size: ImageNet's is 50 000

Selection = Dict[Any, Dict[str, Any]]  # arch -> {'arch', 'top1'}
Validation = Dict[Tuple[Any, str, int], float]  # (arch, split, number of images) -> top1_val


def selection_line(arch: Any, top1: float, costs: Mapping[str, Any], generation: int, process: int,
                   eval_s: float) -> Dict[str, Any]:
    """A ``selection`` line: an arch's top-1 on the selection images, its costs, and who scored it when."""
    return {'kind': 'selection', 'arch': arch_json(arch), 'top1': top1, **costs, 'generation': generation,
            'process': process, 'eval_s': round(eval_s, 4)}


def validation_line(arch: Any, top1_val: float, split: str, num_images: int) -> Dict[str, Any]:
    """A ``validation`` line: a front arch's top-1 on the whole validation split."""
    return {'kind': 'validation', 'arch': arch_json(arch), 'top1_val': top1_val, 'val_split': split,
            'val_images': num_images}


def read_candidates(path: str, space: Any, warn: Callable[[str], None]) -> Tuple[Selection, Validation]:
    """(selection records, validation records) keyed by arch from a candidates.jsonl (none when it is missing).

    Corrupt, torn, over-long and over-nested lines, and lines with a score outside [0, 100] or a bad image count,
    are skipped with a warning naming the line; a first occurrence wins (later duplicates are ignored). `space`
    validates each arch.

    Raises:
        ValueError: the file is larger than `MAX_CANDIDATES_BYTES` (naming the file, its size and the limit).
    """
    selection: Selection = {}
    validation: Validation = {}
    if not os.path.exists(path):
        return selection, validation
    with open(path, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_CANDIDATES_BYTES:
            raise ValueError(f'{display_path(path)}: {size} bytes, over the limit of {MAX_CANDIDATES_BYTES} bytes '
                             '(MAX_CANDIDATES_BYTES) for a candidates.jsonl; refusing to read it')
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b''), start=1):
            problem = None
            if len(raw) > MAX_LINE_BYTES:
                problem = f'longer than {MAX_LINE_BYTES} bytes'
                while raw and not raw.endswith(b'\n'):  # skip the rest of the long line
                    raw = f.readline(MAX_LINE_BYTES + 1)
            elif not raw.endswith(b'\n'):
                problem = 'truncated (no newline: the run was killed while writing it)'
            else:
                try:  # bounded nesting: a deeply nested line raised RecursionError out of json.loads
                    rec = parse_json(raw, 'not JSON', max_nodes=MAX_LINE_BYTES)
                except ValueError as e:  # 'not JSON: not valid JSON (...)' or 'not JSON: nested deeper than ...'
                    problem = str(e)[:160]
            if not problem:
                try:
                    if not isinstance(rec, Mapping):
                        raise TypeError(f'a line must be a JSON object, got a {type(rec).__name__}')
                    arch = space.validate(rec['arch'])
                    if rec.get('kind') == 'validation':
                        val = check_top1(rec['top1_val'], 'top1_val')
                        validation.setdefault((arch, _split(rec['val_split']), _images(rec['val_images'])), val)
                    else:
                        selection.setdefault(arch, {'arch': arch, 'top1': check_top1(rec['top1'], 'top1')})
                except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
                    problem = f'{type(e).__name__}: {str(e)[:120]}'
            if problem:
                warn(f'{path}: line {number} skipped ({problem})')
    return selection, validation


def end_torn_line(path: str) -> None:
    """End a last line a kill left without its newline, so the next record starts a line of its own."""
    if not os.path.exists(path):
        return
    with open(path, 'rb') as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b'\n':
            return
    with open(path, 'a') as f:
        f.write('\n')


def _split(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise ValueError(f'val_split must be a split name (a string of at most 200 characters), got '
                         f'{bounded_repr(value)}')
    return value


def _images(value: Any) -> int:
    """A line's ``val_images``: an int in [0, MAX_VAL_IMAGES] (1e400 parses as inf, which int() refused with an
    OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VAL_IMAGES:
        raise ValueError(f'val_images must be an integer in [0, {MAX_VAL_IMAGES}], got {bounded_repr(value)}')
    return value
