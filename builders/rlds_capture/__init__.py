"""TFDS builder ``rlds_capture``: build with ``tfds build builders/rlds_capture --manual_dir=CAPTURE``."""
