"""The database URL file (service.config.write_database_url_file), a secret on real files: never
written through a link or a file planted beside it, and only into a directory of this user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import Settings, write_database_url_file
from workers.errors import UnsafePathError

URL = "postgresql+psycopg://sweeps:s3cret-password@db:5432/sweeps"


def _write(path: Path) -> Path:
    settings = Settings(_env_file=None, database_url=URL, database_url_file=path)  # type: ignore[call-arg]
    return write_database_url_file(settings)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("untouched")
    return path


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    path = tmp_path / "secrets"
    path.mkdir(mode=0o700)
    return path


@pytest.mark.parametrize("planted", ["link", "file"])
def test_nothing_planted_at_a_predictable_name_receives_the_url(
    secrets_dir: Path, victim: Path, planted: str
) -> None:
    trap = secrets_dir / f".database-url.{os.getpid()}"  # this process's temporary, by its pid
    if planted == "link":
        trap.symlink_to(victim)
    else:
        trap.write_text("planted")
        trap.chmod(0o644)
    path = _write(secrets_dir / "database-url")
    assert path.read_text() == URL + "\n" and path.stat().st_mode & 0o777 == 0o600
    assert victim.read_text() == "untouched"
    assert trap.is_symlink() if planted == "link" else trap.read_text() == "planted"


def test_a_link_at_the_files_path_is_replaced_and_its_target_left_alone(
    secrets_dir: Path, victim: Path
) -> None:
    (secrets_dir / "database-url").symlink_to(victim)
    path = _write(secrets_dir / "database-url")
    assert not path.is_symlink() and path.read_text() == URL + "\n"
    assert victim.read_text() == "untouched"


@pytest.mark.parametrize("unsafe", ["open to others", "a link", "another user's"])
def test_the_url_is_written_only_into_a_directory_of_this_users_that_others_cannot_change(
    secrets_dir: Path, tmp_path: Path, unsafe: str
) -> None:
    where, fix = secrets_dir, f"chmod 700 {secrets_dir}"
    if unsafe == "open to others":
        secrets_dir.chmod(0o777)
    elif unsafe == "a link":
        where, fix = tmp_path / "link", "remove it, or name its target instead"
        where.symlink_to(secrets_dir)
    else:
        try:
            os.chown(secrets_dir, 65534, 65534)
        except PermissionError:
            pytest.skip("only root may give a directory to another user")
        fix = f"chown {os.geteuid()} {secrets_dir}"
    with pytest.raises(UnsafePathError) as refused:
        _write(where / "database-url")
    message = str(refused.value)
    assert message.startswith(f"{where} ") and message.endswith(fix)
    assert list(secrets_dir.iterdir()) == []
