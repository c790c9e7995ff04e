"""``simulate --plot``: a PNG of events per vCPU over time and upcall latency.

matplotlib is in the ``test`` extra, so this runs in CI; the path without matplotlib is
tested in test_cli_errors.py.
"""

from __future__ import annotations

from xenevtchn.cli import main


def test_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "run.png"
    assert main(["simulate", "--events", "3000", "--plot", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 800)
    assert f"plot: {out}" in capsys.readouterr().err
