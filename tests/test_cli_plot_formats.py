"""``simulate --plot``: the file's format follows its extension, unknown ones are refused,
the legend survives many vCPUs; and the summary table prints whole domain names."""

from __future__ import annotations

import json

import pytest

import xenevtchn as xe
from xenevtchn import plot
from xenevtchn.cli import main


def test_plot_pdf_writes_a_pdf(tmp_path, capsys):
    out = tmp_path / "run.pdf"
    assert main(["simulate", "--events", "1000", "-q", "--plot", str(out)]) == 0
    assert out.read_bytes()[:5] == b"%PDF-"


def test_plot_svg_writes_svg(tmp_path, capsys):
    out = tmp_path / "run.svg"
    assert main(["simulate", "--events", "1000", "-q", "--plot", str(out)]) == 0
    head = out.read_bytes()[:400]
    assert b"<svg" in head or b"<?xml" in head
    assert b"\x89PNG" not in out.read_bytes()[:8]


def test_plot_with_an_unknown_extension_is_refused_before_the_run(tmp_path, capsys):
    out = tmp_path / "run.xyz"
    assert main(["simulate", "--events", "1000", "-q", "--plot", str(out)]) == 2
    err = capsys.readouterr().err
    assert "xenevtchn simulate: error:" in err and ".png" in err and ".pdf" in err
    assert not out.exists()


def _timeline_sim(guests: int, vcpus: int) -> xe.Simulation:
    sim = xe.Simulation(xe.default_scenario(guests=guests, vcpus=vcpus, events=1500),
                        record_timeline=True)
    sim.run()
    return sim


def test_above_16_vcpus_the_plot_keeps_a_legend_with_one_line_per_domain():
    sim = _timeline_sim(guests=8, vcpus=2)          # 2 + 16 = 18 vCPUs
    assert len(sim.vcpus) > 16
    fig = plot.figure(sim)
    legend = fig.axes[0].get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [sim.names[d.domid] for d in sim.doms]
    lines = fig.axes[0].get_lines()
    total = sum(len(vs.delivered_at or []) for vs in sim.vcpus.values())
    width = sim.hv.now / 1000 / 100
    assert round(sum(sum(line.get_ydata()) for line in lines) * width) == total
    plot.require_matplotlib().close(fig)


def test_up_to_16_vcpus_one_line_per_vcpu():
    sim = _timeline_sim(guests=2, vcpus=2)
    fig = plot.figure(sim)
    assert len(fig.axes[0].get_legend().get_texts()) == len(sim.vcpus) == 6
    plot.require_matplotlib().close(fig)


def test_summary_table_prints_whole_long_domain_names(tmp_path, capsys):
    name = "a-rather-long-guest-name-for-the-web-tier"
    sc = tmp_path / "long.toml"
    sc.write_text(f'[simulation]\nevents = 500\n\n[[guest]]\nname = "{name}"\ncount = 2\nvcpus = 1\n')
    assert main(["simulate", "--scenario", str(sc), "-q"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if name in line]
    assert len(rows) == 2 and rows[0].startswith(f"d1 {name}-0 ") and rows[1].startswith(f"d2 {name}-1 ")
    header = next(line for line in out.splitlines() if line.startswith("domain "))
    assert len(rows[0]) == len(rows[1]) == len(header)   # the columns still line up
