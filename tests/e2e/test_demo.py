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
    assert "2 rule packs on" in out
    assert "verdict BREACH" in out
    lines = out.splitlines()
    breaches = [ln.split()[1:3] for ln in lines if ln.split()[:1] == ["BREACH"]]
    # Under the Diffusion pack: aurora's UVEU share in AE. Under us-ear-2026: kestrel, whose
    # parent is headquartered in China, runs devices in Singapore without a licence.
    assert breaches == [
        ["headquarters_control", "entity:kestrel"],
        ["uveu_tier2_country_share", "entity:aurora/country:AE"],
    ]
    assert out.index("us-ear-2026 (in_force)") < out.index(
        "us-bis-ai-diffusion-2025 (not_enforced)"
    )
    # India sits near its allocation: under 10% of the 790M TPP limit left.
    india = next(ln for ln in lines if "country:IN" in ln)
    assert "790,000,000" in india
    # sahra's Saudi site runs under a licence in GB300-equivalents: its agent's two shipped
    # serials are observed and covered, the third never arrived.
    sahra = next(ln for ln in lines if ln.lstrip().startswith("BIS-SA-0001"))
    assert sahra.split()[-4:] == ["3", "2", "2", "0"]  # shipped, observed, at site, elsewhere
    assert next(ln for ln in lines if "site:sahra-sa-ruh" in ln).split()[0] == "ok"
    missing = lines[lines.index("  shipment_missing: 1") + 1]
    assert '"serial": "1099999999999"' in missing
    assert out.count("metrics: http://127.0.0.1:") == 6  # the ledger's and five agents'
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
