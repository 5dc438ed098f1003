"""The benchmark command runs end to end (quick mode: tiny sizes, one run).

Timings are not tests: this only checks that ``python -m benchmarks`` still
works against real runc containers and reports every scenario, so that the
benchmark cannot rot.  Whether targets are met is its own business (exit
status 1 when one is missed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.runner import SCENARIOS

#: The quick run takes about 10 s here; this bounds a hang.
SMOKE_TIMEOUT = 60

pytestmark = [
    pytest.mark.runtime,
    pytest.mark.skipif(os.geteuid() != 0, reason="runc containers need root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
]


def test_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["scenarios"]) == set(SCENARIOS)
    for name, scenario in report["scenarios"].items():
        assert scenario["figures"], f"{name} reported no figure"
        for figure in scenario["figures"]:
            assert figure["met"] in (True, False, None)
    assert report["meta"]["quick"] is True
    # The printed table carries every figure, each with its verdict.
    assert result.stdout.count("\n| ") == len(report["figures"]) + 1  # + the header row


@pytest.mark.skipif(shutil.which("cc") is None, reason="relayfloor builds a C relay")
def test_relayfloor_reports_every_relay() -> None:
    """``python -m benchmarks.relayfloor`` (the native pump's premise) still runs."""
    from benchmarks.relayfloor import VARIANTS

    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.relayfloor", "--quick"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shown = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert shown == list(VARIANTS), result.stdout
