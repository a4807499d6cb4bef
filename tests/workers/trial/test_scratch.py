"""A pack's checkpoint scratch folder lives in the shared temporary directory under a fixed
name: it is used only where that name is a directory of this user's that others cannot change."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from workers.errors import UnsafePathError
from workers.trial import pack


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory the scratch folder goes under (``tempfile.gettempdir()``)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(pack, "_SWEPT", False)  # this process has not looked there yet
    return tmp_path


def test_a_checkpoint_gets_a_private_folder_of_its_own(temp_dir: Path) -> None:
    with pack._scratch() as folder:
        assert Path(folder).parent == temp_dir / pack.SCRATCH
        assert (temp_dir / pack.SCRATCH).stat().st_mode & 0o777 == 0o700
    assert not Path(folder).exists()


def test_a_scratch_folder_others_may_change_is_refused(temp_dir: Path) -> None:
    taken = temp_dir / pack.SCRATCH
    taken.mkdir(mode=0o777)
    taken.chmod(0o777)  # mkdir's mode goes through the umask
    with pytest.raises(UnsafePathError, match="open to others: chmod 700"), pack._scratch():
        pass
    assert list(taken.iterdir()) == []
