"""Warm processes: zygotes that import once what a kind of process needs and fork one child per
launch (:mod:`workers.warm.forks`), and the trial workers' zygote (:mod:`workers.warm.trials`)."""
