"""The trial worker zygote deletes the Ray log files of the workers it forked once they are
dead, keeping the newest few: a node's temp folder stays bounded however many trials it runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from workers.warm.trials import WorkerLogs


def _files(logs: Path, pid: int) -> list[Path]:
    names = [f"worker-abc{pid}-ffff-{pid}.out", f"worker-abc{pid}-ffff-{pid}.err",
             f"python-core-worker-abc{pid}_{pid}.log"]  # fmt: skip
    for name in names:
        (logs / name).write_text("log\n")
    return [logs / n for n in names]


def test_the_files_of_dead_workers_go_but_the_newest_dead_and_the_living_stay(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "session_1" / "logs"
    logs.mkdir(parents=True)
    (logs / "raylet.out").write_text("the node's own log\n")
    tender = WorkerLogs(keep=1, every_s=0)
    args = [f"--temp-dir={tmp_path}", "--session-name=session_1", "--node-id=x"]
    dead = []
    for _ in range(3):
        done = subprocess.Popen(["true"])
        done.wait()
        tender.forked(done.pid, ["default_worker.py", *args])
        dead.append(_files(logs, done.pid))
    alive = subprocess.Popen(["sleep", "30"])
    try:
        tender.forked(alive.pid, ["default_worker.py", *args])
        living = _files(logs, alive.pid)
        tender.tend()
        assert not any(p.exists() for files in dead[:2] for p in files)
        assert all(p.exists() for p in [*dead[2], *living, logs / "raylet.out"])
    finally:
        alive.kill()
        alive.wait()
    tender.tend()
    assert not any(p.exists() for p in dead[2]) and all(p.exists() for p in living)


def test_a_worker_without_ray_arguments_is_left_alone(tmp_path: Path) -> None:
    tender = WorkerLogs(keep=0, every_s=0)
    tender.forked(1, ["python", "-c", "pass"])
    tender.tend()
    assert not tender.alive and not tender.dead
