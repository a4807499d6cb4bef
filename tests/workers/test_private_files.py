"""Private directories, secrets and sockets (workers.private_files) on real files: nothing is
written, bound or trusted through a link, a planted file or a directory others may change."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.errors import UnsafePathError
from workers.private_files import (
    bind_socket,
    check_socket,
    private_dir,
    read_secret,
    write_secret,
)

OTHER_UID = 65534  # nobody


def chown_to_another_user(path: Path) -> None:
    """Give ``path`` (not a link's target) to uid 65534; skip the test where that is not allowed."""
    try:
        os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)
    except PermissionError:
        pytest.skip("only root may give a file to another user")


def about(path: Path, problem: str) -> str:
    """The pattern of a refusal that starts with ``path`` then says ``problem``."""
    return f"^{re.escape(str(path))} {re.escape(problem)}"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of the user's own outside the private directory, which a link may point at."""
    path = tmp_path / "victim"
    path.write_text("untouched")
    return path


@pytest.fixture
def private(tmp_path: Path) -> Path:
    return private_dir(tmp_path / "private")


@pytest.fixture
def listener(private: Path) -> Iterator[socket.socket]:
    sock = bind_socket(private / "z.sock")
    yield sock
    sock.close()


def test_a_missing_directory_is_created_for_this_user_only(tmp_path: Path) -> None:
    path = private_dir(tmp_path / "a" / "b")
    st = path.lstat()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755])
def test_a_directory_others_may_only_read_is_private(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "d"
    path.mkdir()
    path.chmod(mode)
    assert private_dir(path) == path


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_a_directory_others_may_change_is_refused_naming_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "d"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(UnsafePathError) as refused:
        private_dir(path)
    assert str(refused.value) == f"{path} has mode {oct(mode)}, open to others: chmod 700 {path}"


def test_a_linked_directory_is_refused(private: Path) -> None:
    link = private.parent / "link"
    link.symlink_to(private)
    with pytest.raises(UnsafePathError, match=about(link, "is a symbolic link, not a directory")):
        private_dir(link)


def test_a_directory_of_another_user_is_refused(private: Path) -> None:
    chown_to_another_user(private)
    with pytest.raises(UnsafePathError) as refused:
        private_dir(private)
    uid = os.geteuid()
    assert str(refused.value) == (
        f"{private} is owned by uid {OTHER_UID}, not {uid} (this process): chown {uid} {private}"
    )


def test_a_secret_replaces_a_link_at_its_path_and_leaves_its_target_alone(
    private: Path, victim: Path
) -> None:
    path = private / "secret"
    path.symlink_to(victim)
    write_secret(path, "s3cret")
    assert victim.read_text() == "untouched"
    assert not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600
    assert read_secret(path) == "s3cret"


def test_a_secret_that_cannot_be_written_leaves_nothing_behind(private: Path) -> None:
    (private / "secret").mkdir()  # os.replace cannot put a file there
    with pytest.raises(IsADirectoryError):
        write_secret(private / "secret", "s3cret")
    assert [p.name for p in private.iterdir()] == ["secret"]


def test_a_secret_is_read_only_from_a_file_of_this_users_that_no_one_else_reads(
    private: Path, victim: Path
) -> None:
    link, shared, foreign = private / "link", private / "shared", private / "foreign"
    link.symlink_to(victim)
    for path in (shared, foreign):
        write_secret(path, "s3cret")
    shared.chmod(0o640)
    with pytest.raises(UnsafePathError, match=about(link, "is a symbolic link")):
        read_secret(link)
    with pytest.raises(
        UnsafePathError, match=about(shared, "has mode 0o640, open to others: chmod 600 ")
    ):
        read_secret(shared)
    chown_to_another_user(foreign)
    with pytest.raises(UnsafePathError, match=about(foreign, f"is owned by uid {OTHER_UID}")):
        read_secret(foreign)


PLANTED = {
    "file": "is not a socket",
    "link": "is a symbolic link, not a socket",
    "foreign socket": f"is owned by uid {OTHER_UID}",
}


@pytest.mark.parametrize("planted", list(PLANTED))
def test_a_socket_is_bound_over_nothing_but_a_socket_of_this_users(
    private: Path, victim: Path, planted: str
) -> None:
    path = private / "z.sock"
    if planted == "file":
        path.write_text("a file")
    elif planted == "link":
        path.symlink_to(victim)
    else:
        bind_socket(path).close()
        chown_to_another_user(path)
    before = path.lstat()
    with pytest.raises(UnsafePathError, match=about(path, PLANTED[planted])):
        bind_socket(path)
    after = path.lstat()
    assert (after.st_ino, after.st_mode, after.st_uid) == (
        before.st_ino,
        before.st_mode,
        before.st_uid,
    )
    assert victim.read_text() == "untouched"
    assert sorted(p.name for p in private.iterdir()) == ["z.sock"]  # no temporary left


def test_a_newer_socket_replaces_an_older_one_of_this_users(
    private: Path, listener: socket.socket
) -> None:
    path = private / "z.sock"
    older = path.lstat().st_ino
    with bind_socket(path):
        assert path.lstat().st_ino != older and path.lstat().st_mode & 0o777 == 0o600
        check_socket(path)


def test_a_socket_is_trusted_only_if_this_users_and_in_a_private_directory(
    private: Path, listener: socket.socket, tmp_path: Path
) -> None:
    path = private / "z.sock"
    check_socket(path)
    link = private_dir(tmp_path / "elsewhere") / "z.sock"
    link.symlink_to(path)
    with pytest.raises(UnsafePathError, match=about(link, "is a symbolic link, not a socket")):
        check_socket(link)
    private.chmod(0o777)
    with pytest.raises(UnsafePathError, match=about(private, "has mode 0o777")):
        check_socket(path)
    private.chmod(0o700)
    chown_to_another_user(path)
    with pytest.raises(UnsafePathError, match=about(path, f"is owned by uid {OTHER_UID}")):
        check_socket(path)
