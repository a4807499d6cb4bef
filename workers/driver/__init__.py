"""The sweep driver, run inside each sweep's Ray job: one Ray Tune experiment per sweep.

:func:`workers.driver.sweep.run_sweep` is the entry point; ``progress`` and ``outbox`` carry
the trials' progress to the sink and MLflow, ``search`` and ``resources`` translate the spec
for Tune, ``storage`` keeps Tune's state whole on disk.
"""
