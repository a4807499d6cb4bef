"""The sweep service: one sub-package per process, plus what they all share.

``api/`` is the API server, ``dispatch/`` its Ray job dispatcher and monitor thread (in the API
process too), ``job/`` the sweep job that Ray runs, ``cli/`` the ``sweeps`` command and its
embedded stack, ``store/`` the database both the API and the job use. ``config`` (settings) and
``errors`` serve every process. ARCHITECTURE.md has the table of what runs where.
"""
