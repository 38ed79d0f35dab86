"""Where the real datasets written by other projects live (``../shared/fixtures`` beside the
checkout; ``RLDSKIT_SHARED_FIXTURES`` overrides). Tests that need them skip when absent."""

import os
from pathlib import Path


def shared_fixtures() -> Path:
    env = os.environ.get("RLDSKIT_SHARED_FIXTURES")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "fixtures", Path("/work/shared/fixtures")]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


BRIDGE = shared_fixtures() / "openx" / "bridge_dataset" / "1.0.0"
