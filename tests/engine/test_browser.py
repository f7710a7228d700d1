"""The HTML reports in a real browser (headless Chromium, Debian's ``chromium``; ``.ci/run`` installs it).

No extra Python dependency: Chromium loads a copy of the page with a self-check script put first in
its ``<head>`` (so it sees every error the page raises). The script adds every slice behind the
sliders as a hidden image (the load event waits for them), and once the page has loaded checks that
every image decoded, moves each slice slider one step and writes what it found into the DOM; the test
reads it back with ``--dump-dom``. A screenshot of the real page is kept as a test artefact (under the
test's tmp dir, and copied to ``$MEDTRANS_ARTEFACTS`` when set).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get "
                                "install chromium; .ci/run installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]

SELF_CHECK = """<script>
(() => {
  const problems = [];
  const note = text => problems.push(text);
  addEventListener('error', e => note('error: ' + (e.message || String(e.target && e.target.tagName))), true);
  addEventListener('unhandledrejection', e => note('unhandled rejection: ' + e.reason));
  for (const level of ['error', 'warn']) {
    const original = console[level];
    console[level] = (...args) => { note(level + ': ' + args.join(' ')); original.apply(console, args); };
  }
  // every slice behind the sliders as a hidden <img> before 'load': the load event then waits for them
  const slices = [];
  addEventListener('DOMContentLoaded', () => {
    const hidden = document.createElement('div');
    hidden.style.display = 'none';
    for (const data of document.querySelectorAll('script[type="application/json"]')) {
      for (const uri of JSON.parse(data.textContent).flat()) {
        const im = new Image();
        im.src = uri;
        hidden.appendChild(im);
        slices.push(im);
      }
    }
    document.body.appendChild(hidden);
  });
  addEventListener('load', () => {
    const shown = Array.from(document.images).filter(i => !slices.includes(i));
    const decoded = slices.filter(i => i.complete && i.naturalWidth > 0).length;
    const sliders = Array.from(document.querySelectorAll('input[type=range]')).map(slider => {
      const images = Array.from(slider.closest('section').querySelectorAll('img'));
      const before = images.map(i => i.src);
      slider.value = String((Number(slider.value) + 1) % (Number(slider.max) + 1));
      slider.dispatchEvent(new Event('input'));
      return {max: Number(slider.max), images: images.length,
              changed: images.filter((im, j) => im.src !== before[j]).length};
    });
    const out = document.createElement('pre');
    out.id = 'medtrans-selfcheck';
    out.textContent = JSON.stringify({
      shown: shown.length, shown_decoded: shown.filter(i => i.complete && i.naturalWidth > 0).length,
      decoded, total: slices.length, sliders, problems});
    document.body.appendChild(out);
  });
})();
</script>"""


def chromium(*args: str, profile: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True, exist_ok=True)  # a new, empty profile for every launch
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def self_check(page: Path, work: Path) -> tuple[dict[str, Any], list[str]]:
    """What the self-check found in ``page``, and the console lines Chromium logged for it."""
    text = page.read_text()
    copy = page.with_name(f".selfcheck-{page.name}")
    copy.write_text(text.replace("<head>", "<head>" + SELF_CHECK, 1))
    try:
        result = chromium("--virtual-time-budget=20000", "--dump-dom", copy.as_uri(), profile=work / "dom")
    finally:
        copy.unlink()
    found = re.search(r'<pre id="medtrans-selfcheck">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the self-check did not run (exit {result.returncode}):\n{result.stderr[-2000:]}"
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


def screenshot(page: Path, work: Path) -> Path:
    shot = work / f"{page.stem}.png"
    result = chromium("--window-size=1400,1800", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri(),
                      profile=work / "shot")
    assert shot.is_file(), result.stderr[-2000:]
    if os.environ.get("MEDTRANS_ARTEFACTS"):
        folder = Path(os.environ["MEDTRANS_ARTEFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, folder / shot.name)
    return shot


def check_in_browser(page: Path, work: Path, subjects: int) -> None:
    found, console = self_check(page, work)
    assert found["problems"] == [] and console == [], (found["problems"], console)
    assert found["shown"] > 0 and found["shown_decoded"] == found["shown"]  # every image on the page
    assert found["decoded"] == found["total"]  # and every slice behind the sliders
    assert len(found["sliders"]) == subjects
    for slider in found["sliders"]:
        assert slider["max"] >= 1 and slider["images"] >= 3
        assert slider["changed"] == slider["images"]  # one step of the slider: every panel shows a new slice
    pixels = np.asarray(Image.open(screenshot(page, work)).convert("L"), dtype=np.float64)
    assert pixels.shape == (1800, 1400) and pixels.std() > 10  # the page drew something, not a blank


def test_the_benchmark_page_works_in_chromium(two_entries: Path, tmp_path: Path) -> None:
    subjects = json.loads((two_entries / "splits.json").read_text())["test"]
    check_in_browser(two_entries / "report.html", tmp_path, len(subjects))


def test_the_report_of_two_evaluations_works_in_chromium(two_entries: Path, tmp_path: Path) -> None:
    from medtrans.cli import _register, app

    _register()
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(two_entries / "runs" / "flow" / "eval"),
                                      str(two_entries / "runs" / "regression" / "eval"), "-o", str(page)])
    assert result.exit_code == 0, result.output
    assert "std · flow" in page.read_text()  # flow's std map beside its error map
    check_in_browser(page, tmp_path, len(json.loads((two_entries / "splits.json").read_text())["test"]))
