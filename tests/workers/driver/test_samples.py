"""A real sweep's trials each send their augmentation picture once, and Tune keeps none of it."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.workers.sweeps import RecordingSink, digits_spec
from workers.driver.sweep import experiment_name, run_sweep
from workers.events import SAMPLES_ARTIFACT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_each_trial_sends_its_picture_once_and_tunes_state_holds_none(ray_session, tmp_path):
    params = {"optim.lr": [0.05, 0.1], "augment.affine_p": 1.0, "augment.rotate_deg": 30.0}
    spec = digits_spec(params, method="grid", epochs=2)
    sink = RecordingSink()
    status = run_sweep(
        spec, sink, sweep_uid="samples1", storage_path=str(tmp_path), keep_checkpoints="all"
    )

    assert status == "completed", sink.ended
    trials = set(sink.final_status())
    assert len(trials) == 2
    assert Counter((number, path) for number, path, _ in sink.artifacts) == {
        (number, SAMPLES_ARTIFACT): 1 for number in trials
    }
    for _, _, png in sink.artifacts:
        assert png.startswith(PNG_SIGNATURE) and Image.open(io.BytesIO(png)).format == "PNG"
    # Tune's experiment state and checkpoints hold no picture (raw, or hex as Tune pickles it).
    experiment = Path(tmp_path, experiment_name("samples1"))
    files = [p for p in experiment.rglob("*") if p.is_file()]
    assert any(p.name.startswith("experiment_state") for p in files)
    holding = [p.name for p in files if _holds_a_png(p.read_bytes())]
    assert holding == []


def _holds_a_png(data: bytes) -> bool:
    return PNG_SIGNATURE in data or PNG_SIGNATURE.hex().encode() in data
