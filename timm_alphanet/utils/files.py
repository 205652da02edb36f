"""Files: bounded reading of what users hand us, the one atomic writer, hashing and the append-only JSON lines log;
no torch.

Every file we read may be truncated, forged or huge: its size is checked before reading (and again while reading),
text must be UTF-8, and errors are `ValueError` (`FileNotFoundError` for a missing file) with a one-line message
that starts with the file name. Everything we write goes through `write_atomic` (whole files) or `append_jsonl`
(one record per write), so a crash never leaves half a file.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

from .messages import bounded_repr, display_path

__all__ = ['MAX_TEXT_BYTES', 'PathLike', 'regular_file_size', 'read_bounded_bytes', 'read_text_file', 'write_atomic',
           'check_writable_folder', 'replace_directory', 'staged_directory', 'replace_symlink', 'sha256_file',
           'append_jsonl', 'LOCK_FILE', 'claim_folder', 'NO_SPACE_ERRNOS']

PathLike = Union[str, os.PathLike]

MAX_TEXT_BYTES = 1 << 20  # configs, arch files and config.json are a few KB; 1 MiB parses in ~3 s at worst


def _with_article(what: str) -> str:
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def regular_file_size(path: PathLike, what: str = 'file') -> int:
    """The size of `path`, checked to be an existing regular file (not a directory, FIFO or device).

    Raises:
        TypeError: `path` is not a str or os.PathLike.
        FileNotFoundError: it does not exist.
        ValueError: it is a directory or not a regular file, or cannot be examined.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'{what} must be a path (str or os.PathLike), got {type(path).__name__}')
    name = display_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f'{what} not found: {name}') from None
    except (OSError, ValueError) as e:  # ValueError: embedded NUL
        raise ValueError(f'{name}: cannot read the {what}: {getattr(e, "strerror", None) or e}') from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f'{name}: is a directory, not {_with_article(what)}')
    if not stat.S_ISREG(st.st_mode):  # FIFOs and devices can block or never end
        raise ValueError(f'{name}: not a regular file, so not {_with_article(what)}')
    return st.st_size


def read_bounded_bytes(path: PathLike, max_bytes: int, what: str = 'file') -> bytes:
    """The content of a regular file of at most `max_bytes` bytes.

    Args:
        path: the file.
        max_bytes: refuse larger files (checked before reading, and again while reading).
        what: what the file is, for messages (e.g. 'arch file').

    Raises:
        TypeError: `path` is not a str or os.PathLike.
        FileNotFoundError: it does not exist.
        ValueError: it is a directory or not a regular file, cannot be read, or is too large.
    """
    size = regular_file_size(path, what)
    name = display_path(path)
    too_large = f'{name}: too large for {_with_article(what)} ({{}} bytes; at most {max_bytes})'
    if size > max_bytes:
        raise ValueError(too_large.format(size))
    try:
        with open(path, 'rb') as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat()
    except OSError as e:
        raise ValueError(f'{name}: cannot read the {what}: {e.strerror or e}') from None
    if len(data) > max_bytes:
        raise ValueError(too_large.format(f'more than {max_bytes}'))
    return data


def read_text_file(path: PathLike, max_bytes: int = MAX_TEXT_BYTES, what: str = 'file') -> str:
    """A UTF-8 text file of at most `max_bytes` bytes (see `read_bounded_bytes`); invalid UTF-8 is a ValueError."""
    data = read_bounded_bytes(path, max_bytes, what)
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise ValueError(f'{display_path(path)}: not a UTF-8 text file (invalid byte at offset {e.start}), '
                         f'so not {_with_article(what)}') from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


NO_SPACE_ERRNOS = (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC))  # a full disk, or a full quota


def _no_space_left(e: OSError, path: PathLike, what: str) -> OSError:
    """A full disk or quota while writing `path`, as one line naming the file: ``OSError(ENOSPC)`` whose strerror is
    the whole message (callers print ``e.strerror``; a write error of its own carries no file name) and whose
    filename is `path`."""
    return OSError(e.errno, f'{display_path(path)}: no space left on its device; {what}', os.fspath(path))


