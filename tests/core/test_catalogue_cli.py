"""`gpucap catalogue`: every model with its computed class, as JSON and as a table."""

from __future__ import annotations

import json

import pytest

from gpucap.cli import main
from gpucap.core.catalogue import default_catalogue


def test_catalogue_json_lists_every_model_with_computed_class(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["catalogue", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [a.id for a in default_catalogue().accelerators]
    h100 = next(r for r in rows if r["id"] == "h100-sxm5-80gb")
    assert h100["pci_device_ids"] == ["0x2330"]
    assert (h100["tpp"], h100["h100e"], h100["eccn_class"]) == (15832, 1.0, "3A090.a")
    assert h100["eccn_paragraph"] == "3A090.a.1"
    assert h100["performance_density"] == pytest.approx(19.45)
    l4 = next(r for r in rows if r["id"] == "l4-24gb")
    assert (l4["eccn_class"], l4["eccn_paragraph"]) == ("3A090.a", "3A090.a.2")
    assert all(r["source"] and r["confidence"] for r in rows)


def test_catalogue_table_shows_ids_tpp_and_class(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalogue"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if "h20-96gb" in ln)
    assert "2,368" in row
    assert "not_controlled" in row


def test_a_closed_pipe_ends_quietly() -> None:
    """`gpucap catalogue --format json | head -c 1`: no traceback when the reader goes away."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "gpucap", "catalogue", "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.read(1) == b"["
    proc.stdout.close()  # the reader goes away before the writer is done
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=30) in (0, 141)  # 0 if everything fitted in the pipe buffer
    assert "Traceback" not in err
