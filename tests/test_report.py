"""``rldskit report`` (``rldskit.report``): the HTML page of a converted dataset, self-contained
(every image a decodable ``data:`` URI), its sections for a one-camera car, a two-camera arm
(optional wrist frames absent in one episode) and a dataset without images or timestamps, the
empty-dataset error, atomic replacement of a previous report, the CLI's exit codes, and the page
rendered by headless Chromium (every image loads, no console errors, a screenshot)."""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("pyarrow")
pytest.importorskip("grain")

from PIL import Image  # noqa: E402

from rldskit.pipeline import convert  # noqa: E402
from rldskit.report import REPORT_FILE, REPORT_MARKER, EmptyDatasetError, build_report, register_cli  # noqa: E402
from rldskit.spec import EpisodeSpec, load_spec  # noqa: E402
from rldskit.synth import write_synthetic  # noqa: E402

CAM = (24, 32, 3)
SECTIONS = ("summary", "actions", "states", "trajectories", "episodes", "timing", "frames", "issues", "stats")


# =========================================================================== fixtures


@pytest.fixture(scope="module")
def donkey(tmp_path_factory) -> Path:
    """4 car episodes of 12 steps, one of them quarantined (a NaN action)."""
    root = tmp_path_factory.mktemp("report_donkey")
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", CAM)
    write_synthetic(spec, root / "cap", 4, 12, seed=0)
    bad = sorted(p for p in (root / "cap").iterdir() if p.is_dir())[2]
    f = bad / "steps" / "000000.jsonl"
    lines = f.read_text().splitlines(True)
    step = json.loads(lines[3])
    step["action"] = [float("nan"), 0.1]
    lines[3] = json.dumps(step) + "\n"
    f.write_text("".join(lines))
    res = convert([root / "cap"], root / "data", name="donkey", runner="inline", formats=("array_record",))
    assert res.counts["quarantined"] == 1
    return res.path


@pytest.fixture(scope="module")
def arm(tmp_path_factory) -> Path:
    """Two cameras; the optional wrist camera is absent in episode 0."""
    root = tmp_path_factory.mktemp("report_arm")
    spec = load_spec("so100_arm.v1")
    for p in spec.image_paths:
        spec = spec.with_image_shape(p, CAM)
    write_synthetic(spec, root / "cap", 4, 6, seed=0)
    return convert([root / "cap"], root / "data", name="arm", runner="inline", formats=("array_record",)).path


PLAIN = {"name": "plain", "version": "1.0.0", "last_step": "valid",
         "steps": {"observation": {"state": {"type": "tensor", "shape": [3], "dtype": "float32", "unit": "m",
                                             "names": ["x", "y", "z"]}},
                   "action": {"type": "tensor", "shape": [2], "dtype": "float32", "bounds": [-1, 1]}}}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """No images and no timestamps."""
    root = tmp_path_factory.mktemp("report_plain")
    spec = EpisodeSpec.from_dict(PLAIN)
    assert not spec.image_paths and not spec.timestamp_paths
    write_synthetic(spec, root / "cap", 3, 5, seed=0)
    return convert([root / "cap"], root / "data", name="plain", runner="inline", formats=("array_record",)).path


# =========================================================================== HTML parsing


class Page(HTMLParser):
    """Tags of interest in a report: images, section ids, figures (with class), links, scripts."""

    def __init__(self, text: str):
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.sections: list[str] = []
        self.figures: list[str] = []
        self.hrefs: list[str] = []
        self.tags: set[str] = set()
        self.title = ""
        self._in_title = False
        self._section = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "img":
            self.imgs.append(dict(a, section=self._section))
        elif tag == "section":
            self._section = a.get("id", "")
            self.sections.append(self._section)
        elif tag == "figure":
            self.figures.append(a.get("class", ""))
        elif tag in ("a", "link"):
            self.hrefs.append(a.get("href", ""))
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def _decode(uri: str) -> Image.Image:
    """A data: URI's image, checked: base64, a PNG/JPEG whose format matches the MIME type."""
    head, _, b64 = uri.partition(",")
    assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head[:60]
    try:
        raw = base64.b64decode(b64, validate=True)
    except binascii.Error as e:
        raise AssertionError(f"bad base64 in {head}: {e}") from None
    img = Image.open(io.BytesIO(raw))
    assert img.format == ("PNG" if "png" in head else "JPEG")
    img.verify()
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


