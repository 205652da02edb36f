"""The package's shape: imports point one way (DESIGN's layering), torch-free parts stay torch-free, and no module
reaches into another package's private plumbing."""
import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / 'timm_alphanet'

# lower tiers never import higher ones; the longest matching prefix decides a module's tier; utils (file and value
# plumbing) sits below everything
TIERS = {
    'utils': 0,
    'spaces': 1, 'archs': 1, 'cost.ops': 1, 'cost.flops': 1, 'search.evolution': 1, 'search.pareto': 1,
    # pareto.json and its report: torch-free, so export (tier 4) and the runner (tier 5) read it through one module
    'search.pareto_file': 1, 'search.pareto_report': 1,
    'layers': 2, 'cost.slimmable': 2,  # torch, but no model: the slimmable models count their widths with it
    'models': 3,
    'loss': 4, 'task': 4, 'calibration': 4, 'data': 4, 'evaluation': 4, 'export': 4, 'original': 4, 'cost': 4,
    'sources': 4, 'processes': 4,
    'train': 5, 'search': 5,
    'testing': 6,
    'cli': 7,
}
TORCH_FREE = ('utils', 'spaces', 'cost.ops', 'cost.flops', 'archs', 'search.evolution', 'search.pareto',
              'search.pareto_file', 'search.pareto_report')
TOP = ('__init__',)  # the package root may import anything


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


def test_shipped_code_cites_no_file_outside_the_repo():
    for _, path in _modules():
        text = path.read_text()
        assert 'DESIGN' not in text and '../shared' not in text and 'shared/reference' not in text, path


def _private_reach(importer, target):
    """True when `target` is a private module (a part starting with '_') of a package `importer` is not inside."""
    parts = target.split('.')
    for i, part in enumerate(parts):
        if part.startswith('_') and part != '__init__':
            owner = '.'.join(parts[:i])
            return not (importer == owner or importer.startswith(owner + '.')) if owner else True
    return False


def test_no_module_reaches_into_another_package_private_plumbing():
    bad = sorted(f'{name} imports {t}' for name, path in _modules() for t in _imports(name, path)
                 if _private_reach(name, t))
    assert not bad, '\n'.join(bad)


def test_the_private_reach_check_sees_violations():
    assert _private_reach('task.sandwich', 'models._supernet')
    assert not _private_reach('models.alphanet', 'models._supernet')
    assert not _private_reach('cli.train', 'cli._common')
    assert not _private_reach('task.sandwich', 'models.alphanet')
