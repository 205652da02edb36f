"""--push-to-hub for the console scripts: access is checked before any work; when it fails, the error is printed at
once, the local model folders are still written, and the script ends with status 2 saying nothing was pushed."""
import sys
from typing import Any, List, Optional

from ._common import fail

__all__ = ['Publishing']


class Publishing:
    """The publisher of ``--push-to-hub TARGET`` (None when not asked or not possible) and what went wrong."""

    def __init__(self, prog: str, target: Optional[str], private: bool, revision: Optional[str], output: str):
        self.prog, self.output = prog, output
        self.problems: List[str] = []
        self.publisher: Optional[Any] = None  # a HubPublisher
        if target:
            from ..export.hub import HubPublisher  # here: the export package imports torch

            try:
                self.publisher = HubPublisher(target, private=private, revision=revision)
            except ValueError as e:
                self.problems.append(str(e))
                print(f'{prog}: error: {e}; the model folders will still be written to {output}', file=sys.stderr,
                      flush=True)

    def finish(self, status: int) -> int:
        """`status`, or exit 2 when --push-to-hub could not push."""
        if self.problems:
            fail(self.prog, f'nothing was pushed ({self.problems[0]}); the model folders are in {self.output}: push '
                            'them with timm_alphanet.export.push_to_hub(folder, "ORG/NAME") once logged in')
        return status
