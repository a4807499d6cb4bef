"""The sweep every test of the service and the workers starts from: a tiny MLP on digits."""

from __future__ import annotations

from typing import Any


def digits_body(parameters: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """A request body (or sweep file) for a small, fast sweep on digits with a tiny MLP.

    ``kw`` replaces top-level fields (``name``, ``epochs``, ``method``...).
    """
    body: dict[str, Any] = {
        "name": "digits-sweep",
        "dataset": "digits",
        "model": {"arch": "mlp", "width": 32, "depth": 1},
        "epochs": 3,
        "parameters": parameters,
        "max_concurrent": 2,
        "resources_per_trial": {"cpu": 1},
    }
    return body | kw
