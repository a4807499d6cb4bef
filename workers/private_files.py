"""Secrets and Unix sockets in directories only this user may change, checked rather than assumed.

A private directory is a real directory (no symbolic link) owned by this process's effective uid
that neither group nor others may write, as ssh's ``StrictModes`` asks of ``~/.ssh``: nobody else
can add, replace or remove its entries. Those this module creates have mode 0700; its ancestors
are the deployment's choice and trusted. A secret (mode 0600) or a socket (0600) is created at an
unpredictable temporary name, exclusively (``O_EXCL``; ``bind`` fails on any existing name), then
renamed onto its path: a rename replaces a symbolic link there, never follows it.

Standard library only: the zygote launcher (:mod:`workers.warm.forks`) imports it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

from workers.errors import UnsafePathError

KINDS = {
    "directory": (stat.S_IFDIR, stat.S_IWGRP | stat.S_IWOTH, "700"),
    "secret file": (stat.S_IFREG, 0o077, "600"),
    "socket": (stat.S_IFSOCK, 0, ""),
}
"""What a path must be -> (its file type, the mode bits refused, the mode that fixes them)."""
SECRET_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def private_dir(path: Path) -> Path:
    """Create directory ``path`` (mode 0700, parents as needed) if missing; return it.

    Raises:
        UnsafePathError: ``path`` is a symbolic link or no directory, is another uid's, or is
            writable by group or others.
    """
    with contextlib.suppress(FileExistsError):  # a file, a dangling link: _check says which
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check(path, os.lstat(path), "directory")
    return path


def write_secret(path: Path, text: str) -> Path:
    """Replace ``path`` by a file of mode 0600 holding ``text``, in private directory
    ``path.parent`` (:func:`private_dir`); a reader sees the old file or the new one, whole.

    Raises:
        UnsafePathError: the directory is not private.
        OSError: the file could not be written (nothing is left behind).
    """
    private_dir(path.parent)
    tmp = _temp_name(path)
    fd = os.open(tmp, SECRET_FLAGS, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_secret(path: Path) -> str:
    """The text of ``path``, a regular file of this user's (no symbolic link) that group and
    others can neither read nor write.

    Raises:
        FileNotFoundError: nothing is at ``path``.
        UnsafePathError: something else is.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        _check(path, os.lstat(path), "secret file")  # raises: a symbolic link
        raise
    with os.fdopen(fd, encoding="utf-8") as f:
        _check(path, os.fstat(fd), "secret file")
        return f.read()


def bind_socket(path: Path) -> socket.socket:
    """A Unix stream socket listening at ``path`` (mode 0600) in private directory
    ``path.parent``; it replaces an older socket of this user's there, and nothing else.

    Raises:
        UnsafePathError: the directory is not private, or ``path`` is something else than a
            socket of this user's (a file, a symbolic link, another uid's socket).
    """
    private_dir(path.parent)
    if os.path.lexists(path):
        _check(path, os.lstat(path), "socket")
    tmp = _temp_name(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(tmp))  # fails on a name that exists, whatever it is; follows no link
        try:
            os.chmod(tmp, 0o600)
            listener.listen(64)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except BaseException:
        listener.close()
        raise
    return listener


def check_socket(path: Path) -> None:
    """Check that ``path`` is a socket of this user's in a private directory, the only kind a
    process of this user may trust; neither may be a symbolic link.

    Raises:
        FileNotFoundError: the socket or its directory is missing.
        UnsafePathError: either is something else.
    """
    _check(path.parent, os.lstat(path.parent), "directory")
    _check(path, os.lstat(path), "socket")


def _check(path: Path, st: os.stat_result, kind: str) -> None:
    """Raise unless ``st`` (``path``'s own status, not a link's target) is a ``kind`` of this
    process's effective uid, without the mode bits :data:`KINDS` refuses it."""
    file_type, refused, private_mode = KINDS[kind]
    euid, mode = os.geteuid(), stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        problem = f"is a symbolic link, not a {kind}: remove it, or name its target instead"
    elif stat.S_IFMT(st.st_mode) != file_type:
        problem = f"is not a {kind}: remove it, or choose another path"
    elif st.st_uid != euid:
        fix = f"chown {euid} {path}" if kind == "directory" else "remove it"
        problem = f"is owned by uid {st.st_uid}, not {euid} (this process): {fix}"
    elif mode & refused:
        problem = f"has mode 0o{mode:o}, open to others: chmod {private_mode} {path}"
    else:
        return
    raise UnsafePathError(f"{path} {problem}")


def _temp_name(path: Path) -> Path:
    """An unpredictable name beside ``path``, no longer than a zygote socket's name."""
    return path.with_name(f".{os.urandom(6).hex()}.tmp")
