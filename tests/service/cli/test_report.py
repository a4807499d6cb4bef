"""``sweeps report`` on a real sweep run through the API (real Ray, MLflow and SQLite): the
comparison per value, the Markdown and figures it writes, and the parent run's files."""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from service.cli.client import SweepsClient
from service.cli.main import _parser
from service.cli.report import build_report, run
from tests.service.helpers import mlflow_runs, wait_for, wait_tracked
from tests.specs import digits_body
from workers.events import FINAL_SWEEP_STATUSES
from workers.tracking import CURVES_ARTIFACT, PARAMETERS_ARTIFACT, SUMMARY_ARTIFACT

GRID = {"model.norm": ["none", "batch"], "optim.lr": [0.02, 0.2], "seed": [0, 1]}


def finished_sweep(api: SweepsClient) -> dict[str, Any]:
    sweep_id = api.submit(digits_body(GRID, method="grid", epochs=2))["id"]
    final = lambda s: s["status"] in FINAL_SWEEP_STATUSES  # noqa: E731
    wait_for(lambda: api.get(sweep_id), final, 600, "the sweep's end")
    sweep: dict[str, Any] = wait_tracked(lambda _: api.get(sweep_id), sweep_id)
    assert sweep["status"] == "completed", sweep
    return sweep


def png_size(content: bytes) -> tuple[int, int]:
    assert content.startswith(b"\x89PNG\r\n\x1a\n")
    height, width = matplotlib.image.imread(io.BytesIO(content), format="png").shape[:2]
    return width, height


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")  # TestClient
def test_report_compares_a_finished_sweep_and_writes_markdown_and_figures(
    api: SweepsClient, mlflow_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = finished_sweep(api)
    sweep_id = sweep["id"]
    trials = [api.trial(sweep_id, t["number"]) for t in api.trials(sweep_id)["data"]]
    assert len(trials) == 8

    report = build_report(api, sweep_id, by="model.norm")

    final = {t["number"]: t["curve"][-1]["metrics"]["val_accuracy"] for t in trials}
    assert [r.value for r in report.rows] == ["batch", "none"]
    for row in report.rows:
        at_value = [t for t in trials if t["params"]["model.norm"] == row.value]
        means = {
            lr: statistics.fmean(
                final[t["number"]] for t in at_value if t["params"]["optim.lr"] == lr
            )
            for lr in GRID["optim.lr"]
        }
        assert row.lr == max(means, key=lambda lr: means[lr])
        seeds = [final[t["number"]] for t in at_value if t["params"]["optim.lr"] == row.lr]
        assert row.mean == pytest.approx(statistics.fmean(seeds))
        assert row.std == pytest.approx(statistics.stdev(seeds))
        assert (row.n, row.trials) == (2, 4)

    assert run(api, sweep_id, None, tmp_path / "out") == 0  # --by: the most influential
    out = capsys.readouterr().out
    assert f"sweep {sweep_id} digits-sweep: final val_accuracy by" in out
    assert "mean ± std" in out and "influence on val_accuracy" in out
    text = (tmp_path / "out" / "report.md").read_text()
    assert "![curves.png](curves.png)" in text and "![parameters.png](parameters.png)" in text
    assert all(f"| digits-sweep #{t['number']} |" in text for t in trials)
    for name in ("curves.png", "parameters.png"):
        assert png_size((tmp_path / "out" / name).read_bytes())[0] > 300

    assert run(api, sweep_id, "optim.momentum", None) == 2
    assert "optim.momentum is not varied in this sweep" in capsys.readouterr().out

    client, (parent,), _ = mlflow_runs(mlflow_server.uri, sweep["uid"])
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {CURVES_ARTIFACT, PARAMETERS_ARTIFACT, SUMMARY_ARTIFACT} <= files
    summary = Path(client.download_artifacts(parent.info.run_id, SUMMARY_ARTIFACT, str(tmp_path)))
    assert all(f"digits-sweep #{t['number']} " in summary.read_text() for t in trials)


def test_report_is_a_subcommand_with_by_and_out() -> None:
    args = _parser().parse_args(["report", "7", "--by", "optim.lr", "--out", "reports/x"])
    assert (args.sweep_id, args.by, args.out) == (7, "optim.lr", Path("reports/x"))
