"""Optional dependencies: the packages only some commands need live in setup.cfg's extras, and each is imported
where it is used through `import_optional`, so a plain install builds models and a missing extra is one line
naming the command's need and the install that fixes it."""
import importlib
from types import ModuleType

__all__ = ['EXTRAS', 'MissingExtraError', 'import_optional']

# the extra of setup.cfg that installs each optional top-level package
EXTRAS = {'sklearn': 'demo', 'scipy': 'demo', 'matplotlib': 'demo', 'onnx': 'onnx', 'onnxscript': 'onnx',
          'onnxruntime': 'onnx'}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it (a user error: the
    command-line tools exit with status 2)."""


def import_optional(name: str, purpose: str) -> ModuleType:
    """`importlib.import_module(name)`, or an ImportError saying that `purpose` needs it and which extra installs it
    (`MissingExtraError`).

    Args:
        name: a module of a package listed in `EXTRAS` (e.g. 'scipy.stats').
        purpose: what needs it, for the message (e.g. 'alphanet-latency validate').
    """
    top = name.split('.')[0]
    if top not in EXTRAS:
        raise ValueError(f'{name!r} is not an optional dependency; the optional ones are {", ".join(sorted(EXTRAS))}')
    try:
        return importlib.import_module(name)
    except ImportError:
        package = {'sklearn': 'scikit-learn'}.get(top, top)
        raise MissingExtraError(f'{purpose} needs {package}: pip install "timm_alphanet[{EXTRAS[top]}]"') from None
