"""Every bad command line is one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xenevtchn.cli import main

BAD_TOML = "[simulation\nevents = 3\n"
BAD_KEY = "[[guest]]\nvpcus = 2\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    (tmp_path / "key.toml").write_text(BAD_KEY)
    (tmp_path / "ok.toml").write_text("[[guest]]\nvcpus = 2\n")
    return tmp_path


CASES = [
    (["simulate", "--events", "lots"], "simulate", "argument --events: must be a whole number, not 'lots'"),
    (["simulate", "--events", "0"], "simulate", "argument --events: must be in 1..1000000000, not 0"),
    (["simulate", "--events", "-5"], "simulate", "argument --events"),
    (["simulate", "--guests", "0"], "simulate", "argument --guests: must be in 1..32751, not 0"),
    (["simulate", "--guests", "40000"], "simulate",
     "argument --guests: must be in 1..32751, not 40000 (Xen has 32,751 domain ids for guests: domids "
     "end below DOMID_FIRST_RESERVED (0x7FF0) and dom0 is domid 0)"),
    (["simulate", "--vcpus", "33"], "simulate", "argument --vcpus: must be in 1..32, not 33"),
    (["simulate", "--seed", "x"], "simulate", "argument --seed"),
    (["simulate", "--frobnicate"], "simulate", "unrecognized arguments: --frobnicate"),
    (["simulate", "--events"], "simulate", "argument --events: expected one argument"),
    (["simulate", "--scenario", "{d}/missing.toml"], "simulate", "cannot read scenario file"),
    (["simulate", "--scenario", "{d}/bad.toml"], "simulate", "bad.toml: invalid TOML"),
    (["simulate", "--scenario", "{d}/key.toml"], "simulate", "unknown key 'guest[0].vpcus' (did you mean 'vcpus'?)"),
    (["simulate", "--scenario", "{d}/ok.toml", "--guests", "3"], "simulate", "--guests applies to the built-in"),
    (["simulate", "--trace", "{d}/ok.toml/t.json"], "simulate", "cannot write trace file"),
    (["simulate", "--trace", "{d}"], "simulate", "cannot write trace file"),
    (["simulate", "--plot", "{d}/nodir/p.png"], "simulate", "cannot write plot file"),
    (["list", "--at", "x"], "list", "argument --at: must be a whole number"),
    (["list", "--domain", "9"], "list", "the scenario has no domain 9"),
    (["list", "--scenario", "{d}/key.toml"], "list", "unknown key"),
    (["list", "--json", "extra"], "list", "unrecognized arguments: extra"),
    (["nonsense"], None, "invalid choice: 'nonsense'"),
]


@pytest.mark.parametrize("argv, cmd, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_and_exit_2(capsys, files, argv, cmd, message):
    argv = [a.format(d=files) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    prefix = f"xenevtchn {cmd}: error: " if cmd else "xenevtchn: error: "
    assert err.startswith(prefix) and message in err, err
    assert "Traceback" not in err and out == ""


def test_plot_without_matplotlib_says_how_to_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # as if it were not installed
    rc = main(["simulate", "--events", "100", "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == "xenevtchn simulate: error: --plot needs matplotlib: pip install 'xenevtchn[plot]'\n"
    assert not (tmp_path / "p.png").exists()                 # checked before anything ran


def test_errors_from_the_console_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-P", "-m", "xenevtchn", "simulate", "--scenario", str(tmp_path / "no.toml")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("xenevtchn simulate: error: cannot read scenario file") and "Traceback" not in r.stderr
