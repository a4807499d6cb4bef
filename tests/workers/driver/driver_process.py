"""A sweep driver in a process of its own, for tests that kill it as a vanished Ray job would.

``python -m tests.workers.driver.driver_process <ray address> <request.json>`` runs
``run_sweep`` with the request's spec, sweep uid and storage path, and appends
``<trial number> <epoch>`` to the request's ``epochs_file`` (flushed) for every epoch the driver
reports, so the test knows when to kill it; every report also goes to the request's
``journal`` (:class:`tests.workers.sweeps.RecordingSink`), which the driver that resumes the
sweep starts from. With ``hang_at_end`` it touches ``<epochs_file>.ended`` and hangs where the
sweep would end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray

from tests.workers.sweeps import RecordingSink
from workers.driver.sweep import run_sweep
from workers.spec import SweepSpec


class HangingSink(RecordingSink):
    """Touches ``marker`` and hangs when told the sweep ended, for the test to kill it there."""

    marker: Path

    def sweep_ended(self, status: str, message: str, best: int | None) -> None:
        self.marker.touch()
        time.sleep(3600)


def main(argv: list[str]) -> int:
    address, request_file = argv
    request = json.loads(Path(request_file).read_text())
    epochs_file = Path(request["epochs_file"])

    def note(sink: RecordingSink, number: int, epoch: int, metrics: dict[str, float]) -> None:
        with epochs_file.open("a") as out:
            out.write(f"{number} {epoch}\n")

    journal = Path(request["journal"])
    sink = RecordingSink(on_epoch=note, journal=journal)
    if request.get("hang_at_end"):  # Tune is done; the driver dies before the sweep ends
        sink = HangingSink(on_epoch=note, journal=journal)
        sink.marker = Path(request["epochs_file"]).with_suffix(".ended")
    ray.init(address=address, log_to_driver=False)
    run_sweep(
        SweepSpec.model_validate(request["spec"]),
        sink,
        sweep_uid=request["sweep_uid"],
        storage_path=request["storage_path"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
