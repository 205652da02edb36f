"""A boundary fake of `huggingface_hub.HfApi` for publishing tests: it records every call and lays each upload out
as huggingface_hub's cache does, so ``HF_HUB_OFFLINE=1`` loads (`hf-hub:` in timm) read what was pushed."""
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['FakeHfApi', 'hf_cache_snapshot']


def hf_cache_snapshot(cache_dir: Path, repo_id: str, commit: str, revision: str = 'main') -> Path:
    """The snapshot folder of `repo_id` at `commit` in a huggingface_hub cache, with `revision` pointing to it."""
    repo = Path(cache_dir) / ('models--' + repo_id.replace('/', '--'))
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / revision).write_text(commit)
    snap = repo / 'snapshots' / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


class FakeHfApi:
    """Records calls as (method, args) in `calls`; `upload_folder` commits into the cache at `cache_dir`."""

    def __init__(self, cache_dir: Path, user: str = 'tester'):
        self.cache_dir = Path(cache_dir)
        self.user = user
        self.calls: List[Tuple[str, Dict[str, Any]]] = []
        self.repos: Dict[str, Dict[str, Any]] = {}  # repo_id -> {'private', 'files': {name: bytes}, 'commits'}
        self.collections: Dict[str, List[str]] = {}

    def whoami(self, token: Optional[str] = None) -> Dict[str, Any]:
        self.calls.append(('whoami', {}))
        return {'name': self.user}

    def create_repo(self, repo_id: str, private: Optional[bool] = None, exist_ok: bool = False, **kw: Any):
        self.calls.append(('create_repo', dict(repo_id=repo_id, private=private, exist_ok=exist_ok)))
        if repo_id in self.repos and not exist_ok:
            raise FileExistsError(repo_id)
        self.repos.setdefault(repo_id, {'private': private, 'files': {}, 'commits': 0, 'branches': {'main'}})
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id: str, branch: str, exist_ok: bool = False, **kw: Any) -> None:
        self.calls.append(('create_branch', dict(repo_id=repo_id, branch=branch)))
        self.repos[repo_id]['branches'].add(branch)

    def upload_folder(self, repo_id: str, folder_path: str, revision: Optional[str] = None,
                      ignore_patterns: Any = None, commit_message: Optional[str] = None, **kw: Any):
        # like huggingface_hub: every file under the folder, in subfolders too, through links (to files or folders)
        files: Dict[str, bytes] = {}
        for dirpath, dirnames, filenames in os.walk(folder_path, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            for name in sorted(filenames):
                f = Path(dirpath) / name
                if not name.startswith('.') and f.is_file():
                    files[f.relative_to(folder_path).as_posix()] = f.read_bytes()
        self.calls.append(('upload_folder', dict(repo_id=repo_id, folder_path=folder_path, revision=revision,
                                                 files=sorted(files))))
        repo = self.repos[repo_id]  # the real Hub refuses uploads to a repository that does not exist
        if (revision or 'main') not in repo['branches']:
            raise ValueError(f'no branch {revision}')
        repo['files'].update(files)
        repo['commits'] += 1
        commit = hashlib.sha1(f'{repo_id}@{repo["commits"]}'.encode()).hexdigest()
        snap = hf_cache_snapshot(self.cache_dir, repo_id, commit, revision or 'main')
        for name, data in repo['files'].items():
            (snap / name).parent.mkdir(parents=True, exist_ok=True)
            (snap / name).write_bytes(data)
        return SimpleNamespace(oid=commit)

    def create_collection(self, title: str, namespace: Optional[str] = None, description: Optional[str] = None,
                          private: bool = False, exists_ok: bool = False, **kw: Any):
        slug = f'{namespace}/{title.lower().replace(" ", "-")}-0123'
        self.calls.append(('create_collection', dict(title=title, namespace=namespace, private=private)))
        self.collections.setdefault(slug, [])
        return SimpleNamespace(slug=slug)

    def add_collection_item(self, collection_slug: str, item_id: str, item_type: str, exists_ok: bool = False,
                            **kw: Any):
        self.calls.append(('add_collection_item', dict(slug=collection_slug, item_id=item_id, item_type=item_type)))
        if item_id not in self.collections[collection_slug]:
            self.collections[collection_slug].append(item_id)
        return SimpleNamespace(slug=collection_slug)

    def __repr__(self) -> str:
        return f'FakeHfApi({self.cache_dir})'
