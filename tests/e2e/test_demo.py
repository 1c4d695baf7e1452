"""`gpucap demo --once`: the README's first command brings the whole system up and down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_demo_once_shows_headroom_and_metrics_urls(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpucap", "demo", "--once", "--state-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "verdict BREACH" in out
    breach = next(ln for ln in out.splitlines() if ln.split()[:1] == ["BREACH"])
    assert "uveu_tier2_country_share" in breach
    assert "entity:aurora/country:AE" in breach
    # India sits near its allocation: under 10% of the 790M TPP limit left.
    india = next(ln for ln in out.splitlines() if "country:IN" in ln)
    assert "790,000,000" in india
    assert out.count("metrics: http://127.0.0.1:") == 5  # the ledger's and four agents'
    # Everything stopped: the ledger's port no longer answers.
    url = next(ln.split()[-1] for ln in out.splitlines() if ln.startswith("ledger metrics:"))
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=2)


def test_demo_reports_a_broken_fleet_clearly(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "registry.yaml").write_text("ruleset: us-bis-ai-diffusion-2025\n")
    (fleet / "agents.yaml").write_text("agents: []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gpucap", "demo", "--once", "--fleet", str(fleet),
         "--state-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "gpucap: error: agents.yaml.agents: expected a non-empty list"
    )
