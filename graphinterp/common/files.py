"""Small file utilities shared by every module: atomic writes, output checks, locks.

Missing folders: the writers here (:func:`atomic_write`, :func:`output_lock`) create the missing
parent folders of their path, a convenience of the Python API (``save_checkpoint("runs/a/m.pt", ...)``
works like ``mkdir -p``). The command line does not: it checks every output with
``check_writable(path, parent_must_exist=True)`` before any work, so an output file's folder must
already exist there and a typo never creates a folder (the one rule, in :func:`check_writable`).

``resolve_device`` lives in :mod:`graphinterp.common.devices` and is re-exported here.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import IO, Iterator, Union

from graphinterp.common.devices import resolve_device  # noqa: F401 - re-exported, its home before the split
from graphinterp.common.errors import GraphinterpError

__all__ = ["OutputPathError", "TEMP_MARK", "atomic_write", "check_writable", "output_lock", "remove_stale_temps",
           "resolve_device"]

PathLike = Union[str, "os.PathLike[str]"]

#: Every temporary file of :func:`atomic_write` is named ``.<name>.graphinterp-<host>-<pid>-<random>.tmp``, ``<host>``
#: 8 hex digits of the machine's name: a folder shared between machines (NFS) holds other machines' temporary
#: files, whose process ids mean nothing here (names without a host, as written until 2026-12-08, are this machine's).
TEMP_MARK = "graphinterp"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.%s-(?:(?P<host>[0-9a-f]{8})-)?(?P<pid>\d+)-[0-9a-f]+\.tmp$" % TEMP_MARK)
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


class OutputPathError(GraphinterpError, OSError):
    """An output path cannot be written: its folder is a file or read-only, or it is not a regular file."""


def check_writable(path: PathLike, *, parent_must_exist: bool = False) -> Path:
    """Raise :class:`OutputPathError` unless a regular file can be (re)placed at ``path``.

    Refused: an existing ``path`` that is not a regular file (a folder, a symbolic link, a device,
    a FIFO, a socket); a parent that is a file; a folder (or, when the parent does not exist yet,
    its nearest existing ancestor) in which no file can be created. Writability is probed by
    creating and removing a temporary file, so it is right also for root and read-only mounts.
    Nothing is left behind and no folder is created.

    Parameters
    ----------
    path : str or os.PathLike
        The file to be written.
    parent_must_exist : bool, default False
        Refuse a ``path`` whose folder does not exist yet (``folder 'x' does not exist; create it
        first or fix the path``). The command line's rule, so that a typo in an output path never
        creates a folder; the default suits the Python writers, which create missing folders.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputPathError
        ``path`` cannot be written.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> check_writable(os.path.join(d, "new", "x.json")).name
    'x.json'
    >>> try:
    ...     check_writable(os.path.join(d, "new", "x.json"), parent_must_exist=True)
    ... except OutputPathError as err:
    ...     print(str(err).split(": ", 1)[1].replace(d + os.sep, ""))
    folder 'new' does not exist; create it first or fix the path
    >>> try:
    ...     check_writable(d)
    ... except OutputPathError as err:
    ...     print(str(err).split(": ", 1)[1])
    it is a folder, not a file; choose another output path
    """
    path = Path(path)
    _refuse_non_regular(path)
    ancestor = path.parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot write {path}: {ancestor} is not a folder")
    if parent_must_exist and ancestor != path.parent:
        raise OutputPathError(f"cannot write {path}: folder {str(path.parent)!r} does not exist; "
                              "create it first or fix the path")
    try:
        fd, probe = _mkstemp(ancestor, path.name)
    except OSError as err:
        raise OutputPathError(f"cannot write {path}: {_reason(err)} in {ancestor}") from None
    try:
        os.close(fd)
    finally:  # also on Ctrl-C: no probe is left beside the output
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return path


def _refuse_non_regular(path: Path) -> None:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # absent (or under a file: the caller says so)
        return
    except OSError as err:
        raise OutputPathError(f"cannot write {path}: {_reason(err)}") from None
    if stat.S_ISREG(st.st_mode):
        return
    kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a symbolic link" if stat.S_ISLNK(st.st_mode)
            else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "a device" if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else "not a regular file")
    raise OutputPathError(f"cannot write {path}: it is {kind}, not a file; choose another output path")


def _reason(err: OSError) -> str:
    return (err.strerror or type(err).__name__).lower() if isinstance(err, OSError) else str(err)


def _mkstemp(folder: Path, name: str):
    """Create ``.<name>.graphinterp-<host>-<pid>-<hex>.tmp`` exclusively in ``folder``; returns ``(fd, path)``."""
    for _ in range(100):
        tmp = folder / f".{name}.{TEMP_MARK}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))  # pragma: no cover


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def remove_stale_temps(path: PathLike) -> int:
    """Remove temporary files that :func:`atomic_write` left beside ``path`` in processes that died.

    A process killed during a write (SIGKILL, power loss) cannot remove its temporary file;
    the next write of the same output does, when the process that made it no longer runs on this machine
    (another machine's files, in a shared folder, are left alone: its process ids cannot be checked here).
    Returns the number of files removed.
    """
    path = Path(path)
    removed = 0
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return 0
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if (not m or m.group("name") != path.name or m.group("host") not in (None, _HOST)  # another machine's
                or _pid_alive(int(m.group("pid")))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it into place only on success.

    An exception (or an interrupt) inside the ``with`` block removes the temporary file
    and leaves any existing ``path`` untouched, so no half-written output can remain. The
    temporary file is called ``.<name>.graphinterp-<host>-<pid>-<random>.tmp``; ones left by a
    process that was killed are removed by the next write of the same path.

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Missing parent folders are created (like ``mkdir -p``), for callers
        from Python; the command line has refused a missing folder before any work (see the
        module docstring).
    mode : {"wb", "w"}
        Binary or text mode (text is written as UTF-8).

    Yields
    ------
    file object
        The open temporary file; write to it inside the ``with`` block.

    Raises
    ------
    OutputPathError
        ``path`` exists and is not a regular file (a folder, symbolic link, device or FIFO is
        never replaced), or the folder cannot be created or written.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with atomic_write(os.path.join(d, "x.txt"), "w") as f:
    ...     _ = f.write("hello")
    >>> open(os.path.join(d, "x.txt")).read()
    'hello'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    _refuse_non_regular(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create the folder of {path}: {_reason(err)}") from None
    remove_stale_temps(path)
    try:
        fd, tmp = _mkstemp(path.parent, path.name)
    except OSError as err:
        raise OutputPathError(f"cannot write {path}: {_reason(err)}") from None
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _final_mode(path))  # created 0600: the replaced file's permissions, else the usual ones
        _refuse_non_regular(path)  # made a folder, link or FIFO while we wrote: leave it alone
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise OutputPathError(f"cannot write {path}: {_reason(err)}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def output_lock(path: PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` for the duration of the ``with`` block.

    The lock is ``.<name>.lock`` beside ``path`` (missing folders are created, as by
    :func:`atomic_write`), taken with
    ``fcntl.flock`` so it is released when the process dies; the file is removed on exit. A second
    process asking for the same lock gets :class:`OutputPathError` at once instead of silently
    overwriting the first one's output. Where ``fcntl`` does not exist the block runs unlocked.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "model.pt")
    >>> with output_lock(out) as lock:
    ...     lock.name
    '.model.pt.lock'
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield Path(path)
        return
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    _refuse_non_regular(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create the folder of {path}: {_reason(err)}") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise OutputPathError(f"cannot write {path}: {_reason(err)} (lock file {lock})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputPathError(f"{path} is being written by another process (lock {lock} is held); "
                                  "wait for it to finish or choose another output") from None
        try:  # the holder before us may have removed the file between our open and our lock: retry
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _final_mode(path: Path) -> int:
    """The permissions of the file ``path`` (kept when it is replaced: a private 0600 file stays private), else
    ``0666`` less the umask."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