def _check_page(index: Path) -> tuple[Page, str]:
    assert index.name == REPORT_FILE and index.is_file()
    text = index.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == list(SECTIONS)
    assert page.imgs, "no images"
    for img in page.imgs:
        _decode(img["src"])
    # self-contained: no external resources, no scripts, only in-page links
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert all(h.startswith("#") for h in page.hrefs), page.hrefs
    assert "http://" not in text and "https://" not in text and "url(" not in text
    return page, text


def _section_text(text: str, sid: str) -> str:
    start = text.index(f'<section id="{sid}">')
    return text[start:text.index("</section>", start)]


# =========================================================================== content


def test_donkey_report_has_every_section_valid_images_and_the_quarantine(donkey, tmp_path):
    index = build_report(donkey, tmp_path / "rep", frames_per_camera=5)
    assert index == (tmp_path / "rep" / REPORT_FILE).absolute()
    page, text = _check_page(index)
    assert "donkey" in page.title and "1.0.0" in page.title and "pi5_donkey.v1" in page.title
    summary = _section_text(text, "summary")
    assert "3 episodes, 36 steps" in summary
    assert "NON_FINITE" in summary and "ep_0000_00002" in summary  # quarantined input and its reason
    issues = _section_text(text, "issues")
    assert "quarantined" in issues and "NON_FINITE" in issues
    # action histograms per element with names; trajectories; length histogram; rate and skew plots
    assert "steering" in _section_text(text, "stats") and "throttle" in _section_text(text, "stats")
    by_section: dict[str, list] = {}
    for img in page.imgs:
        by_section.setdefault(img["section"], []).append(img)
    assert len(by_section["actions"]) == 2  # action and policy_action
    assert len(by_section["trajectories"]) == 2
    assert len(by_section["episodes"]) == 1
    assert len(by_section["timing"]) == 2  # control rate, camera skew
    assert "timestamp/camera - timestamp/control" in text or "timestamp/camera" in _section_text(text, "timing")
    assert "no low-dimensional observation (state) features" in _section_text(text, "states")
    frames = by_section["frames"]
    assert len(frames) == 5 and page.figures == ["frame"] * 5
    sizes = {_decode(f["src"]).size for f in frames}
    assert sizes == {(128, 96)}  # 32x24 frames shown at 4x
    # statistics computed here (no stats.json): quantiles present
    stats = _section_text(text, "stats")
    assert "computed from episodes.parquet" in stats and "q01" in stats and "q99" in stats


def test_quarantine_table_names_inputs_relative_to_the_converted_source(donkey, tmp_path):
    """The quarantined input is shown as ``cap/<episode>`` (the path under the source given to
    convert, starting with its name), and no local path appears in the page or its marker."""
    index = build_report(donkey, tmp_path / "rep")
    text = index.read_text(encoding="utf-8")
    summary = _section_text(text, "summary")
    table = summary[summary.index("<h3>Quarantined inputs</h3>"):]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table)
    assert "cap/ep_0000_00002" in cells, cells[:6]
    capture_root = donkey.parents[2] / "cap"
    for f in (index, index.parent / REPORT_MARKER):
        body = f.read_text(encoding="utf-8")
        assert str(capture_root) not in body and str(donkey.parents[2]) not in body, f
    assert json.loads((index.parent / REPORT_MARKER).read_text())["dataset"] == "donkey/1.0.0"
    assert "from rldskit_spec.json" in summary


