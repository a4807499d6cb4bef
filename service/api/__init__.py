"""The API server process: the FastAPI app, its routes, schemas and response builders.

Started by ``uvicorn --factory service.api.app:create_app``. It imports no Ray Tune and no
torch; sweeps run in Ray jobs (:mod:`service.job`), submitted by :mod:`service.dispatch`.
"""
