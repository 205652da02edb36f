"""Publishing model folders on the Hugging Face Hub with `huggingface_hub.HfApi`.

Unlike timm's `push_to_hf_hub` (which writes a card only when the repository has none, with an apache-2.0 default),
every push regenerates the card from the folder's config.json, with the model's own license and ``hf-hub:`` usage
lines, and all points of one Pareto front are grouped in a Hub collection.

The token comes from the standard Hugging Face login (``hf auth login``) or ``HF_TOKEN`` through
`huggingface_hub.get_token`; it is handed to `HfApi` and never printed, logged or written.
"""
import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import huggingface_hub.constants as hf_constants
import huggingface_hub.errors as hf_errors
from huggingface_hub import HfApi, get_token

from ..utils import bounded_repr, display_path
from .folder import package_version, read_config, save_pretrained, update_metadata

__all__ = ['HubPublisher', 'parse_hub_target', 'repo_name', 'hub_token', 'push_to_hub', 'push_folders',
           'push_converted', 'registered_repo_name', 'save_pretrained', 'HUB_FILES', 'upload_files']

# what a push uploads: the files save_pretrained / alphanet-export / alphanet-convert write into a model folder
# (timm's config.json and weights, the card, the front plot, the ONNX graph); nothing else is ever sent
HUB_FILES = ('config.json', 'model.safetensors', 'README.md', 'pareto.png', 'model.onnx')

_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*$')
MAX_REPO_NAME = 96  # the Hub's limit on a repository name
_TOKEN = re.compile(r'hf_[A-Za-z0-9]{6,}')  # a Hugging Face token, should a message ever quote one
# what a failed Hub call raises: HTTP refusals (401, 403, 404, 5xx; HfHubHTTPError), transport failures
# (huggingface_hub's HTTP client's HTTPError), and OSError for both in older huggingface_hub versions
HUB_ERRORS = (hf_errors.HfHubHTTPError, OSError) + ((hf_errors.HTTPError,) if hasattr(hf_errors, 'HTTPError') else ())


def parse_hub_target(target: str) -> Tuple[str, str]:
    """``ORG`` or ``ORG/PREFIX`` -> (org, prefix); ValueError naming the allowed characters."""
    if not isinstance(target, str) or not target.strip():
        raise ValueError('a Hub target must be ORG or ORG/PREFIX, e.g. timm-alphanet or me/digits')
    parts = target.strip().split('/')
    if len(parts) > 2 or not all(_NAME.match(p) for p in parts):
        raise ValueError(f'bad Hub target {target[:100]!r}: expected ORG or ORG/PREFIX made of letters, digits, '
                         "'-', '_' and '.'")
    return parts[0], parts[1] if len(parts) == 2 else ''


def repo_name(prefix: str, name: str) -> str:
    """The repository name of model `name` under `prefix` (``<prefix>-<name>``, or `name` without a prefix)."""
    full = f'{prefix}-{name}' if prefix else name
    if not _NAME.match(full) or len(full) > MAX_REPO_NAME or '--' in full or '..' in full:
        raise ValueError(f'{full[:120]!r} is not a valid Hub repository name (letters, digits, "-", "_", "."; at most '
                         f'{MAX_REPO_NAME} characters; no "--" or "..")')
    return full


def hub_token() -> str:
    """The Hugging Face token of the standard login; ValueError (without any secret) when offline or logged out."""
    if hf_constants.HF_HUB_OFFLINE:
        raise ValueError('cannot push to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1)')
    token = get_token()
    if not token:
        raise ValueError('cannot push to the Hugging Face Hub: not logged in; run `hf auth login` or set HF_TOKEN')
    return token


def _short_error(e: BaseException) -> str:
    text = _TOKEN.sub('hf_***', ' '.join(str(e).split()))[:300]
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # another file system, or none that links
        shutil.copy2(src, dst, follow_symlinks=False)


