"""The two things the API asks MLflow's REST API directly: is it up, and an experiment's id.

Everything else about MLflow (runs, metrics, closing runs) goes through
:mod:`workers.tracking`; these calls only need HTTP, and answering them must not wait on
MLflow's client-side retries.
"""

from __future__ import annotations

import atexit

import httpx

from service.errors import DispatchError

TIMEOUT_S = 5.0
_http = httpx.Client(timeout=TIMEOUT_S)
"""One client for the process: ``httpx.get`` builds a client (and its TLS context) per call,
which costs more than the request to a server on loopback. Clients are thread safe."""
atexit.register(_http.close)


def check(tracking_uri: str) -> str:
    """``ok`` when the tracking server answers its health check, else why not."""
    try:
        r = _http.get(f"{tracking_uri.rstrip('/')}/health")
    except httpx.HTTPError as err:
        return f"unreachable at {tracking_uri}: {err}"
    return "ok" if r.status_code == 200 else f"unhealthy at {tracking_uri}: HTTP {r.status_code}"


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The id of the experiment called ``name``, created when missing.

    Raises:
        DispatchError: MLflow cannot be reached or refuses.
    """
    api = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments"
    try:
        found = _http.get(f"{api}/get-by-name", params={"experiment_name": name})
        if found.status_code == 200:
            return str(found.json()["experiment"]["experiment_id"])
        created = _http.post(f"{api}/create", json={"name": name})
        if created.status_code == 200:
            return str(created.json()["experiment_id"])
        again = _http.get(f"{api}/get-by-name", params={"experiment_name": name})
        again.raise_for_status()  # a concurrent create won the race: it exists now
        return str(again.json()["experiment"]["experiment_id"])
    except (httpx.HTTPError, KeyError, ValueError) as err:
        raise DispatchError(f"MLflow at {tracking_uri}: no experiment {name!r}: {err}") from err
