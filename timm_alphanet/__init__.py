"""timm_alphanet: AlphaNet supernets and alpha-divergence distillation as timm models.

Importing this package registers the ``alphanet_*`` models in timm's registry: at once when timm is already
imported, else the moment timm is (timm has no plugin discovery, and ``timm.create_model`` needs timm imported
anyway). The package itself imports neither torch nor timm, so the console scripts (`timm_alphanet.cli`) parse
their arguments and answer ``--help`` before paying seconds for them; the public names below load on first use.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any, List, Optional, Sequence

# public name -> the submodule defining it (loaded on first access, PEP 562)
_API = {
    'ALPHANET_ARCHS': 'archs', 'ALPHANET_SPACE': 'archs', 'ALPHANET_TOP1': 'archs',
    'calibrate_bn': 'calibration',
    'count_macs_and_params': 'cost', 'mflops': 'cost', 'num_params': 'cost',
    'extract_subnet': 'export', 'save_pretrained': 'export',
    'AdaptiveAlphaDivergence': 'loss', 'AlphaDivergenceOutput': 'loss', 'KLDivergence': 'loss',
    'alpha_divergence': 'loss',
    'AlphaNet': 'models', 'AlphaNetSupernet': 'models',
    'load_original_checkpoint': 'original',
    'SearchSpace': 'spaces', 'StageSpace': 'spaces', 'SubnetConfig': 'spaces',
    'AlphaDistillationTask': 'task', 'SandwichTask': 'task', 'sandwich_subnets': 'task',
}
_SUBPACKAGES = ('archs', 'calibration', 'cli', 'cost', 'data', 'evaluation', 'export', 'layers', 'loss', 'models',
                'original', 'processes', 'search', 'sources', 'spaces', 'task', 'testing', 'train', 'utils')

__all__ = [
    'ALPHANET_ARCHS', 'ALPHANET_SPACE', 'ALPHANET_TOP1', 'SearchSpace', 'StageSpace', 'SubnetConfig',
    'AlphaNet', 'AlphaNetSupernet', 'mflops', 'num_params', 'count_macs_and_params',
    'extract_subnet', 'save_pretrained', 'calibrate_bn', 'load_original_checkpoint',
    'alpha_divergence', 'AlphaDivergenceOutput', 'AdaptiveAlphaDivergence', 'KLDivergence',
    'AlphaDistillationTask', 'SandwichTask', 'sandwich_subnets',
]
__version__ = '0.1.0'


def __getattr__(name: str) -> Any:
    """The public names and subpackages, imported on first access."""
    if name in _API:
        value = getattr(importlib.import_module(f'.{_API[name]}', __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f'.{name}', __name__)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))


def _register_models() -> None:
    importlib.import_module('.models', __name__)  # its @register_model entrypoints fill timm's registry


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds timm once, through the other finders, and has its loader import our models right after timm's own
    code ran, so ``import timm_alphanet; import timm; timm.create_model('alphanet_a0')`` works as before."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != 'timm':
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot, and no recursion into ourselves below
        spec = importlib.util.find_spec('timm')
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """timm's own loader, followed by `_register_models`."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _register_models()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...: timm's loader answers
        return getattr(self.loader, name)


if 'timm' in sys.modules:
    _register_models()
else:
    sys.meta_path.insert(0, _RegisterAfterTimm())
