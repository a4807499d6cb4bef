"""``python -m service.job``: see :mod:`service.job.run`."""

import sys

from service.job.run import main

sys.exit(main())