def test_arm_report_two_cameras_and_grey_tiles_for_absent_wrist_frames(arm, tmp_path):
    page, text = _check_page(build_report(arm, tmp_path / "rep", frames_per_camera=8, max_episodes=2))
    frames = _section_text(text, "frames")
    assert "observation/images/front" in frames and "observation/images/wrist" in frames
    front, wrist = frames.split("observation/images/wrist</h3>")
    assert 'class="absent"' not in front and front.count('class="frame"') == 8
    assert wrist.count('class="absent"') >= 1 and wrist.count('class="frame"') >= 1
    assert wrist.count("<figure") == 8
    absent = [i for i in page.imgs if i["section"] == "frames" and "(absent)" in i.get("alt", "")]
    assert absent
    grey = np.asarray(_decode(absent[0]["src"]).convert("RGB"))
    assert (np.all(grey == 160, axis=-1)).mean() > 0.8  # a grey tile (with a small label)
    assert "First 2 of 4 episodes" in _section_text(text, "trajectories")
    states = _section_text(text, "states")
    for feature in ("observation/joint_position", "observation/joint_velocity", "observation/gripper_position"):
        assert feature in states
    assert "unit rad/s" in states
    timing = _section_text(text, "timing")
    assert "timestamp/camera_front" in timing and "timestamp/joints" in timing


def test_dataset_without_images_or_timestamps_says_so(plain, tmp_path):
    page, text = _check_page(build_report(plain, tmp_path / "rep"))
    assert "has no image features" in _section_text(text, "frames")
    assert "has no timestamp/* features" in _section_text(text, "timing")
    assert not [i for i in page.imgs if i["section"] in ("frames", "timing")]
    assert "observation/state" in _section_text(text, "states")
    assert "x axis: step (no timestamps)" in _section_text(text, "trajectories")


def test_stats_json_beside_the_dataset_is_used(plain, tmp_path):
    ds = tmp_path / "plain"
    shutil.copytree(plain, ds)
    stats = {"action": {"mean": [0.125, -0.5], "std": [1.0, 2.0], "min": [-1, -1], "max": [1, 1], "count": 15,
                        "q01": [-0.99, -0.98], "q50": [0.0, 0.1], "q99": [0.97, 0.96]},
             "_dataset": {"episodes": 3, "steps": 15, "episode_length": {"min": 5, "max": 5}}}
    (ds / "stats.json").write_text(json.dumps(stats))
    _, text = _check_page(build_report(ds, tmp_path / "rep"))
    table = _section_text(text, "stats")
    assert "stats.json beside the dataset" in table
    assert "0.125" in table and "-0.98" in table and "episode_length.max" in table
    # features nested under "features" are read too; a file without statistics falls back to computing them
    (ds / "stats.json").write_text(json.dumps({"features": {"action": stats["action"]}}))
    _, text = _check_page(build_report(ds, tmp_path / "rep"))
    assert "0.125" in _section_text(text, "stats")
    (ds / "stats.json").write_text(json.dumps({"version": 1}))
    _, text = _check_page(build_report(ds, tmp_path / "rep"))
    assert "stats.json has no per-feature statistics; computed from episodes.parquet" in _section_text(text, "stats")


def test_stats_written_by_rldskit_stats_are_shown(arm, tmp_path):
    stats_mod = pytest.importorskip("rldskit.stats")
    if not hasattr(stats_mod, "write_stats"):
        pytest.skip("rldskit.stats has no write_stats")
    ds = tmp_path / "arm"
    shutil.copytree(arm, ds)
    stats_mod.write_stats(ds)
    _, text = _check_page(build_report(ds, tmp_path / "rep"))
    table = _section_text(text, "stats")
    assert "stats.json beside the dataset" in table
    assert "shoulder_pan" in table and "q50" in table
    assert "<th>timestamp/control</th>" not in table  # timestamps are left to the timing section


def test_report_flags_values_outside_their_bounds(plain, tmp_path):
    import pyarrow.parquet as pq

    ds = tmp_path / "plain"
    shutil.copytree(plain, ds)
    table = pq.read_table(ds / "episodes.parquet")
    rows = table.to_pylist()
    rows[0]["action"][1] = [5.0, 0.0]
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), ds / "episodes.parquet")
    _, text = _check_page(build_report(ds, tmp_path / "rep"))
    issues = _section_text(text, "issues")
    assert "OUT_OF_BOUNDS" in issues and "1 values outside the declared bounds" in issues


def test_empty_dataset_is_a_clear_error_naming_the_file(plain, tmp_path):
    import pyarrow.parquet as pq

    ds = tmp_path / "plain"
    shutil.copytree(plain, ds)
    table = pq.read_table(ds / "episodes.parquet")
    pq.write_table(table.slice(0, 0), ds / "episodes.parquet")
    with pytest.raises(EmptyDatasetError, match=r"episodes\.parquet.*no episodes") as info:
        build_report(ds, tmp_path / "rep")
    assert isinstance(info.value, ValueError)
    assert str(ds / "episodes.parquet") in str(info.value)
    assert not (tmp_path / "rep").exists()


