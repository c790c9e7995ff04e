"""``xenevtchn bench`` on a user's mistakes and missing tools: one line, exit 2; and the
floor module's cache is a private per-user folder, never a predictable path in /tmp."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from xenevtchn import _bench_floors, cli


def _bench(argv, capsys):
    rc = cli.main(["bench", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_from_json_naming_a_missing_file_is_one_error_line(tmp_path, capsys):
    rc, out, err = _bench(["--from-json", str(tmp_path / "nope.json")], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("xenevtchn bench: error: --from-json") and "No such file" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_from_json_of_a_file_that_is_not_benchmark_json(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"something": "else"}))
    rc, out, err = _bench(["--from-json", str(path)], capsys)
    assert rc == 2 and "not a pytest-benchmark JSON file" in err


def test_k_matching_no_row_is_an_error_not_an_empty_table(capsys):
    rc, out, err = _bench(["-k", "no such row"], capsys)
    assert rc == 2 and out == ""
    assert "matches no row" in err and "d.send first raise" in err


def test_missing_setuptools_is_one_error_line(tmp_path):
    """Without setuptools (nor distutils, as on Python 3.12+) nothing can compile the floors."""
    code = ("import sys\n"
            "sys.modules['setuptools'] = None\n"
            "sys.modules['distutils'] = None\n"
            "from xenevtchn import cli\n"
            "sys.exit(cli.main(['bench', '-k', 'd.send first raise']))\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # nothing cached yet
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("xenevtchn bench: error:") and "pip install setuptools" in r.stderr


def test_the_floor_cache_is_per_user_and_never_in_the_shared_temp_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    roots = _bench_floors._cache_roots()
    assert roots == [tmp_path / "xdg" / "xenevtchn" / "bench-floors"]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    roots = _bench_floors._cache_roots()
    assert roots == [tmp_path / "home" / ".cache" / "xenevtchn" / "bench-floors"]
    shared = Path(tempfile.gettempdir()) / "xenevtchn"
    assert not any(r.is_relative_to(shared) for r in roots)


def test_the_cache_folders_are_created_mode_0700(tmp_path):
    root = tmp_path / "cache" / "xenevtchn" / "bench-floors"
    (tmp_path / "cache" / "xenevtchn").mkdir(parents=True, mode=0o777)
    os.chmod(tmp_path / "cache" / "xenevtchn", 0o777)   # left open by someone: tightened
    _bench_floors.private_dir(root)
    for d in (root, root.parent):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_a_cache_path_that_is_not_a_folder_is_refused(tmp_path):
    root = tmp_path / "cache" / "xenevtchn" / "bench-floors"
    root.parent.mkdir(parents=True)
    root.symlink_to(tmp_path)   # e.g. planted by someone else
    with pytest.raises(OSError):
        _bench_floors.private_dir(root)
