"""The layer between the service and the toolbox.

Its own modules are shared by every process that needs them and import neither Ray Tune nor
torch: the sweep specification (``spec``), the progress vocabulary and sink protocol
(``events``), MLflow tracking (``tracking``) and the Ray Jobs client (``jobs``). ``driver/``
runs in each sweep's Ray job; ``trial/`` in Ray's trial worker processes.
"""
