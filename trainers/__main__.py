"""``python -m trainers --data DATA [--preset P] [--out DIR] ...``: behaviour cloning with the
trainer this machine suits: JAX (``trainers.jax_bc``) when an accelerator is present or
``RLDSKIT_PREFER_JAX=1``, else torch (``trainers.torch_lora --full``: every weight, no LoRA).
The choice and its reason are printed first. Options common to both: ``--data``, ``--preset``,
``--config``, ``--out``, ``--max-steps``, ``--mirror``, ``--resume``."""

from __future__ import annotations

import sys

from trainers.common import select_trainer


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    which, why = select_trainer()
    print(f"trainer: {which} ({why})", flush=True)
    if which == "jax":
        from trainers import jax_bc

        return jax_bc.main(argv)
    from trainers import torch_lora

    if "--base" not in argv and "--full" not in argv:
        argv.append("--full")
    return torch_lora.main(argv)


if __name__ == "__main__":
    sys.exit(main())
