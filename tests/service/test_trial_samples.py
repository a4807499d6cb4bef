"""End to end: every trial run of a real sweep ends with its augmentation picture in MLflow.

The whole path: the trial renders it in a Ray worker, the sweep job's driver stores it through
the database sink, and the API's tracking sender uploads it to the trial's run.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from tests.service.api.test_sweeps_api import auth, sweep_of_path, wait_final
from tests.service.helpers import make_settings, mlflow_runs, wait_tracked
from tests.specs import digits_body
from workers.events import SAMPLES_ARTIFACT


@pytest.mark.slow
def test_every_trial_run_gets_its_augmentation_picture(
    tmp_path: Path, ray_cluster: Any, mlflow_server: Any
) -> None:
    settings: Settings = make_settings(tmp_path, ray_cluster, mlflow_server)
    params = {"optim.lr": [0.05, 0.1], "augment.affine_p": 1.0, "augment.rotate_deg": 30.0}
    body = digits_body(params, method="grid", epochs=1)
    with TestClient(create_app(settings), headers=auth(settings)) as client:
        created = client.post("/sweeps", json=body)
        assert created.status_code == 201, created.text
        sweep_id = created.json()["id"]
        assert wait_final(client, sweep_id, timeout=300)["status"] == "completed"
        sweep = wait_tracked(lambda p: sweep_of_path(client, p), sweep_id)

    mlflow, _, children = mlflow_runs(mlflow_server.uri, sweep["uid"])
    assert len(children) == 2
    for child in children:
        run_id = child.info.run_id
        assert [f.path for f in mlflow.list_artifacts(run_id)] == [SAMPLES_ARTIFACT]
        local = mlflow.download_artifacts(run_id, SAMPLES_ARTIFACT, str(tmp_path))
        png = Path(local).read_bytes()
        assert Image.open(io.BytesIO(png)).format == "PNG" and len(png) < 50_000
