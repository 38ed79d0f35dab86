"""``python -m rldskit.cli``: the ``rldskit`` command."""

import sys

from rldskit.cli import main

sys.exit(main())
