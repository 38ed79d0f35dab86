"""What runs on the robot: bundles, A/B slots, numpy policy, safety. Depends on numpy (+ cryptography) only.
See issue #7.

Its core, which rldskit builds on rather than copying (and which imports only the standard library and
numpy): ``atomic_io`` (crash-safe writes), ``capture_layout`` (the capture folder: names, writer, chunk
reading, recovery), ``safe_extract`` (hostile-archive guards) and ``frames`` (frame signatures, PNG codec).
Nothing in this package imports rldskit.
"""
