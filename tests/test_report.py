"""The sweep as a person sees it: report.html in a real headless browser, the metric history from
Python and as CSV, and the sparklines of `autoexp status`, on the real cluster."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import autoexp
from conftest import REPO, autoexp as run_cli, wait_state_done, write_config

pytestmark = pytest.mark.slurm

LOSS = r"step (?P<step>\d+) loss[=:]\s*(?P<value>[-+0-9.eE]+)"
ARTIFACTS = Path(os.environ.get("AUTOEXP_ARTIFACTS") or "/tmp/autoexp-artifacts")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no headless browser: tests/run.sh installs Debian's chromium", pytrace=False)


def browse(page: Path, *extra: str) -> subprocess.CompletedProcess:
    """Chromium, headless, on a file: no network, its own profile, page console on stderr."""
    profile = page.parent / ".chromium-profile"
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=15000", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def finished(slurm, tmp_path_factory):
    """The quickstart sweep (8 runs, loss with steps), plus one run that fails half-way."""
    workdir = tmp_path_factory.mktemp("report")
    train = REPO / "examples" / "train_toy.py"
    path = write_config(workdir, {
        "name": "seeit", "output_dir": str(workdir / "experiments"),
        "command": f"python3 {train} --rank {{{{ rank }}}} --lr {{{{ lr }}}} --steps 6 --out {{{{ run_dir }}}}"
                   " && test {{ rank }} != 64 -o {{ lr }} != 5e-05",
        "sweep": {"grid": {"rank": [8, 16, 32, 64], "lr": [1.0e-5, 5.0e-5]}}, "max_parallel": 8,
        "slurm": {"time": "00:05:00"}, "monitor": {"interval": 2, "metrics": {"loss": LOSS}}})
    exp = workdir / "experiments" / "seeit"
    run_cli("launch", path, cwd=workdir, check=True)
    try:
        state = wait_state_done(exp, timeout=300)
    except AssertionError:
        run_cli("cancel", exp)
        raise
    return exp, state


def test_metric_history_from_python_and_csv_matches_the_logs(finished):
    exp, state = finished
    rows = autoexp.metrics(exp)
    expected = []
    for name, run in sorted(state["runs"].items(), key=lambda item: item[1]["index"]):
        log = Path(run["attempts"][-1]["log"]).read_text()
        expected += [{"run": name, "attempt": 1, "metric": "loss", "step": int(m.group("step")),
                      "value": float(m.group("value"))} for m in re.finditer(LOSS, log)]
    assert sorted(rows, key=lambda r: (r["run"], r["step"])) == sorted(expected, key=lambda r: (r["run"], r["step"]))
    assert len(rows) == 8 * 6
    text = run_cli("metrics", exp, "--csv", check=True).stdout
    parsed = [{**r, "attempt": int(r["attempt"]), "step": int(r["step"]), "value": float(r["value"])}
              for r in csv.DictReader(io.StringIO(text))]
    assert parsed == rows


def test_the_report_in_a_headless_browser(finished):
    exp, state = finished
    out = run_cli("report", exp, check=True).stdout
    page = exp / "report.html"
    assert str(page) in out and page.is_file()
    assert "http://" not in page.read_text().split("<script", 1)[0]  # nothing fetched before the plots
    dom = browse(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    assert not re.search(r"Uncaught|CONSOLE\(\d+\)\].*[Ee]rror", dom.stderr), dom.stderr
    html = dom.stdout

    def section(key: str) -> str:
        start = html.index(f'id="{key}"')
        following = html.find('class="plot"', start + 1)
        return html[start:following if following > 0 else len(html)]

    curves = section("curves-loss")
    assert curves.count('class="trace scatter') == 8  # a curve per run, drawn
    for name in state["runs"]:
        assert name in curves
    assert "rank64_lr5e-05 (FAILED)" in curves  # the failed run is marked
    params = [section("param-rank"), section("param-lr")]
    assert all('class="scatterlayer' in p and p.count('class="point"') == 8 for p in params)
    timeline = section("timeline")
    assert timeline.count('class="ytick"') == 8  # a row per run
    assert timeline.count('class="trace bars"') == 3  # waiting, then completed or failed
    ranking = html[html.index('id="ranking"'):html.index('id="attempts"')]
    assert ranking.count("<tr>") == 9 and "slurm-" in ranking  # a header and a row per run
    # The failed run printed the lowest loss, yet ranks after every run that completed.
    assert ranking.rindex("COMPLETED") < ranking.index("rank64_lr5e-05"), ranking

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    taken = browse(page, f"--screenshot={shot}", "--window-size=1400,2600", "--hide-scrollbars")
    assert taken.returncode == 0 and shot.stat().st_size > 50_000, taken.stderr


def test_status_shows_a_trend_of_the_metric(finished):
    exp, _ = finished
    shown = run_cli("status", exp, check=True).stdout
    rows = [line for line in shown.splitlines() if line.startswith("rank")]
    assert len(rows) == 8
    assert all(re.search(r"[▁▂▃▄▅▆▇█]{3,}|[_.\-=+*#]{3,}", line) for line in rows), shown
    doc = json.loads(run_cli("status", exp, "--json", check=True).stdout)
    assert doc["counts"] == {"COMPLETED": 7, "FAILED": 1}
