"""The README's examples and quick-start demo run as written."""

from __future__ import annotations

import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md block {i}", "exec"), {})
    assert "upcall for" in capsys.readouterr().out


def test_quick_start_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/pytest" in text and ".venv/bin/pytest" in ci
    assert ".venv/bin/xenevtchn simulate" in text and ".venv/bin/xenevtchn simulate" in ci


def test_demo_raises_and_handles_events():
    from xenevtchn.demo import run

    out = io.StringIO()
    stats = run(out)
    # 4 front/back links, 3 rounds: each round's second request finds the backend port
    # still pending, so it coalesces; dom0 handles each backend port once per round, and
    # each guest handles its 2 responses and its timer tick.
    assert stats["coalesced"] == 4 * 3
    assert stats["handled"] == 4 * 3 + 2 * 3 * (2 + 1)
    assert stats["sent"] == 4 * 3 * 2 + 4 * 3
    assert stats["kicks"] > 0