def write_atomic(path: PathLike, data: Union[str, bytes]) -> None:
    """Write `data` to `path` through a hidden temp file beside it, synced, then renamed: readers and a crash never
    see half a file, and a failed write leaves no temp file behind.

    The temp file gets an unpredictable name and is created exclusively (`tempfile.mkstemp`: O_EXCL), so a link
    planted beside the target is never written through; the rename replaces a link at `path` itself, never the
    file it points to.
    """
    path = os.fspath(path)
    head, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix='.tmp', dir=head or '.')
    try:
        # text as given: no newline translation, so every platform writes the same bytes
        with os.fdopen(fd, 'wb') as f:
            if not isinstance(data, (str, bytes)):
                raise TypeError(f'write_atomic writes str or bytes, got {type(data).__name__}')
            f.write(data if isinstance(data, bytes) else data.encode('utf-8'))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; it should look like any other
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:
            raise _no_space_left(e, path, 'it was not written (the file is as it was)') from None
        raise
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def check_writable_folder(folder: PathLike, what: str = 'output folder') -> None:
    """Check, before any slow work, that files can be created in `folder` (or, when it does not exist yet, in its
    nearest existing parent, where it would be created): a ValueError naming it otherwise.

    Asked by creating and removing a private temp file, not with `os.access`: that is what the writers will do, and
    it also sees read-only mounts, ACLs and full quotas (and root, who may write where the mode bits say no).
    """
    path = Path(os.path.abspath(os.fspath(folder)))
    name = display_path(folder)
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f'{name}: cannot write the {what} there ({display_path(probe)} is not a folder)')
    try:
        fd, tmp = tempfile.mkstemp(prefix='.write-check.', dir=probe)
    except OSError as e:
        where = '' if probe == path else f' (it would be created in {display_path(probe)})'
        raise ValueError(f'{name}: cannot write the {what} there{where}: {e.strerror or e}; choose a writable '
                         'folder') from None
    os.close(fd)
    os.unlink(tmp)


