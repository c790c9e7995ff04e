"""The progress bar on a real terminal (issue 15, item 7): ``simulate`` and ``sweep`` run
with stderr on a pseudo-terminal show one bar that stays within the terminal's width
(``COLUMNS``, or the terminal's own size), with an ETA; with stderr on a pipe, or with
``-q``, nothing is drawn. Children run outside the source tree (the installed package)."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def _on_tty(args: list[str], cwd, columns: int | None = None, winsize: int | None = None) -> tuple[int, bytes, bytes]:
    """Run ``python -m xenevtchn ARGS`` with stderr on a pty; (status, stdout, what the terminal got)."""
    master, slave = os.openpty()
    if winsize is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, winsize, 0, 0))
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    proc = subprocess.Popen([sys.executable, "-m", "xenevtchn", *args], stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(slave)
    got = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            got += chunk
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, got


def _redraws(term: bytes) -> list[bytes]:
    """Each state of the line: the text between carriage returns (the terminal driver turns
    a newline into CR LF), without escape sequences."""
    return [ANSI.sub(b"", part) for part in re.split(rb"\r\n?|\n", term)]


@pytest.mark.parametrize("how", ["COLUMNS", "winsize"])
def test_simulate_bar_fits_a_narrow_terminal(tmp_path, how):
    width = 44
    kw = {"columns": width} if how == "COLUMNS" else {"winsize": width}
    rc, out, term = _on_tty(["simulate", "--events", "300000", "--json"], tmp_path, **kw)
    assert rc == 0 and b'"sent": 300000' in out
    lines = [ln for ln in _redraws(term) if ln.strip()]
    bars = [ln for ln in lines if b"simulate:" in ln]
    assert bars, term[:500]
    assert any(b"%|" in ln for ln in bars) and any(b"ETA" in ln for ln in bars)
    too_wide = [ln for ln in _redraws(term) if len(ln.decode()) > width - 1]
    assert not too_wide, too_wide[:3]
    assert lines == bars  # nothing else was written to the terminal; the bar erased itself


def test_sweep_bar_is_the_same_bar(tmp_path):
    rc, _, term = _on_tty(["sweep", "--param", "seed=1..3", "--events", "200", "--workers", "1",
                           "--out", str(tmp_path / "r.csv")], tmp_path, columns=60)
    assert rc == 0
    bars = [ln for ln in _redraws(term) if ln.startswith(b"sweep:") and b"%|" in ln]
    assert any(b"3/3 runs" in ln for ln in bars) and any(b"ETA" in ln for ln in bars)
    assert all(len(ln.decode()) <= 59 for ln in bars)
    assert _redraws(term)[-2].startswith(b"sweep: 3 runs in ")  # the note, after the bar is erased


def test_quiet_draws_nothing_on_a_terminal(tmp_path):
    rc, out, term = _on_tty(["simulate", "--events", "50000", "-q"], tmp_path, columns=80)
    assert rc == 0 and out.startswith(b"xenevtchn simulate:")
    assert term == b""


def test_no_bar_when_stderr_is_a_pipe(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xenevtchn", "simulate", "--events", "50000"],
                          capture_output=True, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stderr == b""
    assert b"\r" not in proc.stdout