# =========================================================================== writing


def test_previous_report_is_replaced_atomically_and_other_folders_are_refused(plain, tmp_path):
    out = tmp_path / "rep"
    build_report(plain, out)
    (out / "stale.txt").write_text("from the previous run")
    first = (out / REPORT_FILE).read_bytes()
    build_report(plain, out, max_episodes=1)
    assert not (out / "stale.txt").exists() and (out / REPORT_MARKER).is_file()
    assert (out / REPORT_FILE).read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temp or old folders left behind
    # an empty folder is fine, a folder with other things is not (and is left untouched)
    (tmp_path / "empty").mkdir()
    build_report(plain, tmp_path / "empty")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an rldskit report"):
        build_report(plain, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(FileExistsError):
        build_report(plain, other / "notes.txt")


def test_failed_build_leaves_no_output_and_keeps_the_previous_report(plain, tmp_path, monkeypatch):
    import rldskit.report as report

    out = tmp_path / "rep"
    build_report(plain, out)
    before = (out / REPORT_FILE).read_bytes()

    def boom(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "_render", boom)
    with pytest.raises(RuntimeError):
        build_report(plain, out)
    assert (out / REPORT_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


# =========================================================================== CLI


def _cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rldskit")
    register_cli(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


def test_cli_exit_codes(plain, tmp_path, capsys):
    assert _cli(["report", str(plain), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "rep" / REPORT_FILE) in out
    assert _cli(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2
    assert "missing" in capsys.readouterr().err
    assert _cli(["report", str(tmp_path), "--out", str(tmp_path / "r3")]) == 2  # not a dataset
    assert _cli(["report", str(plain), "--out", str(tmp_path / "r4"), "--split", "test"]) == 2
    assert "no split 'test'" in capsys.readouterr().err
    import pyarrow.parquet as pq

    empty = tmp_path / "empty"
    shutil.copytree(plain, empty)
    pq.write_table(pq.read_table(empty / "episodes.parquet").slice(0, 0), empty / "episodes.parquet")
    assert _cli(["report", str(empty), "--out", str(tmp_path / "r5")]) == 1
    assert "episodes.parquet" in capsys.readouterr().err
    assert not any((tmp_path / f"r{i}").exists() for i in (2, 3, 4, 5))


def test_importing_the_report_module_is_light():
    code = textwrap.dedent("""
        import json, sys
        import rldskit.report
        print(json.dumps(sorted(m for m in ("matplotlib", "pyarrow", "grain", "tensorflow") if m in sys.modules)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


# =========================================================================== browser


def _chrome_driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("headless Chromium test needs chromium and chromedriver on PATH "
                    "(Debian: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("headless Chromium test needs selenium (pip install selenium)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)


def test_report_renders_in_headless_chromium(arm, tmp_path):
    index = build_report(arm, tmp_path / "rep")
    n_imgs = len(Page(index.read_text(encoding="utf-8")).imgs)
    driver = _chrome_driver()
    try:
        driver.set_page_load_timeout(30)
        driver.get(index.as_uri())
        state = driver.execute_script("""
            const imgs = Array.from(document.images);
            return {ready: document.readyState, n: imgs.length,
                    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
                    sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
                    height: document.documentElement.scrollHeight};
        """)
        assert state["ready"] == "complete"
        assert state["n"] == n_imgs > 10
        assert state["broken"] == []
        assert state["sections"] == list(SECTIONS)
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert severe == [], severe
        # the log check is not vacuous: an error in the page does show up
        driver.execute_script("console.error('rldskit-probe')")
        assert any("rldskit-probe" in e.get("message", "") for e in driver.get_log("browser"))
        driver.set_window_size(1280, min(int(state["height"]) + 40, 12000))
        shot = tmp_path / "report_screenshot.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    img = Image.open(shot)
    img.verify()
    assert Image.open(shot).size[0] >= 1000
    print(f"report screenshot: {shot}")