def replace_directory(staged: PathLike, directory: PathLike) -> None:
    """Move the finished folder `staged` to `directory`, replacing what is there: the old folder is moved aside
    first and put back if the move fails, so `directory` is at every moment either the old folder or the new one.
    `staged` and `directory` must be on one file system (make `staged` beside `directory`)."""
    staged, directory = Path(staged), Path(directory)
    if not (directory.exists() or directory.is_symlink()):
        os.replace(staged, directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', suffix='.old', dir=directory.parent))
    try:
        os.replace(directory, old / 'x')
        try:
            os.replace(staged, directory)
        except BaseException:
            os.replace(old / 'x', directory)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(directory: PathLike, if_exists: str = 'replace',
                     before_replace: Optional[Callable[[], None]] = None) -> Iterator[Path]:
    """Yield an empty hidden folder beside `directory` that becomes `directory` when the block ends without an
    exception; on any exception (a full disk, Ctrl-C) it is removed and `directory` is left as it was.

    Args:
        directory: the folder to produce.
        if_exists: 'replace' an existing `directory` (`replace_directory`), or 'keep' it and drop ours (a cache
            another process finished first).
        before_replace: called just before the move (e.g. to check again that `directory` may be replaced).
    """
    if if_exists not in ('replace', 'keep'):
        raise ValueError(f"if_exists must be 'replace' or 'keep', got {bounded_repr(if_exists)}")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', suffix='.tmp', dir=directory.parent))
    try:
        try:
            yield staged
        except OSError as e:
            if e.errno not in NO_SPACE_ERRNOS:
                raise
            # named as the file would have been called, not by its staging path
            file = os.fspath(e.filename) if isinstance(e.filename, (str, os.PathLike)) else None
            if file is not None and os.path.dirname(os.path.abspath(file)).startswith(os.path.abspath(staged)):
                file = os.path.join(directory, os.path.relpath(file, staged))
            raise _no_space_left(e, file or directory, f'{display_path(directory)} was not written (its partial '
                                 'copy was removed)') from None
        mask = _umask()  # mkdtemp (and some writers) make files private; the result should look like any folder
        os.chmod(staged, 0o777 & ~mask)
        for f in staged.iterdir():
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o666 & ~mask)
        if before_replace is not None:
            before_replace()
        if if_exists == 'keep' and (directory.exists() or directory.is_symlink()):
            return
        if if_exists == 'keep':
            try:
                os.replace(staged, directory)
            except OSError:  # another process finished first (a non-empty folder cannot be replaced)
                pass
        else:
            replace_directory(staged, directory)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def replace_symlink(link: PathLike, target: str) -> None:
    """Point the symbolic link `link` at `target` (as given, e.g. relative), replacing an old link atomically.

    Raises:
        OSError: the file system has no symbolic links.
    """
    link = Path(link)
    tmp = link.parent / f'.{link.name}.{secrets.token_hex(8)}.tmp'  # symlink() refuses an existing name
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes, read in chunks (weights may be GBs)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def append_jsonl(path: PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line with a single write, then fsync: a crash leaves at most a torn last line, which readers
    of the log skip.

    The file is opened with O_NOFOLLOW: a symbolic link at `path` (also a dangling one) is refused, never written
    through, and so is anything that is not a regular file (ValueError naming the file).
    """
    data = (json.dumps(record, separators=(',', ':')) + '\n').encode()
    name = display_path(path)
    link, odd = f'{name}: is a symbolic link; refusing to append through it', f'{name}: not a regular file; refusing ' \
        'to append to it'
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):  # dangling or not
        raise ValueError(link)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(odd)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_NONBLOCK', 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:  # something planted after the check above
        if e.errno == errno.ELOOP:
            raise ValueError(link) from None
        if e.errno in (errno.ENXIO, errno.EISDIR):
            raise ValueError(odd) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device (O_NONBLOCK: opening it did not block)
            raise ValueError(odd)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


LOCK_FILE = '.lock'

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no claims
    fcntl = None


@contextlib.contextmanager
def claim_folder(folder: PathLike, what: str = 'folder') -> Iterator[Path]:
    """Claim `folder` (created if missing) for one process while the block runs: a second claim of it, from any
    process, is refused with a ValueError naming the folder and the holder's pid and host.

    The claim is an exclusive `fcntl.flock` on ``folder/.lock`` (opened with O_NOFOLLOW, so never through a link),
    which records the holder's pid and host and is removed when the block ends. The kernel releases a flock when its
    process ends, however it ends, so a crashed or killed run never leaves a stale claim (an O_EXCL marker file
    would, and would need guessing whether its pid is still alive, on whichever host); the unlocked ``.lock`` it
    leaves is simply taken over. No-op where there is no `fcntl` (Windows).
    """
    folder = Path(folder)
    name, lock = display_path(folder), folder / LOCK_FILE
    if fcntl is None:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    for _ in range(100):  # retried only when a holder removed the file between our open and our flock
        fd = _lock(folder, lock, name, what)
        try:
            now = os.stat(lock, follow_symlinks=False)
        except OSError:
            now = None
        st = os.fstat(fd)
        if now is not None and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
            break
        os.close(fd)
    else:
        raise ValueError(f'{name}: cannot claim the {what} (its .lock keeps changing)')
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'pid {os.getpid()} host {socket.gethostname()[:100]}\n'.encode(), 0)
        yield folder
    finally:
        try:
            os.unlink(lock)  # while still locked: a claim that opened this file sees it gone and retries
        except OSError:
            pass
        os.close(fd)  # releases the flock


def _lock(folder: Path, lock: Path, name: str, what: str) -> int:
    """An open descriptor of `lock`, flocked exclusively; ValueError naming the holder when another process has it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0) | os.O_NONBLOCK
                     | getattr(os, 'O_CLOEXEC', 0), 0o644)
    except OSError as e:
        why = 'its .lock is a symbolic link' if e.errno == errno.ELOOP else (e.strerror or str(e))
        raise ValueError(f'{name}: cannot claim the {what} ({why})') from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f'{name}: cannot claim the {what} (its .lock is not a regular file)')
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(f'{name}: cannot claim the {what} ({e.strerror or e})') from None
            raise ValueError(f'{name}: the {what} is in use by another process ({_holder(fd)}); wait for it to end '
                             f'or choose another folder') from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> str:
    """'pid N on host H' from a lock file's first bytes, or why not."""
    try:
        text = os.pread(fd, 256, 0).decode('utf-8', 'replace')
    except OSError:
        text = ''
    m = re.match(r'pid (\d{1,10}) host (\S{1,100})', text)
    return f'pid {m.group(1)} on host {m.group(2)}' if m else 'which has not yet recorded its pid'
