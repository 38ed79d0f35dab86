"""``python -m edge_runtime ...`` = ``rldskit-edge ...``."""

import sys

from edge_runtime.cli import main

sys.exit(main())
