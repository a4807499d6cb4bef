"""The sweep job: the process Ray runs for each sweep (``python -m service.job``).

It reads the sweep from the database, drives it with :func:`workers.driver.sweep.run_sweep`
and reports through :class:`service.job.sink.DatabaseSink`.
"""
