"""The benchmarks' machine-readable output: ``--json PATH`` writes the side-by-side ratios (what run_all.py reports)
and the measurements behind them."""
import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: run without installing

from timm_alphanet.utils import write_atomic  # noqa: E402

__all__ = ['add_json_argument', 'write_json']


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--json', type=Path, default=None, metavar='PATH',
                        help='also write the ratios and measurements as JSON to PATH')


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no NaN/inf), tuples lists, other objects their str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json(path: Optional[Path], benchmark: str, ratios: Dict[str, float], details: Dict[str, Any],
               notes: Optional[Dict[str, str]] = None, argv: Optional[Sequence[str]] = None) -> None:
    """Write ``{benchmark, command, ratios, notes, details}`` to `path` (atomically; nothing when `path` is None).

    `ratios` are the headline side-by-side numbers (name -> ratio); `notes` say how to read each (e.g. 'lower is
    faster', a goal); `details` hold the raw measurements.
    """
    if path is None:
        return
    command = ' '.join(['python', os.path.relpath(sys.argv[0]), *(sys.argv[1:] if argv is None else argv)])
    data = {'benchmark': benchmark, 'command': command, 'ratios': _plain(ratios), 'notes': notes or {},
            'details': _plain(details)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2) + '\n')
