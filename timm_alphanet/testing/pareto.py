"""A pareto.json as `alphanet-search` writes it (format version 1), for export tests: built from the format's
description (format, supernet source + sha256, space, objectives, limits, search parameters, seed, calibration recipe,
selection split, validation split, latency table device, progress, points with arch in the original keys, mflops,
params_m, latency_ms, top1, top1_val)."""
from typing import Any, Dict, Optional, Sequence

from ..search.pareto_file import FORMAT_NAME

__all__ = ['pareto_dict']


def pareto_dict(space: Any, sha256: str, archs: Sequence[Any], recipe: Dict[str, Any],
                top1: Optional[Sequence[float]] = None, **overrides: Any) -> Dict[str, Any]:
    """A format-1 pareto.json of `archs` (SubnetConfigs of `space`), with `overrides` replacing top-level keys."""
    from ..cost.flops import count_macs_and_params

    points = []
    for i, arch in enumerate(archs):
        macs, params = count_macs_and_params(arch, space, num_classes=10)
        points.append({
            'arch': arch.to_original_dict(), 'mflops': macs / 1e6, 'params_m': params / 1e6,
            'latency_ms': 1.5 + i if i % 2 == 0 else None,
            'top1': (top1[i] if top1 is not None else 50.0 + 10 * i), 'top1_val': 40.0 + 10 * i if i else None,
        })
    data = {
        'format': f'{FORMAT_NAME}/1',  # version 1 as written, even once the package writes a later one
        'supernet': {'spec': 'runs/supernet', 'kind': 'local-dir', 'path': 'runs/supernet', 'sha256': sha256},
        'space': space.to_dict(),
        'objectives': ['top1', 'mflops'],
        'limits': {'mflops': [0, 1000]},
        'search': {'population': 8, 'generations': 2, 'mutation_prob': 0.1, 'seed': 0},
        'calibration': recipe,
        'selection': {'split': recipe.get('split', 'train'), 'num_images': 64, 'disjoint_from': 'calibration'},
        'validation': {'split': 'validation', 'num_images': 355},
        'latency': {'source': 'table', 'device': 'test CPU', 'sha256': 'ef' * 32},
        'progress': {'generations_done': 2, 'generations': 2, 'evaluated': 16, 'complete': True},
        'points': points,
    }
    data.update(overrides)
    return data
