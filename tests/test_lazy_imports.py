"""``import rldskit`` and the everyday entry points (schema, validation, capture, the CLI's
``validate``) must not pull in the heavy stacks: on a Pi 5 or in a pre-commit hook, importing
TensorFlow alone costs seconds and hundreds of MB. Checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("tensorflow", "apache_beam", "jax", "torch", "tensorflow_datasets", "pyarrow", "grain")


def _run_fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it must print one JSON object as its last line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_and_validate_do_not_import_heavy_modules(tmp_path):
    from rldskit.spec import load_spec
    from rldskit.synth import write_synthetic

    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))
    write_synthetic(spec, tmp_path / "data", 2, 5)
    result = _run_fresh(f"""
        import json, sys
        import rldskit
        rldskit.EpisodeSpec
        rldskit.validate
        rldskit.EpisodeLogger
        rldskit.load_spec("xr_teleop.v1").to_step_json_schema()
        import rldskit.cli
        code = rldskit.cli.main(["validate", {str(tmp_path / "data")!r}, "--format", "json", "--check-images"])
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(json.dumps({{"code": code, "heavy": heavy}}))
    """)
    assert result["code"] == 0
    assert result["heavy"] == []


def test_the_check_itself_sees_a_heavy_import():
    # guards the test above against passing vacuously (e.g. a wrong module name)
    pytest.importorskip("pyarrow")
    result = _run_fresh(f"""
        import json, sys
        import rldskit
        rldskit.load_spec("pi5_donkey.v1").to_arrow_schema()
        print(json.dumps({{"heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
    """)
    assert "pyarrow" in result["heavy"]


def test_rldskit_validate_stays_the_function_after_the_submodule_is_imported():
    result = _run_fresh("""
        import json
        import rldskit
        from rldskit.validation import Gates
        print(json.dumps({"callable": callable(rldskit.validate)}))
    """)
    assert result["callable"] is True


def test_the_index_codec_and_loader_parts_import_no_heavy_module():
    # the formats layer (the step index) and every loader part except the iterator stay Grain-free,
    # so hub, report, stats and the trainers read an index or statistics without Grain
    result = _run_fresh(f"""
        import json, sys
        import rldskit.images, rldskit.formats.step_index
        import rldskit.loaders.config, rldskit.loaders.normalize, rldskit.loaders.sources
        import rldskit.loaders.order, rldskit.loaders.windowing, rldskit.loaders.buffers, rldskit.loaders.grain
        from rldskit.loaders import StepIndex, LoaderConfig, Normalizer, compute_stats, parse_split
        print(json.dumps({{"heavy": sorted(m for m in {HEAVY!r} + ("PIL",) if m in sys.modules)}}))
    """)
    assert result["heavy"] == []
