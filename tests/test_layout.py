"""The package's shape: imports point one way (DESIGN's layering), torch-free parts stay torch-free, and every
moved module still answers at its old import path."""
import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / 'timm_alphanet'

# lower tiers never import higher ones; the longest matching prefix decides a module's tier
TIERS = {
    'spaces': 0, 'archs': 0, 'cost.ops': 0, 'cost.flops': 0, 'search.evolution': 0, 'search.pareto': 0,
    'layers': 1,
    'models': 2,
    'loss': 3, 'task': 3, 'calibration': 3, 'evaluation': 3, 'export': 3, 'original': 3, 'cost': 3, 'sources': 3,
    'io_checks': 3, 'processes': 3,
    'train': 4, 'search': 4,
    'testing': 5,
    'cli': 6,
}
SHIMS = {  # old path -> (new path, names)
    'config': ('spaces', ['SubnetConfig', 'SearchSpace', 'StageSpace', 'BlockSpec', 'make_divisible']),
    'flops': ('cost', ['count_macs_and_params', 'mflops', 'num_params']),
    'bn_calibration': ('calibration', ['calibrate_bn']),
    'sandwich': ('task', ['SandwichTask']),
    'distillation': ('task', ['AlphaDistillationTask']),
    'sampling': ('task', ['sandwich_subnets']),
    'convert': ('original.convert', ['convert_checkpoint', 'resolve_subnets', 'SUBNET_NAMES']),
    'classify': ('cli.classify', ['classify', 'main']),
}
TORCH_FREE = ('spaces', 'cost.ops', 'cost.flops', 'archs', 'search.evolution', 'search.pareto')
TOP = ('__init__', *SHIMS)  # the package root and the shims may import anything


def _modules():
    for path in sorted(PKG.rglob('*.py')):
        parts = path.relative_to(PKG).with_suffix('').parts
        if parts[-1] == '__init__' and len(parts) > 1:
            parts = parts[:-1]
        yield '.'.join(parts), path


def _imports(name, path):
    """Absolute names (without the package prefix) of every timm_alphanet module `name` imports, anywhere."""
    is_pkg = path.name == '__init__.py'
    base = name.split('.') if is_pkg else name.split('.')[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = [*anchor, *(node.module.split('.') if node.module else [])]
                targets = [mod] if node.module else [[*mod, a.name] for a in node.names]
                out.update('.'.join(t) for t in targets if t)
            elif node.module and node.module.startswith('timm_alphanet.'):
                out.add(node.module[len('timm_alphanet.'):])
        elif isinstance(node, ast.Import):
            out.update(a.name[len('timm_alphanet.'):] for a in node.names if a.name.startswith('timm_alphanet.'))
    return out


def _external(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split('.')[0])
    return names


def _tier(name):
    best = max((p for p in TIERS if name == p or name.startswith(p + '.')), key=len, default=None)
    return None if best is None else TIERS[best]


def test_every_module_has_a_tier():
    missing = [n for n, _ in _modules() if n not in TOP and _tier(n) is None]
    assert not missing, f'add these modules to TIERS: {missing}'


def test_imports_point_one_way():
    bad = []
    for name, path in _modules():
        if name in TOP:
            continue
        for target in _imports(name, path):
            if target == '' or target.split('.')[0] in ('__init__',):
                bad.append(f'{name} imports the package root')
            elif _tier(target) is not None and _tier(target) > _tier(name):
                bad.append(f'{name} (tier {_tier(name)}) imports {target} (tier {_tier(target)})')
    assert not bad, '\n'.join(bad)


def test_torch_free_parts_import_no_torch():
    bad = {n: sorted(_external(p) & {'torch', 'timm', 'torchvision', 'numpy'}) for n, p in _modules()
           if any(n == t or n.startswith(t + '.') for t in TORCH_FREE)}
    assert not {n: v for n, v in bad.items() if v}


def test_the_import_graph_check_sees_violations(tmp_path):
    # the checker itself: a lower tier importing a higher one is reported
    path = tmp_path / 'mod.py'
    path.write_text('from ..train import run\nfrom .search_space import SearchSpace\n')
    assert _imports('spaces.mod', path) == {'train', 'spaces.search_space'}
    assert _tier('train') > _tier('spaces.mod')


@pytest.mark.parametrize('old', sorted(SHIMS))
def test_old_import_paths_keep_working(old):
    new, names = SHIMS[old]
    a, b = importlib.import_module(f'timm_alphanet.{old}'), importlib.import_module(f'timm_alphanet.{new}')
    for n in names:
        assert getattr(a, n) is getattr(b, n), n


def test_shipped_code_cites_no_file_outside_the_repo():
    for _, path in _modules():
        text = path.read_text()
        assert 'DESIGN' not in text and '../shared' not in text and 'shared/reference' not in text, path
