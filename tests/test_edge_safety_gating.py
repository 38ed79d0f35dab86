"""edge_runtime.safety (clamp, rate limit, non-finite fallback, risk) and edge_runtime.gating
(thermal/battery providers over fake sysfs trees, flags, gate combinations)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fuzzing import examples

from edge_runtime.gating import BatteryProvider, Gate, IdleProvider, TeleopProvider, ThermalProvider
from edge_runtime.safety import SafetyConfigError, SafetyHead

NAMES = ["steering", "throttle"]
CFG = {"bounds": {"steering": [-1, 1], "throttle": [-0.2, 0.6]}, "max_delta": {"steering": 0.25, "throttle": 0.05}}


# =========================================================================== safety


def test_clamps_to_bounds_and_reports_each_violation():
    head = SafetyHead(CFG, NAMES)
    out = head.step([3.0, -1.0])
    assert out.action.dtype == np.float32
    np.testing.assert_allclose(out.action, [1.0, -0.2])
    kinds = {(v["key"], v["kind"]): v for v in out.violations}
    assert set(kinds) == {("steering", "bounds"), ("throttle", "bounds")}
    assert kinds["steering", "bounds"]["value"] == 3.0 and kinds["steering", "bounds"]["limit"] == 1.0
    assert kinds["throttle", "bounds"]["limit"] == pytest.approx(-0.2)
    assert 0 < out.risk < 1 and not out.stopped
    assert head.violation_count == 2 and len(head.log) == 2
    ok = head.step([0.9, -0.15])  # inside bounds, small change: nothing to report
    assert ok.violations == [] and ok.risk == 0.0 and ok.ok


def test_rate_limit_moves_towards_the_target_at_max_delta():
    head = SafetyHead(CFG, NAMES)
    head.step([0.0, 0.0])
    outs = [head.step([1.0, 0.5]) for _ in range(12)]
    np.testing.assert_allclose(outs[0].action, [0.25, 0.05], atol=1e-6)
    assert [v["kind"] for v in outs[0].violations] == ["delta", "delta"]
    assert outs[0].violations[0]["limit"] == 0.25 and outs[0].violations[0]["value"] == pytest.approx(1.0)
    np.testing.assert_allclose(outs[3].action, [1.0, 0.2], atol=1e-6)
    np.testing.assert_allclose(outs[-1].action, [1.0, 0.5], atol=1e-6)
    assert outs[-1].violations == []


def test_first_step_is_only_rate_limited_from_a_configured_initial_action():
    free = SafetyHead(CFG, NAMES)
    np.testing.assert_allclose(free.step([0.5, 0.5]).action, [0.5, 0.5], atol=1e-6)
    held = SafetyHead({**CFG, "initial": {"throttle": 0.0}}, NAMES)
    np.testing.assert_allclose(held.step([0.5, 0.5]).action, [0.25, 0.05], atol=1e-6)  # steering starts at 0 too
    held.step([0.5, 0.5])
    held.reset()
    np.testing.assert_allclose(held.previous, [0.0, 0.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_requests_hold_the_previous_output(bad):
    seen = []
    head = SafetyHead(CFG, NAMES, on_violation=seen.append)
    head.step([0.3, 0.1])
    out = head.step([bad, 0.2])
    np.testing.assert_allclose(out.action, [0.3, 0.1], atol=1e-6)  # hold: the whole action, not only the bad element
    assert out.stopped and out.risk == 1.0
    assert [(v["key"], v["kind"]) for v in out.violations] == [("steering", "nonfinite")]
    assert seen and seen[-1]["kind"] == "nonfinite"


def test_nonfinite_fallback_without_history_or_zero_mode():
    head = SafetyHead(CFG, NAMES)
    np.testing.assert_array_equal(head.step([np.nan, np.nan]).action, [0.0, 0.0])  # nothing to hold yet: zeros
    zero = SafetyHead({**CFG, "fallback": "zero"}, NAMES)
    zero.step([0.9, 0.5])
    out = zero.step([np.nan, 0.5])
    np.testing.assert_allclose(out.action, [0.65, 0.45], atol=1e-6)  # towards zero at the rate limit
    shifted = SafetyHead({"bounds": {"throttle": [0.1, 0.5]}, "fallback": "zero"}, NAMES)
    np.testing.assert_allclose(shifted.step([np.inf, np.inf]).action, [0.0, 0.1], atol=1e-6)  # zero clamped into bounds


def test_violations_are_logged(caplog):
    head = SafetyHead(CFG, NAMES)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.safety"):
        head.step([5.0, 0.0])
    assert "steering bounds" in caplog.text


def test_risk_grows_with_the_size_of_the_violation():
    head = SafetyHead(CFG, NAMES)
    risks = []
    for over in [0.0, 0.1, 0.5, 1.0, 2.0, 4.0]:
        head.reset()
        risks.append(head.step([1.0 + over, 0.0]).risk)
    assert risks[0] == 0.0 and all(a < b for a, b in zip(risks, risks[1:])) and risks[-1] < 1.0
    jumps = []
    for size in [0.2, 0.3, 0.6, 1.0]:
        head.reset()
        head.step([0.0, 0.0])
        jumps.append(head.step([size, 0.0]).risk)
    assert jumps[0] == 0.0 and all(a < b for a, b in zip(jumps, jumps[1:]))
    weighted = SafetyHead({**CFG, "risk": {"weights": {"throttle": 3.0}}}, NAMES)
    assert weighted.step([0.0, 1.0]).risk > SafetyHead(CFG, NAMES).step([0.0, 1.0]).risk


def test_stop_above_outputs_the_fallback():
    head = SafetyHead({**CFG, "risk": {"stop_above": 0.5}}, NAMES)
    head.step([0.2, 0.1])
    out = head.step([10.0, 0.1])
    assert out.stopped and out.risk >= 0.5
    np.testing.assert_allclose(out.action, [0.2, 0.1], atol=1e-6)


@pytest.mark.parametrize("cfg", [
    {"bounds": {"speed": [0, 1]}},
    {"bounds": {"steering": [1, -1]}},
    {"bounds": {"steering": "wide"}},
    {"max_delta": {"throttle": -0.1}},
    {"fallback": "brake"},
    {"risk": {"weights": {"steering": -1}}},
    {"limits": {}},
])
def test_bad_configs_are_refused(cfg):
    with pytest.raises(SafetyConfigError):
        SafetyHead(cfg, NAMES)


def test_a_bundle_safety_json_configures_the_head():
    doc = {"action_key": "action", "names": NAMES, "bounds": {"steering": [-1.0, 1.0], "throttle": [-1.0, 1.0]},
           "max_delta": {"steering": 0.25, "throttle": 0.25}}  # what edge_runtime.bundle.default_safety writes
    head = SafetyHead(doc)
    assert head.action_names == NAMES and head.action_key == "action"
    head.step([0.0, 0.0])
    np.testing.assert_allclose(head.step([2.0, -2.0]).action, [0.25, -0.25], atol=1e-6)
    with pytest.raises(SafetyConfigError, match="differ"):
        SafetyHead(doc, ["throttle", "steering"])
    with pytest.raises(SafetyConfigError, match="names"):
        SafetyHead({"bounds": {}})


def test_wrong_action_shape_is_a_wiring_error():
    with pytest.raises(ValueError, match="shape"):
        SafetyHead(CFG, NAMES).step([0.1, 0.2, 0.3])


def test_bounds_that_float32_cannot_hold_are_never_exceeded():
    head = SafetyHead({"bounds": {"steering": [-0.3, 0.3], "throttle": [0.1, 0.7]}, "max_delta": {"throttle": 0.1}}, NAMES)
    for _ in range(10):
        out = head.step([1.0, 1.0])
        assert -0.3 <= float(out.action[0]) <= 0.3 and 0.1 <= float(out.action[1]) <= 0.7


_values = st.one_of(st.floats(-50, 50, allow_nan=False), st.sampled_from([np.nan, np.inf, -np.inf, 0.6, -0.2, 1.0]))


@settings(max_examples=examples(150), deadline=None)
@given(seq=st.lists(st.tuples(_values, _values), min_size=1, max_size=30),
       fallback=st.sampled_from(["hold", "zero"]), initial=st.booleans())
def test_outputs_stay_in_bounds_and_within_max_delta(seq, fallback, initial):
    cfg = {**CFG, "fallback": fallback, **({"initial": {"steering": 0.0, "throttle": 0.0}} if initial else {})}
    head = SafetyHead(cfg, NAMES)
    lo, hi = np.array([-1.0, -0.2]), np.array([1.0, 0.6])
    md = np.array([0.25, 0.05])
    prev = np.zeros(2) if initial else None
    for a in seq:
        out = head.step(np.array(a)).action.astype(np.float64)
        assert np.isfinite(out).all()
        assert (out >= lo).all() and (out <= hi).all(), (a, out)
        if prev is not None:
            assert (np.abs(out - prev) <= md).all(), (a, prev, out)
        prev = out


# =========================================================================== gating: fake sysfs


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)


def _zone(root: Path, i: int, temp: str | bytes, kind: str = "cpu-thermal") -> None:
    _write(root / "class" / "thermal" / f"thermal_zone{i}" / "temp", temp)
    _write(root / "class" / "thermal" / f"thermal_zone{i}" / "type", kind + "\n")


def test_thermal_reads_the_hottest_zone(tmp_path):
    _zone(tmp_path, 0, "45123\n")
    _zone(tmp_path, 1, "52000\n", "gpu")
    ok, why = ThermalProvider(tmp_path, max_c=80).check()
    assert ok and "52.0" in why and "gpu" in why
    ok, why = ThermalProvider(tmp_path, max_c=50).check()
    assert not ok and "thermal_zone1" in why and "52.0 C >= 50 C" in why


def test_thermal_without_zones(tmp_path):
    assert ThermalProvider(tmp_path).check() == (True, "no thermal zones")
    (tmp_path / "class" / "thermal").mkdir(parents=True)
    (tmp_path / "class" / "thermal" / "cooling_device0").mkdir()
    assert ThermalProvider(tmp_path).check() == (True, "no thermal zones")


@pytest.mark.parametrize("content", ["", "hot\n", b"\xff\xfe", "12.5.1"])
def test_thermal_malformed_zones_are_ignored_with_a_reason(tmp_path, content):
    _zone(tmp_path, 0, content)
    _zone(tmp_path, 1, "90000")
    ok, why = ThermalProvider(tmp_path, max_c=80).check()
    assert not ok and "90.0" in why and "thermal_zone0/temp" in why  # the readable zone still decides
    (tmp_path / "class" / "thermal" / "thermal_zone1" / "temp").write_text("41000")
    assert ThermalProvider(tmp_path, max_c=80).check()[0]


def test_thermal_all_unreadable_is_unknown(tmp_path):
    _zone(tmp_path, 0, "garbage")
    (tmp_path / "class" / "thermal" / "thermal_zone1").mkdir()  # no temp file at all
    ok, why = ThermalProvider(tmp_path).check()
    assert ok and why.startswith("temperature unknown") and "not a number" in why and "unreadable" in why
    assert ThermalProvider(tmp_path, unknown_ok=False).check()[0] is False


def test_thermal_permission_denied_is_unknown(tmp_path, monkeypatch):
    import builtins

    import edge_runtime.gating as gating

    _zone(tmp_path, 0, "50000")
    real_open = builtins.open

    def denying_open(path, *a, **k):  # what a non-root process sees on a 0400 root-owned file
        if str(path).endswith("temp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(gating, "open", denying_open, raising=False)
    ok, why = ThermalProvider(tmp_path, unknown_ok=False).check()
    assert not ok and "unreadable (Permission denied)" in why
    assert ThermalProvider(tmp_path).check()[0]


def _supply(root: Path, name: str, **files: str) -> None:
    for k, v in files.items():
        _write(root / "class" / "power_supply" / name / k, v + "\n")


def test_battery_capacity_and_status(tmp_path):
    _supply(tmp_path, "BAT0", type="Battery", capacity="55", status="Discharging")
    ok, why = BatteryProvider(tmp_path, min_capacity=20).check()
    assert ok and "55%" in why
    _supply(tmp_path, "BAT0", type="Battery", capacity="12", status="Discharging")
    ok, why = BatteryProvider(tmp_path, min_capacity=20).check()
    assert not ok and "12% < 20%" in why
    _supply(tmp_path, "BAT0", type="Battery", capacity="12", status="Charging")
    assert BatteryProvider(tmp_path, min_capacity=20).check()[0]  # low but charging


def test_battery_external_power_and_require_charging(tmp_path):
    _supply(tmp_path, "BAT0", type="Battery", capacity="80", status="Discharging")
    _supply(tmp_path, "AC", type="Mains", online="0")
    ok, why = BatteryProvider(tmp_path, require_charging=True).check()
    assert not ok and "not charging" in why
    _supply(tmp_path, "AC", type="Mains", online="1")
    ok, why = BatteryProvider(tmp_path, require_charging=True).check()
    assert ok and "external power" in why
    _supply(tmp_path, "BAT0", type="Battery", capacity="5", status="Not charging")
    assert BatteryProvider(tmp_path, min_capacity=20).check()[0]  # mains online: the battery is not draining
    _supply(tmp_path, "AC", type="Mains", online="0")
    _supply(tmp_path, "usb", type="USB", online="1")
    assert BatteryProvider(tmp_path, min_capacity=20).check()[0]


def test_no_battery_is_mains_powered(tmp_path):
    assert BatteryProvider(tmp_path).check() == (True, "no battery (mains powered)")
    _supply(tmp_path, "AC", type="Mains", online="1")
    assert BatteryProvider(tmp_path, require_charging=True).check()[0]


@pytest.mark.parametrize("capacity", ["", "full", "150", "-3", "4 2"])
def test_battery_malformed_capacity_is_unknown(tmp_path, capacity):
    _supply(tmp_path, "BAT0", type="Battery", capacity=capacity, status="Discharging")
    (tmp_path / "class" / "power_supply" / "weird").mkdir()  # a supply folder without even a type
    ok, why = BatteryProvider(tmp_path).check()
    assert ok and "capacity unknown" in why
    ok, why = BatteryProvider(tmp_path, unknown_ok=False).check()
    assert not ok and "BAT0/capacity" in why and "weird/type" in why


def test_battery_missing_status_with_require_charging_is_unknown(tmp_path):
    _supply(tmp_path, "BAT0", type="Battery", capacity="50")
    ok, why = BatteryProvider(tmp_path, require_charging=True, unknown_ok=False).check()
    assert not ok and "unknown" in why


def test_flag_providers(tmp_path):
    flag = tmp_path / "teleop_active"
    teleop = TeleopProvider(flag)
    assert teleop.check()[0]
    flag.touch()
    ok, why = teleop.check()
    assert not ok and "teleop active: yes" in why
    idle = {"v": False}
    assert not IdleProvider(lambda: idle["v"]).check()[0]
    idle["v"] = True
    assert IdleProvider(lambda: idle["v"]).check()[0]

    def broken() -> bool:
        raise RuntimeError("bus error")

    ok, why = TeleopProvider(broken).check()
    assert not ok and "bus error" in why  # fail closed


class _Fixed:
    def __init__(self, name, ok, reason="r"):
        self.name, self.ok, self.reason = name, ok, reason

    def check(self):
        return self.ok, self.reason


class _Raises:
    name = "boom"

    def check(self):
        raise OSError("sensor gone")


def test_gate_modes_and_reasons():
    a, b = _Fixed("a", True, "fine"), _Fixed("b", False, "too hot")
    assert Gate([a, b]).check() == (False, ["b: too hot"])
    assert Gate([a, b], mode="any").check() == (True, ["a: fine"])
    assert Gate([a, _Fixed("c", True, "ok")]).check() == (True, ["a: fine", "c: ok"])
    assert Gate([b, _Fixed("d", False, "x")], mode="any").check() == (False, ["b: too hot", "d: x"])
    assert Gate([]).check() == (True, [])
    ok, reasons = Gate([a, _Raises()]).check()
    assert not ok and reasons == ["boom: provider failed: OSError: sensor gone"]
    with pytest.raises(ValueError):
        Gate([a], mode="most")


def test_gate_over_real_providers_and_caching(tmp_path):
    _zone(tmp_path, 0, "50000")
    flag = tmp_path / "teleop"
    now = [0.0]
    gate = Gate([ThermalProvider(tmp_path), BatteryProvider(tmp_path), TeleopProvider(flag)], min_interval_s=1.0,
                clock=lambda: now[0])
    assert gate.check()[0]
    flag.touch()
    assert gate.check()[0]  # cached for a second
    now[0] = 1.5
    ok, reasons = gate.check()
    assert not ok and reasons == [r for r in reasons if r.startswith("teleop:")] and len(reasons) == 1
    assert [n for n, _, _ in gate.last_results] == ["thermal", "battery", "teleop"]
