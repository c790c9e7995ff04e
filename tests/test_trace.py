"""``simulate --trace``: valid Chrome/Perfetto trace-event JSON, event by event."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from xenevtchn.cli import main
from xenevtchn.trace import XEN_PID, pid_of


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "run.json"
    summary_path = path.with_suffix(".summary.json")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["simulate", "--events", "4000", "--seed", "5", "--json", "--quiet",
                     "--trace", str(path)]) == 0
    summary_path.write_text(out.getvalue())
    return json.loads(path.read_text()), json.loads(out.getvalue()), path


def test_top_level_object_form(traced):
    doc, _, _ = traced
    assert set(doc) >= {"traceEvents", "displayTimeUnit"}
    assert doc["displayTimeUnit"] in ("ms", "ns")
    assert isinstance(doc["traceEvents"], list) and doc["traceEvents"]


def test_every_event_has_the_fields_its_phase_needs(traced):
    doc, _, _ = traced
    for ev in doc["traceEvents"]:
        assert ev["ph"] in ("M", "X", "i", "s", "f"), ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int) and isinstance(ev["name"], str)
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name", "process_sort_index")
            assert isinstance(ev["args"], dict) and ev["args"]
            continue
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0
        assert isinstance(ev["cat"], str)
        if ev["ph"] == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0
            assert ev["cat"] in ("send", "upcall", "handler", "poll")
        elif ev["ph"] == "i":
            assert ev["s"] == "t" and ev["cat"] in ("mask", "kick")
        else:
            assert isinstance(ev["id"], int) and ev["cat"] == "flow"


def test_tracks_are_named_one_per_vcpu(traced):
    doc, summary, _ = traced
    evs = doc["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in evs if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in evs if e["name"] == "thread_name"}
    assert procs[pid_of(XEN_PID)] == "Xen" and procs[1] == "dom0 (privileged)"  # domid + 1
    assert procs[2].startswith("d1 ")
    assert len(procs) == summary["scenario"]["domains"] + 1
    assert sum(1 for pid, _ in threads if pid != pid_of(XEN_PID)) == summary["scenario"]["vcpus"]
    assert threads[(pid_of(1), 1)] == "vCPU1"
    used = {(e["pid"], e["tid"]) for e in evs if e["ph"] != "M"}
    assert used <= set(threads)


def test_no_event_is_in_pid_0(traced):
    """Perfetto's tools treat pid 0 as the kernel's idle process: pids start at 1."""
    doc, _, _ = traced
    assert min(ev["pid"] for ev in doc["traceEvents"]) == 1


def test_one_trace_event_per_library_event(traced):
    doc, s, _ = traced
    x = Counter(e["cat"] for e in doc["traceEvents"] if e["ph"] == "X")
    t = s["totals"]
    assert x["send"] == t["sent"]
    assert x["handler"] == t["delivered"]
    assert x["upcall"] == t["upcalls"]
    assert x["poll"] == t["polls_woken"] + t["consumed_by_poll"]  # blocked intervals + kicks taken
    inst = Counter(e["name"].split()[0] for e in doc["traceEvents"] if e["ph"] == "i")
    assert inst["kick"] == t["kicks"]
    assert inst["mask"] > 0 and inst["unmask"] > 0
    sends = [e for e in doc["traceEvents"] if e.get("cat") == "send"]
    assert Counter(e["args"]["result"] for e in sends) == Counter(
        {"coalesced": t["coalesced"], "masked": t["masked"], "raised": t["sent"] - t["coalesced"] - t["masked"]})


def test_flows_are_paired_and_bound_to_slices(traced):
    doc, s, _ = traced
    evs = doc["traceEvents"]
    starts = {e["id"]: e for e in evs if e["ph"] == "s"}
    ends = {e["id"]: e for e in evs if e["ph"] == "f"}
    assert len(starts) == sum(e["ph"] == "s" for e in evs) and len(ends) == sum(e["ph"] == "f" for e in evs)
    assert starts.keys() == ends.keys() and starts
    # A flow binds to the slice it starts in: the send slice, and the handler slice (or
    # the poll waiter's "kicked" slice) that took the event, each starting at that time.
    starts_at = {(e["cat"], e["pid"], e["tid"], e["ts"]) for e in evs if e["ph"] == "X"}
    for fid, s_ev in starts.items():
        f_ev = ends[fid]
        assert f_ev["bp"] == "e" and f_ev["ts"] >= s_ev["ts"]
        assert ("send", s_ev["pid"], s_ev["tid"], s_ev["ts"]) in starts_at, s_ev
        assert ("handler", f_ev["pid"], f_ev["tid"], f_ev["ts"]) in starts_at or \
               ("poll", f_ev["pid"], f_ev["tid"], f_ev["ts"]) in starts_at, f_ev
    # Each handled or poll-taken event ends at least one flow (one per send that raised it
    # or coalesced into it); sends into events still pending at the end have none yet.
    t = s["totals"]
    assert t["delivered"] + t["consumed_by_poll"] <= len(ends) <= t["sent"]


def test_slices_on_a_track_nest(traced):
    doc, _, _ = traced
    tracks = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            tracks[(e["pid"], e["tid"])].append((e["ts"], round(e["ts"] + e["dur"], 3), e["name"]))
    for key, spans in tracks.items():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[tuple[float, float, str]] = []
        for a, b, name in spans:
            while stack and stack[-1][1] <= a:
                stack.pop()
            assert not stack or b <= stack[-1][1], f"{key}: {name} [{a}, {b}] overlaps {stack[-1]}"
            stack.append((a, b, name))


def test_the_same_seed_writes_the_same_trace(traced, tmp_path):
    _, _, path = traced
    again = tmp_path / "again.json"
    assert main(["simulate", "--events", "4000", "--seed", "5", "--quiet", "--trace", str(again)]) == 0
    assert again.read_bytes() == path.read_bytes()
