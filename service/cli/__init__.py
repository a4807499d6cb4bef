"""The ``sweeps`` command (:mod:`service.cli.main`), run in the operator's shell.

It talks to the API over HTTP (:mod:`service.cli.client`), and ``sweeps up`` / ``sweeps demo``
start the embedded stack as child processes (:mod:`service.cli.stack`).
"""
