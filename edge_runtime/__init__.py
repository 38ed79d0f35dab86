"""What runs on the robot: bundles, A/B slots, numpy policy, safety. Depends on numpy (+ cryptography) only. See issue #7."""
