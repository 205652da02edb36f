"""candidates.jsonl: a search's cache, one JSON line per scored subnet, appended as scores come in.

Two kinds of line: ``selection`` (top-1 on the selection images, the costs, the generation and process that scored
it) and ``validation`` (top-1 of a front arch on the whole validation split). A kill can tear the last line; the
reader skips torn and corrupt lines with a warning naming them, and a resume ends the torn line before appending.
Lines are appended with `timm_alphanet.utils.append_jsonl` (one write, then fsync).
"""
import json
import math
import os
from typing import Any, Callable, Dict, Mapping, Tuple

from .pareto_file import arch_json

__all__ = ['CANDIDATES', 'MAX_LINE_BYTES', 'read_candidates', 'end_torn_line', 'selection_line', 'validation_line']

CANDIDATES = 'candidates.jsonl'
MAX_LINE_BYTES = 1 << 16  # a candidate line is a few hundred bytes

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

    Corrupt, torn and over-long lines are skipped with a warning naming the line; a first occurrence wins (later
    duplicates are ignored). `space` validates each arch.
    """
    selection: Selection = {}
    validation: Validation = {}
    if not os.path.exists(path):
        return selection, validation
    with open(path, 'rb') as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b''), start=1):
            problem = None
            if len(raw) > MAX_LINE_BYTES:
                problem = f'longer than {MAX_LINE_BYTES} bytes'
                while raw and not raw.endswith(b'\n'):  # skip the rest of the long line
                    raw = f.readline(MAX_LINE_BYTES + 1)
            elif not raw.endswith(b'\n'):
                problem = 'truncated (no newline: the run was killed while writing it)'
            else:
                try:
                    rec = json.loads(raw.decode('utf-8'))
                except (ValueError, UnicodeDecodeError) as e:
                    problem = f'not JSON: a write cut short by a kill? {str(e)[:80]}'
            if not problem:
                try:
                    arch = space.validate(rec['arch'])
                    if rec.get('kind') == 'validation':
                        val = _finite(rec['top1_val'])
                        validation.setdefault((arch, str(rec['val_split']), int(rec['val_images'])), val)
                    else:
                        selection.setdefault(arch, {'arch': arch, 'top1': _finite(rec['top1'])})
                except (ValueError, KeyError, TypeError, AttributeError) as e:
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


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f'not a finite number: {value!r:.40}')
    return float(value)