def upload_files(folder: Union[str, os.PathLike]) -> List[str]:
    """The names of the files a push of `folder` uploads: those of `HUB_FILES` it holds, each a regular file.

    Hidden entries (names starting with '.') are never uploaded and are skipped. Anything else -- a symbolic link
    (to a file or a folder, whatever its name), a subfolder, a file the export does not write -- is refused, so
    a push never sends what a link points to or what was put into the folder by hand.

    Raises:
        ValueError: one line naming the folder and every refused entry.
    """
    path = os.fspath(folder)
    found, refused = [], []
    with os.scandir(path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith('.'):
                continue
            if entry.is_symlink():
                refused.append(f'{bounded_repr(entry.name, 80)} (a symbolic link)')
            elif entry.name not in HUB_FILES:
                refused.append(f'{bounded_repr(entry.name, 80)} (not a file the export writes)')
            elif not entry.is_file(follow_symlinks=False):
                refused.append(f'{bounded_repr(entry.name, 80)} (not a regular file)')
            else:
                found.append(entry.name)
    if refused:
        shown = ', '.join(refused[:10]) + (f' and {len(refused) - 10} more' if len(refused) > 10 else '')
        raise ValueError(f'{display_path(path)}: refusing to publish {shown}; a model folder pushed to the Hub may '
                         f'hold only the regular files {", ".join(HUB_FILES)}; nothing was uploaded')
    return found


@contextlib.contextmanager
def _upload_copy(folder: Path) -> Iterator[Path]:
    """A hidden sibling of `folder` with the files `upload_files` allows (hard links where possible), removed
    afterwards.

    A push writes its metadata (``hub_repo``, the card's ``hf-hub:`` lines) into this copy and uploads it, so `folder`
    itself is changed only after the upload succeeded and never claims a repository it is not in. The copy is
    checked again once made (a file swapped for a link meanwhile is refused there too).
    """
    names = upload_files(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name[:50]}.push-', dir=folder.parent))
    try:
        for name in names:
            _link_or_copy(str(folder / name), str(tmp / name))
        try:  # a link or another entry that replaced a checked file meanwhile
            same = upload_files(tmp) == names
        except ValueError:
            same = False
        if not same:
            raise ValueError(f'{display_path(folder)}: its files changed while the push copied them; nothing was '
                             'uploaded')
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class HubPublisher:
    """Pushes model folders to ``<org>/<prefix>-<name>`` repositories and groups them in collections.

    Construction checks everything that can fail before any work: the target's syntax, offline mode, the token,
    and that the Hub answers for that token (`HfApi.whoami`). Raises ValueError otherwise.

    Args:
        target: ``ORG`` or ``ORG/PREFIX``.
        private: create new repositories (and collections) private.
        revision: push to this branch (created when missing) instead of main.
        api: an `HfApi`-like object (default: ``HfApi(token=<login token>)``).
    """

    def __init__(self, target: str, private: bool = False, revision: Optional[str] = None, api: Any = None):
        self.org, self.prefix = parse_hub_target(target)
        if revision is not None and not re.match(r'^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$', revision):
            raise ValueError(f'bad revision {revision[:100]!r}: a branch name of letters, digits, ".", "_", "-", "/"')
        self.private = private
        self.revision = revision
        token = hub_token()
        self.api = api if api is not None else HfApi(token=token, library_name='timm_alphanet',
                                                     library_version=package_version())
        try:
            self.api.whoami()
        except Exception as e:  # any failure here (network, HTTP 401) means no push can work
            raise ValueError(f'cannot push to the Hugging Face Hub: {_short_error(e)}') from None

    def repo_id(self, name: str) -> str:
        """The repository id model `name` is pushed to."""
        return f'{self.org}/{repo_name(self.prefix, name)}'

    def push(self, folder: Union[str, os.PathLike], repo_id: Optional[str] = None,
             base_model: Optional[str] = None) -> str:
        """Upload `folder` (its card regenerated for `repo_id`) and return the repository id.

        Args:
            folder: a model folder (config.json with our metadata, weights, card).
            repo_id: default: `repo_id` of the folder's recorded name.
            base_model: the repository the model derives from (e.g. its published supernet), for the card.
        """
        folder = Path(folder)
        upload_files(folder)  # links, subfolders and stray files are refused before anything is read or created
        config = read_config(folder)
        repo_id = repo_id or self.repo_id(config.get('timm_alphanet', {}).get('name') or folder.name)
        try:
            repo_id = self.api.create_repo(repo_id, private=self.private, exist_ok=True).repo_id
            if self.revision:
                self.api.create_branch(repo_id, branch=self.revision, exist_ok=True)
            changes = {'hub_repo': repo_id, **({'base_model': base_model} if base_model else {})}
            with _upload_copy(folder) as upload:
                update_metadata(upload, changes, repo_id=repo_id)  # the card is regenerated on every push
                self.api.upload_folder(repo_id=repo_id, folder_path=str(upload), revision=self.revision,
                                       commit_message=f'Upload {folder.name} with timm_alphanet {package_version()}',
                                       ignore_patterns=['.*'])
        except HUB_ERRORS as e:
            raise ValueError(f'{str(folder)[:300]}: pushing to the Hugging Face Hub repository {repo_id} failed '
                             f'({_short_error(e)}); the folder is unchanged') from None
        update_metadata(folder, changes, repo_id=repo_id)  # only now does the folder say it is on the Hub
        return repo_id

    def collect(self, title: str, repo_ids: Sequence[str], description: Optional[str] = None) -> str:
        """Put `repo_ids` (in order) into the collection `title` of the org (created when missing); returns its slug."""
        try:
            collection = self.api.create_collection(title[:59], namespace=self.org, description=description,
                                                    private=self.private, exists_ok=True)
            for repo_id in repo_ids:
                self.api.add_collection_item(collection.slug, repo_id, 'model', exists_ok=True)
        except HUB_ERRORS as e:
            raise ValueError(f'grouping {", ".join(repo_ids)[:300]} in the Hugging Face Hub collection '
                             f'{title[:59]!r} of {self.org} failed ({_short_error(e)}); the models are pushed') from None
        return collection.slug


def push_to_hub(folder: Union[str, os.PathLike], repo_id: str, private: bool = False, revision: Optional[str] = None,
                base_model: Optional[str] = None, api: Any = None) -> str:
    """Push one model folder to `repo_id` (created when missing; the card is regenerated); returns the repo id."""
    if not isinstance(repo_id, str) or repo_id.count('/') != 1:
        raise ValueError(f'repo_id must be ORG/NAME, got {str(repo_id)[:100]!r}')
    org, name = repo_id.split('/')
    publisher = HubPublisher(org, private=private, revision=revision, api=api)
    return publisher.push(folder, f'{org}/{repo_name("", name)}', base_model=base_model)


def registered_repo_name(config: Mapping[str, Any]) -> Optional[str]:
    """The repository name `pretrained=True` of the config's architecture downloads from (``alphanet_a3.in1k``)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(config['architecture'], allow_unregistered=True)
    hub_id = getattr(cfg, 'hf_hub_id', None) if cfg is not None else None
    return hub_id.split('/', 1)[1] if isinstance(hub_id, str) and '/' in hub_id else None


def push_converted(publisher: HubPublisher, supernet: Union[str, os.PathLike],
                   subnets: Sequence[Union[str, os.PathLike]]) -> List[str]:
    """Push a converted supernet, then its subnets with the supernet as their `base_model`; returns the repo ids.

    Without a prefix, a subnet whose architecture the registry publishes (``alphanet_a0`` ... ``alphanet_a6``) goes to
    the repository its `pretrained=True` downloads from, in the publisher's org: pushing to the org of
    `timm_alphanet.models.HF_HUB_ORG` makes `pretrained=True` work for everyone.
    """
    base = publisher.push(supernet)
    repos = [base]
    for folder in subnets:
        name = None if publisher.prefix else registered_repo_name(read_config(folder))
        repos.append(publisher.push(folder, f'{publisher.org}/{name}' if name else None, base_model=base))
    return repos


def push_folders(publisher: HubPublisher, folders: List[Path], collection: Optional[str] = None,
                 description: Optional[str] = None, base_model: Optional[str] = None) -> List[str]:
    """Push every folder with `publisher`; with `collection`, group them in that collection. Returns the repo ids."""
    repo_ids = [publisher.push(f, base_model=base_model) for f in folders]
    if collection:
        publisher.collect(collection, repo_ids, description)
    return repo_ids
