"""Where to look once a sweep ended: the links ``sweeps up`` and ``sweeps demo`` print.

Every link comes from the API's ``links`` (built in :mod:`service.api.views`): the MLflow
comparison of the sweep's trials, its parent run, and its artifacts (plots, summary, spec).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from service.cli.client import ApiError, SweepsClient
from workers.events import FINAL_SWEEP_STATUSES

FOLLOW_PAGE = 100
"""How many of the newest sweeps ``sweeps up`` looks at for ones that just ended."""


def show_links(console: Console, links: dict[str, Any]) -> None:
    """Print a sweep's MLflow links: the comparison, its run, its artifacts."""
    if links.get("mlflow_experiment"):
        console.print(f"compare in MLflow: {links['mlflow_experiment']}", soft_wrap=True)
    if links.get("mlflow_run"):
        console.print(f"sweep run: {links['mlflow_run']}", soft_wrap=True)
    for name, url in links.get("artifacts", {}).items():
        console.print(f"  {name}: {url}", soft_wrap=True)


class EndedSweeps:
    """Follows the API for sweeps that end while the stack is up, and prints their links."""

    def __init__(self, client: SweepsClient, console: Console) -> None:
        self.client, self.console = client, console
        self.seen: set[int] | None = None

    def poll(self) -> None:
        """Print the links of each sweep that ended since the last call (none the first time:
        those ended before). An API that does not answer is asked again next time."""
        try:
            sweeps = self.client.list(None, FOLLOW_PAGE, 0)["data"]
        except ApiError:
            return
        ended = {s["id"]: s for s in sweeps if s["status"] in FINAL_SWEEP_STATUSES}
        if self.seen is not None:
            for sweep_id in sorted(ended.keys() - self.seen):
                sweep = ended[sweep_id]
                self.console.print(f"[bold]sweep {sweep_id}[/] {sweep['name']}: {sweep['status']}")
                show_links(self.console, sweep["links"])
        self.seen = (self.seen or set()) | ended.keys()
