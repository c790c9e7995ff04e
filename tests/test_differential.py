"""Differential test: the native implementation (``import xenevtchn``) against the
pure-Python reference model (``xenevtchn.reference``), driven in lockstep.

A Hypothesis ``RuleBasedStateMachine`` builds the same set of domains in two hypervisors
and applies identical operations to both: every wrapper hypercall, raw
``event_channel_op``/``event_channel_op_compat`` calls with random commands and bytes,
hypervisor-side event sources (VIRQ, PIRQ, inject), SCHEDOP_poll with simulated time,
guest-side writes into the shared_info page (single bits, and whole upcall drains),
pause/reset, domain destroy/create (also into caller-owned, garbage-filled buffers), calls
on destroyed domains, and event sources run while the hooks raise.

After every step it compares:

* the operation's outcome (return value, or exception type and errno);
* the ``on_kick``/``on_wake``/``on_interrupt``/``on_gsi`` hook calls as ``(domid, vcpu id,
  kind)`` (``("gsi", domid, gsi, level)`` for a line), in order (only as a multiset for
  ``send_many``, which docs/semantics.md allows to batch);
* every HVM/PVH domain's ``callback_asserted``, upcall vectors and callback param;
* the raw bytes of every domain's ``struct shared_info``;
* every vCPU's ``.polling``;
* ``status()`` of a sample of ports (0..70 plus some high ones) in every domain, as seen by
  a privileged domain (or by the domain itself when none exists).

Exception types are compared exactly, with the one exception docs/semantics.md makes:
``d.send`` may raise ``OverflowError`` where the reference says ``ValueError``.
Below the machine, a few fixed lockstep scenarios replay sequences that long random runs
found (and that the short CI profile would rarely reach).

CI runs a fixed, database-free, derandomized profile (reproducible). Scale it up with
``XENEVTCHN_DIFF_EXAMPLES=<n>`` (examples; default below) and optionally
``XENEVTCHN_DIFF_STEPS=<n>`` (max steps per example); ``XENEVTCHN_DIFF_RANDOM=1`` turns off
derandomization so repeated long runs explore different sequences (then
``pytest --hypothesis-seed=N`` reproduces one); ``XENEVTCHN_DIFF_NOSHRINK=1`` reports the
first failing sequence without shrinking it (shrinking can take minutes).
"""

from __future__ import annotations

import os
import struct
from array import array
from collections import Counter

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import xenevtchn as native_mod
from xenevtchn import reference as ref_mod
from xenevtchn._native import lib as native_lib

DOMID_SELF = 0x7FF0
SI_SIZE = {"x86_64": 3136, "x86_32": 2344}
# 2-level bitmaps and vcpu_info fields (spec §12.1, §12.2)
PENDING_OFF = {"x86_64": 2048, "x86_32": 2048}
MASK_OFF = {"x86_64": 2560, "x86_32": 2176}
NR_PORTS = {"x86_64": 4096, "x86_32": 1024}
SEL_OFF = {"x86_64": (8, 8), "x86_32": (4, 4)}  # (offset in vcpu_info, size)

HIGH_PORTS = [63, 64, 65, 70, 71, 127, 128, 129, 1023, 1024, 4095, 4096, 2**32 - 1]
SAMPLE_PORTS = list(range(0, 71)) + [71, 100, 127, 128, 191, 192, 1023, 1024, 4095, 4096, 2**32 - 1]
FIFO_GFNS = [0, 1, 2, 3, 4, 5, 6, 7]  # frames the FIFO rules use (compared every step)
ODD_DOMIDS = [DOMID_SELF, 7, 12, 0x7FEF, 0x7FF1, 0x7FF2, 0x7FF4, 0x7FFF, 0xFFFF]


class HookBoom(Exception):
    """Raised by the hooks in the raising_hooks rule."""


ALLOWED_EXC = (ValueError, TypeError, OverflowError, HookBoom)

# Initial domains: (domid, kwargs). dom0 privileged; a 3-vCPU guest; a 1-vCPU x86_32
# guest; an HVM guest whose max_evtchn_port = 70 (so -ENOSPC and bucket growth past 64
# happen, and every domain type's delivery is compared: more HVM/PVH come from create).
INITIAL = [
    (0, dict(vcpus=2, privileged=True)),
    (1, dict(vcpus=3)),
    (2, dict(vcpus=1, layout="x86_32")),
    (3, dict(vcpus=2, max_evtchn_port=70, nr_pirqs=4, type="hvm")),
]
# HVM_PARAM_CALLBACK_IRQ values: none, GSIs (one only by its low byte, two out of range),
# PCI INTx, vectors, an unknown type byte.
CALLBACK_VIAS = [0, 5, 9, 0x105, 48, 0, (1 << 56) | (3 << 11) | 2, (1 << 56) | (1 << 11),
                 (2 << 56) | 0xF3, (2 << 56) | 0x40, 3 << 56]
IRQ_MAX_GUESTS = 3  # Hypervisor(irq_max_guests=...): a fourth sharer of a host IRQ gets EBUSY

EXAMPLES = int(os.environ.get("XENEVTCHN_DIFF_EXAMPLES", "50"))
STEPS = int(os.environ.get("XENEVTCHN_DIFF_STEPS", "200"))
DERANDOMIZE = not os.environ.get("XENEVTCHN_DIFF_RANDOM")

STATS = Counter()  # steps / examples actually run (printed by the last test with -s)


def _norm_value(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", int(v))
    if hasattr(v, "status") and hasattr(v, "vcpu") and hasattr(v, "virq"):
        def i(x):
            return None if x is None else int(x)

        return ("status", i(v.status), i(v.vcpu), i(v.dom), i(v.port), i(v.pirq), i(v.virq))
    return ("other", type(v).__name__, repr(v))


def outcome(side, fn, range_equiv=False):
    """Run fn(); return a comparable description of what happened. ``range_equiv``:
    ValueError and OverflowError are one outcome ("a number that does not fit") -- only
    for ``d.send``, the one-C-call fast path, which docs/semantics.md ("Entry points")
    lets raise cffi's OverflowError where every other wrapper must say ValueError."""
    try:
        r = fn()
    except side.m.EvtchnError as e:
        assert isinstance(e, OSError), f"{side.name}: EvtchnError is not an OSError"
        assert isinstance(e.errno, int) and e.errno > 0, f"{side.name}: bad errno {e.errno!r}"
        return ("EvtchnError", e.errno)
    except (ValueError, OverflowError) as e:
        return ("out of range",) if range_equiv else (type(e).__name__,)
    except ALLOWED_EXC as e:
        return (type(e).__name__,)
    except Exception as e:  # any other exception is a bug on that side
        raise AssertionError(f"{side.name} raised unexpected {type(e).__name__}: {e!r}") from e
    return _norm_value(r)


def field_name(layout, off):
    """Human-readable name of a shared_info byte offset (for mismatch messages)."""
    if off < 2048:
        v, o = divmod(off, 64)
        names = {0: "upcall_pending", 1: "upcall_mask"}
        so, ss = SEL_OFF[layout]
        if so <= o < so + ss:
            return f"vcpu[{v}].pending_sel byte {o - so}"
        return f"vcpu[{v}].{names.get(o, f'+{o}')}"
    if PENDING_OFF[layout] <= off < MASK_OFF[layout]:
        b = off - PENDING_OFF[layout]
        return f"evtchn_pending ports {b * 8}..{b * 8 + 7}"
    end = MASK_OFF[layout] + NR_PORTS[layout] // 8
    if MASK_OFF[layout] <= off < end:
        b = off - MASK_OFF[layout]
        return f"evtchn_mask ports {b * 8}..{b * 8 + 7}"
    return f"+{off}"


def diff_bytes(layout, a, b):
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            out.append(f"{i} ({field_name(layout, i)}): native {x:#04x} reference {y:#04x}")
    return out


class Side:
    """One implementation: its hypervisor, live domains and hook log."""

    def __init__(self, m, name):
        self.m = m
        self.name = name
        self.hv = m.Hypervisor(irq_max_guests=IRQ_MAX_GUESTS)
        self.doms = {}
        self.dead = []
        self.log = []
        self.boom = False  # hooks raise HookBoom (after logging) while set
        self.bufs = {}  # domid -> caller-owned shared_info buffer
        self.hv.on_kick = lambda v: self.hook(v, "kick")
        self.hv.on_wake = lambda v: self.hook(v, "wake")
        self.hv.on_interrupt = lambda v, vec: self.hook(v, ("int", vec))
        self.hv.on_gsi = self.gsi

    def gsi(self, d, gsi, level):
        domid = next((i for i, x in self.doms.items() if x is d), ("unknown-domain", repr(d)))
        self.log.append(("gsi", domid, gsi, level))
        if self.boom:
            raise HookBoom("gsi")

    def hook(self, v, kind):
        self.log.append((self.domid_of(v), v.id, kind))
        if self.boom:
            raise HookBoom(kind)

    xen_silent = False  # test_snapshot_differential: a restored copy's consumers are None

    def xen_notify(self, vcpu, port):
        """A Xen-attached channel's consumer: logged among the hooks (issue 19 item 4)."""
        if self.xen_silent:
            return
        self.log.append(("xen", vcpu, port))
        if self.boom:
            raise HookBoom("xen")

    def domid_of(self, v):
        for domid, d in self.doms.items():
            for x in d.vcpus:
                if x is v:
                    return domid
        return ("unknown-vcpu", repr(v))


class Differential(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        STATS["examples"] += 1
        self.N = Side(native_mod, "native")
        self.R = Side(ref_mod, "reference")
        self.layout = {}
        self.ports = set()
        self.obs = {}  # domid -> [(port, status outcome)] of open ports (native, last step)
        for domid, kw in INITIAL:
            for s in (self.N, self.R):
                d = s.hv.create_domain(domid=domid, **kw)
                s.doms[domid] = d
            self.layout[domid] = kw.get("layout", "x86_64")
        # Start with channels of every kind so that events flow from the first step.
        for a, remote in [(1, 0), (2, 1), (3, 0), (1, 1), (0, 3)]:
            r = self.both(lambda s: s.doms[a].alloc_unbound(remote))
            self.both(lambda s: s.doms[remote].bind_interdomain(a, r[1]))
        for domid, kw in INITIAL:
            for v in range(kw["vcpus"]):
                self.both(lambda s: s.doms[domid].bind_ipi(v))
                self.both(lambda s: s.doms[domid].bind_virq(0, v))  # VIRQ_TIMER
        self.both(lambda s: s.hv.permit_pirq(1, 3))
        self.both(lambda s: s.doms[1].bind_pirq(3, 1))
        self.both(lambda s: s.doms[0].bind_pirq(3, 1))  # shared with dom1
        # A Xen-attached channel of dom1 (notify vCPU 1) bound by dom0, and one left unbound.
        self.xen_ports = []  # (domid, port) of Xen-attached channels allocated so far
        x = self.both(lambda s: s.hv.alloc_xen_channel(1, 1, 0, notify=s.xen_notify))
        self.xen_ports.append((1, x[1]))
        self.both(lambda s: s.doms[0].bind_interdomain(1, x[1]))
        y = self.both(lambda s: s.hv.alloc_xen_channel(3, 0, 1))
        self.xen_ports.append((3, y[1]))
        self.both(lambda s: s.doms[0].bind_virq(3))  # VIRQ_DOM_EXC (global)
        self.both(lambda s: s.doms[2].alloc_unbound(0))
        self.both(lambda s: s.doms[0].unmask(1))
        self.same_state()
        STATS["steps"] -= 1  # that was the set-up, not a step

    # ------------------------------------------------------------------ helpers

    def both(self, fn, hooks="seq", range_equiv=False):
        """Apply fn(side) to both sides; compare outcomes and hook calls."""
        STATS["calls"] += 1
        self.N.log.clear()
        self.R.log.clear()
        rn = outcome(self.N, lambda: fn(self.N), range_equiv)
        rr = outcome(self.R, lambda: fn(self.R), range_equiv)
        assert rn == rr, f"outcome differs: native {rn!r} reference {rr!r}"
        if hooks == "seq":
            assert self.N.log == self.R.log, (
                f"hook calls differ: native {self.N.log!r} reference {self.R.log!r}"
            )
        else:
            assert Counter(self.N.log) == Counter(self.R.log), (
                f"hook multisets differ: native {sorted(map(repr, self.N.log))} "
                f"reference {sorted(map(repr, self.R.log))}"
            )
        if rn is not None and rn[0] == "int" and 0 <= rn[1] < 2**17:
            self.ports.add(rn[1])
        return rn

    def domids(self):
        return sorted(self.N.doms)

    @staticmethod
    def pick(data, options, label):
        """Draw from one of several strategies, chosen with integer weights."""
        options = [(w, s) for w, s in options if s is not None]
        idx = [i for i, (w, _) in enumerate(options) for _ in range(w)]
        return data.draw(options[data.draw(st.sampled_from(idx), label=label + " kind")][1], label=label)

    def dom(self, data):
        return data.draw(st.sampled_from(self.domids()), label="domain")

    def any_domid(self, data, wild=False):
        return self.pick(
            data,
            [
                (6, st.sampled_from(self.domids())),
                (2, st.sampled_from(ODD_DOMIDS)),
                (1 if wild else 0, st.sampled_from([-1, 0x10000, 2**40])),
            ],
            "domid",
        )

    def bound_ports(self, domid):
        return sorted(p for p, _ in self.obs.get(domid, ()))

    def ports_with(self, domid, statuses):
        return sorted(p for p, st_ in self.obs.get(domid, ()) if st_[1] in statuses)

    def port(self, data, domid=None, wild=False, prefer=()):
        """A port number: mostly one that is open in ``domid`` (observed after the last
        step; ``prefer``: EVTCHNSTAT_* values to favour), else any port seen so far, a
        small number or a high/limit one."""
        bound = self.bound_ports(domid) if domid is not None else []
        preferred = self.ports_with(domid, prefer) if domid is not None and prefer else []
        return self.pick(
            data,
            [
                (12, st.sampled_from(preferred) if preferred else None),
                (8, st.sampled_from(bound) if bound else None),
                (2, st.sampled_from(sorted(self.ports)) if self.ports else None),
                (3, st.integers(0, 72)),
                (1, st.sampled_from(HIGH_PORTS)),
                (1 if wild else 0, st.sampled_from([-1, 2**32, 2**64])),
            ],
            "port",
        )

    def vcpu(self, data):
        return self.pick(
            data,
            [(6, st.integers(0, 2)), (2, st.integers(3, 4)), (1, st.sampled_from([31, 32, 2**32 - 1]))],
            "vcpu",
        )

    def virq(self, data):
        return self.pick(
            data,
            [(4, st.sampled_from([0, 1, 2, 3, 7, 11, 13])), (3, st.integers(0, 23)),
             (1, st.sampled_from([-1, 24, 25, 2**32 - 1]))],
            "virq",
        )

    def pirq(self, data):
        return self.pick(
            data, [(6, st.integers(0, 4)), (1, st.sampled_from([255, 256, 2**32 - 1]))], "pirq"
        )

    # ------------------------------------------------------------------ invariant

    @invariant()
    def same_state(self):
        STATS["steps"] += 1
        assert self.domids() == sorted(self.R.doms)
        assert self.N.hv.now == self.R.hv.now
        privileged = [i for i in self.domids() if self.N.doms[i].privileged]
        observer = privileged[0] if privileged else None
        self.obs = {}
        for dn, dr in zip(self.N.dead, self.R.dead):  # destroyed: nobody polls any more
            pn = [bool(v.polling) for v in dn.vcpus]
            assert pn == [bool(v.polling) for v in dr.vcpus] and not any(pn), pn
        for domid in self.domids():
            layout = self.layout[domid]
            size = SI_SIZE[layout]
            dn, dr = self.N.doms[domid], self.R.doms[domid]
            bad = native_lib.xe_2l_route_check(dn._c)   # the guest's per-vCPU port maps
            assert bad < 0, f"dom{domid}: port {bad}'s per-vCPU map bits disagree with its record"
            bn = bytes(dn.shared_info.buffer[:size])
            br = bytes(dr.shared_info.buffer[:size])
            if bn != br:
                raise AssertionError(
                    f"dom{domid} shared_info differs:\n  " + "\n  ".join(diff_bytes(layout, bn, br))
                )
            if domid in self.N.bufs:  # the whole caller buffer, bytes past the struct too
                assert self.N.bufs[domid] == self.R.bufs[domid], f"dom{domid} caller buffer differs"
            for g in FIFO_GFNS:
                mn, mr = bytes(dn.memory.page(g)), bytes(dr.memory.page(g))
                if mn != mr:
                    diff = [i // 4 for i in range(0, 4096, 4) if mn[i:i + 4] != mr[i:i + 4]]
                    raise AssertionError(f"dom{domid} guest frame {g} differs at words {diff[:8]}")
            assert dn.abi == dr.abi, f"dom{domid} ABI: native {dn.abi} reference {dr.abi}"
            pn = [bool(v.polling) for v in dn.vcpus]
            pr = [bool(v.polling) for v in dr.vcpus]
            assert pn == pr, f"dom{domid} polling differs: native {pn} reference {pr}"
            hn = (dn.type, dn.callback_asserted, [v.upcall_vector for v in dn.vcpus])
            hr = (dr.type, dr.callback_asserted, [v.upcall_vector for v in dr.vcpus])
            assert hn == hr, f"dom{domid} HVM state differs: native {hn} reference {hr}"
            for s in (self.N, self.R):
                s.log.clear()
            observed = []
            for p in SAMPLE_PORTS:
                if observer is None:
                    sn = outcome(self.N, lambda: dn.status(p))
                    sr = outcome(self.R, lambda: dr.status(p))
                else:
                    on, orr = self.N.doms[observer], self.R.doms[observer]
                    sn = outcome(self.N, lambda: on.status(p, dom=domid))
                    sr = outcome(self.R, lambda: orr.status(p, dom=domid))
                assert sn == sr, (
                    f"dom{domid} port {p} status (seen by "
                    f"{'self' if observer is None else f'dom{observer}'}) differs: "
                    f"native {sn!r} reference {sr!r}"
                )
                observed.append(sn)
            # status() is a hypercall: for an HVM/PVH caller a VM exit, which may lower its
            # callback line (once); nothing else may run, and both sides alike.
            assert self.N.log == self.R.log, f"status() hooks: {self.N.log} vs {self.R.log}"
            assert all(c[0] == "gsi" and c[3] is False for c in self.N.log), f"status() ran {self.N.log}"
            self.obs[domid] = [
                (p, st_) for p, st_ in zip(SAMPLE_PORTS, observed)
                if st_[0] == "status" and st_[1] != 0
            ]

    # ------------------------------------------------------------------ allocation / binding

    @rule(data=st.data())
    def alloc_unbound(self, data):
        a = self.dom(data)
        dom = self.pick(
            data,
            [(3, st.just(DOMID_SELF)), (2, st.just(a)), (3, st.sampled_from(self.domids())),
             (1, st.sampled_from(ODD_DOMIDS)), (1, st.sampled_from([-1, 0x10000]))],
            "dom",
        )
        remote = self.any_domid(data, wild=True)
        self.both(lambda s: s.doms[a].alloc_unbound(remote, dom=dom))

    @rule(data=st.data())
    def alloc_many(self, data):
        """A burst of allocations in one domain (mostly the small one): grows the port
        table past the first 64-port bucket and runs into -ENOSPC."""
        a = data.draw(st.sampled_from([3, 3, 3] + self.domids()), label="domain")
        if a not in self.N.doms:
            return
        n = data.draw(st.integers(1, 80), label="how many")
        ipi = data.draw(st.booleans(), label="as IPIs")
        for _ in range(n):
            if ipi:
                r = self.both(lambda s: s.doms[a].bind_ipi(0))
            else:
                r = self.both(lambda s: s.doms[a].alloc_unbound(0))
            if r is None or r[0] != "int":
                break

    @rule(data=st.data())
    def bind_interdomain(self, data):
        unbound = [
            (d, p, st_[3]) for d in self.domids() for p, st_ in self.obs.get(d, ())
            if st_[1] == 1 and st_[3] in self.N.doms
        ]
        if unbound and data.draw(st.integers(0, 2), label="matching") > 0:
            # a port that is unbound naming the caller: the call can succeed
            rdom, rport, a = data.draw(st.sampled_from(unbound), label="unbound port")
            remote = data.draw(st.sampled_from([rdom, DOMID_SELF] if rdom == a else [rdom]),
                               label="remote_dom")
        else:
            a = self.dom(data)
            remote = self.any_domid(data, wild=True)
            rdom = remote if remote in self.N.doms else (a if remote == DOMID_SELF else None)
            rport = self.port(data, domid=rdom, wild=True)
        self.both(lambda s: s.doms[a].bind_interdomain(remote, rport))

    @rule(data=st.data())
    def bind_interdomain_more(self, data):
        self.bind_interdomain(data)

    @rule(data=st.data())
    def bind_virq(self, data):
        a = self.dom(data)
        virq, vcpu = self.virq(data), self.vcpu(data)
        self.both(lambda s: s.doms[a].bind_virq(virq, vcpu))

    @rule(data=st.data())
    def bind_pirq(self, data):
        a = self.dom(data)
        pirq = self.pirq(data)
        flags = data.draw(st.sampled_from([0, 1, 1, 2, 3, 0xFFFFFFFF]), label="flags")
        self.both(lambda s: s.doms[a].bind_pirq(pirq, flags))

    @rule(data=st.data())
    def permit_pirq(self, data):
        domid = self.any_domid(data)
        pirq = data.draw(st.one_of(st.integers(0, 4), st.sampled_from([255, 256, -1])), label="pirq")
        self.both(lambda s: s.hv.permit_pirq(domid, pirq))

    @rule(data=st.data())
    def bind_ipi(self, data):
        a = self.dom(data)
        vcpu = self.vcpu(data)
        self.both(lambda s: s.doms[a].bind_ipi(vcpu))

    @rule(data=st.data())
    def close(self, data):
        a = self.dom(data)
        port = self.port(data, domid=a, wild=True)
        self.both(lambda s: s.doms[a].close(port))

    @rule(data=st.data())
    def send(self, data):
        a = self.dom(data)
        port = self.port(data, domid=a, wild=True, prefer=(2, 5))
        self.both(lambda s: s.doms[a].send(port), range_equiv=True)

    @rule(data=st.data())
    def send_more(self, data):  # events are what most checks are about: send twice as often
        self.send(data)

    @rule(data=st.data())
    def send_many(self, data):
        a = self.dom(data)
        n = data.draw(st.integers(0, 8), label="n")
        ports = [self.port(data, domid=a, prefer=(1, 2, 5)) for _ in range(n)]
        as_buffer = data.draw(st.booleans(), label="as_buffer")

        def op(s):
            arg = array("I", ports) if as_buffer and all(p < 2**32 for p in ports) else list(ports)
            return s.doms[a].send_many(arg)

        self.both(op, hooks="multiset")

    @rule(data=st.data())
    def status_other(self, data):
        a = self.dom(data)
        dom = self.any_domid(data, wild=True)
        port = self.port(data, domid=dom if dom in self.N.doms else None, wild=True)
        self.both(lambda s: s.doms[a].status(port, dom=dom))

    @rule(data=st.data())
    def bind_vcpu(self, data):
        a = self.dom(data)
        port = self.port(data, domid=a, wild=True, prefer=(1, 2, 3, 4))
        vcpu = self.vcpu(data)
        self.both(lambda s: s.doms[a].bind_vcpu(port, vcpu))

    @rule(data=st.data())
    def unmask(self, data):
        a = self.dom(data)
        port = self.port(data, domid=a, wild=True)
        self.both(lambda s: s.doms[a].unmask(port))

    @rule(data=st.data())
    def reset(self, data):
        a = self.dom(data)
        dom = self.pick(
            data,
            [(1, st.just(DOMID_SELF)), (1, st.just(a)), (6, st.sampled_from(self.domids())),
             (2, st.sampled_from(ODD_DOMIDS)), (1, st.sampled_from([-1, 0x10000]))],
            "dom",
        )
        self.both(lambda s: s.doms[a].reset(dom=dom))

    @rule(data=st.data())
    def pause(self, data):
        domid = self.any_domid(data)
        self.both(lambda s: s.hv.pause_domain(domid))

    @rule(data=st.data())
    def unpause(self, data):
        domid = self.any_domid(data)
        self.both(lambda s: s.hv.unpause_domain(domid))

    # ------------------------------------------------------------------ hypervisor event sources

    @rule(data=st.data())
    def send_virq(self, data):
        domid = self.any_domid(data)
        virq, vcpu = self.virq(data), self.vcpu(data)
        self.both(lambda s: s.hv.send_virq(domid, virq, vcpu))

    @rule(data=st.data())
    def send_global_virq(self, data):
        virq = self.virq(data)
        self.both(lambda s: s.hv.send_global_virq(virq))

    @rule(data=st.data())
    def set_virq_handler(self, data):
        virq = self.virq(data)
        domid = self.any_domid(data)
        self.both(lambda s: s.hv.set_virq_handler(virq, domid))

    @rule(data=st.data())
    def send_pirq(self, data):
        domid = self.any_domid(data)
        pirq = data.draw(st.one_of(st.integers(0, 4), st.sampled_from([255, 256])), label="pirq")
        self.both(lambda s: s.hv.send_pirq(domid, pirq))

    @rule(data=st.data())
    def inject(self, data):
        domid = self.any_domid(data)
        port = self.port(data, domid=domid if domid in self.N.doms else None)
        self.both(lambda s: s.hv.inject(domid, port))

    # ------------------------------------------------------------------ poll and time

    @rule(data=st.data())
    def sched_poll(self, data):
        a = self.dom(data)
        n = data.draw(st.sampled_from([0, 1, 1, 1, 2, 3, 129]), label="nr_ports")
        bound = self.bound_ports(a)
        if n > 8:
            ports = [1] * n
        elif bound and data.draw(st.integers(0, 2), label="bound ports only") > 0:
            ports = data.draw(st.lists(st.sampled_from(bound), min_size=n, max_size=n),
                              label="ports")
        else:
            ports = [self.port(data, domid=a) for _ in range(n)]
        now = self.N.hv.now
        timeout = data.draw(
            st.one_of(
                st.just(0),
                st.integers(1, 2000).map(lambda x: now + x),
                st.sampled_from([now, max(now - 1, 1)]),
            ),
            label="timeout",
        )
        vcpu = self.pick(
            data, [(6, st.integers(0, len(self.N.doms[a].vcpus) - 1)), (1, st.integers(0, 40))],
            "vcpu",
        )
        self.both(lambda s: s.doms[a].sched_poll(ports, timeout=timeout, vcpu=vcpu))

    @rule(ns=st.sampled_from([0, 1, 10, 100, 500, 1000, 5000]))
    def advance(self, ns):
        self.both(lambda s: s.hv.advance(ns))

    # ------------------------------------------------------------------ guest pokes

    @rule(data=st.data())
    def guest_poke(self, data):
        """A guest writing its own shared_info: identical bytes into both buffers."""
        a = self.dom(data)
        layout = self.layout[a]
        kind = data.draw(
            st.sampled_from(
                ["mask", "mask", "pending", "pending", "upcall_pending", "upcall_mask", "sel",
                 "byte"]
            ),
            label="kind",
        )
        writes = []  # (offset, bytes)
        buf = self.N.doms[a].shared_info.buffer
        if kind in ("mask", "pending"):
            bound = self.bound_ports(a)
            p = self.pick(
                data,
                [(4, st.sampled_from(bound) if bound else None), (2, st.integers(0, 72)),
                 (1, st.integers(0, NR_PORTS[layout] - 1))],
                "port",
            )
            base = MASK_OFF[layout] if kind == "mask" else PENDING_OFF[layout]
            off = base + p // 8
            bit = 1 << (p % 8)
            val = data.draw(st.booleans(), label="set")
            b = buf[off]
            writes.append((off, bytes([(b | bit) if val else (b & ~bit & 0xFF)])))
        elif kind in ("upcall_pending", "upcall_mask"):
            v = data.draw(st.integers(0, 3), label="vcpu")
            off = 64 * v + (0 if kind == "upcall_pending" else 1)
            writes.append((off, bytes([data.draw(st.sampled_from([0, 1, 0xFF]), label="val")])))
        elif kind == "sel":
            v = data.draw(st.integers(0, 3), label="vcpu")
            so, ss = SEL_OFF[layout]
            off = 64 * v + so
            cur = int.from_bytes(buf[off:off + ss], "little")
            how = data.draw(st.sampled_from(["zero", "clear_bit", "random"]), label="how")
            if how == "zero":
                new = 0
            elif how == "clear_bit":
                new = cur & ~(1 << data.draw(st.integers(0, 8 * ss - 1), label="bit"))
            else:
                new = data.draw(st.integers(0, 2 ** (8 * ss) - 1), label="value")
            writes.append((off, new.to_bytes(ss, "little")))
        else:
            off = data.draw(st.integers(0, SI_SIZE[layout] - 1), label="offset")
            writes.append((off, bytes([data.draw(st.integers(0, 255), label="value")])))

        def op(s):
            mv = s.doms[a].shared_info.buffer
            for off, bs in writes:
                mv[off:off + len(bs)] = bs

        self.both(op)

    @rule(data=st.data())
    def guest_drain(self, data):
        """A guest's upcall on one vCPU, done with plain writes: clear upcall_pending and
        the selector, then the pending bits of (some of) the words it named."""
        a = self.dom(data)
        layout = self.layout[a]
        v = data.draw(st.integers(0, len(self.N.doms[a].vcpus) - 1), label="vcpu")
        so, ss = SEL_OFF[layout]
        wbytes = ss  # one selector bit covers one bitmap word of ss bytes
        buf = self.N.doms[a].shared_info.buffer
        sel = int.from_bytes(buf[64 * v + so:64 * v + so + ss], "little")
        clear_ports = data.draw(st.sampled_from(["all", "none", "some"]), label="clear pending")
        writes = [(64 * v, b"\x00"), (64 * v + so, bytes(ss))]
        for k in range(8 * ss):
            if not sel >> k & 1 or clear_ports == "none":
                continue
            off = PENDING_OFF[layout] + k * wbytes
            if off + wbytes > MASK_OFF[layout]:
                continue
            if clear_ports == "all":
                writes.append((off, bytes(wbytes)))
            else:
                keep = data.draw(st.integers(0, 2 ** (8 * wbytes) - 1), label="keep bits")
                old = int.from_bytes(buf[off:off + wbytes], "little")
                writes.append((off, (old & keep).to_bytes(wbytes, "little")))

        def op(s):
            mv = s.doms[a].shared_info.buffer
            for off, bs in writes:
                mv[off:off + len(bs)] = bs

        self.both(op)

    @rule(data=st.data())
    def guest_drain_more(self, data):
        self.guest_drain(data)

    # ------------------------------------------------------------------ FIFO ABI

    def gfn(self, data):
        return self.pick(
            data,
            [(8, st.sampled_from(FIFO_GFNS)), (1, st.sampled_from([262143, 262144, 2**64 - 1]))],
            "gfn",
        )

    @rule(data=st.data())
    def fifo_init_control(self, data):
        a = self.dom(data)
        gfn = self.gfn(data)
        offset = self.pick(
            data,
            [(6, st.sampled_from([0, 8, 72, 2048])), (1, st.sampled_from([4, 4024, 4025, 4032, 2**32 - 1]))],
            "offset",
        )
        v = self.vcpu(data)
        self.both(lambda s: s.doms[a].init_control(gfn, offset, v))

    @rule(data=st.data())
    def fifo_expand_array(self, data):
        a = self.dom(data)
        gfn = self.gfn(data)
        times = data.draw(st.sampled_from([1, 1, 1, 5]), label="times")
        for _ in range(times):
            self.both(lambda s: s.doms[a].expand_array(gfn))

    @rule(data=st.data())
    def fifo_set_priority(self, data):
        a = self.dom(data)
        p = self.port(data, a)
        prio = data.draw(st.sampled_from([0, 3, 7, 15, 16, 2**32 - 1]), label="priority")
        self.both(lambda s: s.doms[a].set_priority(p, prio))

    @rule(data=st.data())
    def fifo_memory_poke(self, data):
        """The guest writing its FIFO memory: event-word bits, READY, HEAD, or any word."""
        a = self.dom(data)
        gfn = data.draw(st.sampled_from(FIFO_GFNS), label="gfn")
        bound = [p for p in self.bound_ports(a) if p < 1024]
        word = self.pick(
            data,
            [(4, st.sampled_from(bound) if bound else None), (2, st.integers(0, 40)),
             (1, st.integers(0, 1023))],
            "word",
        )
        how = data.draw(st.sampled_from(["set", "clear", "value"]), label="how")
        bits = data.draw(
            st.sampled_from([1 << 31, 1 << 30, 1 << 29, 1 << 28, 0x1FFFF, 1 << 7, 0xFFFF_FFFF]),
            label="bits",
        )
        value = data.draw(st.integers(0, 2**32 - 1), label="value") if how == "value" else 0

        def op(s):
            mv = s.doms[a].memory.page(gfn)
            old = int.from_bytes(mv[4 * word:4 * word + 4], "little")
            new = old | bits if how == "set" else old & ~bits if how == "clear" else value
            mv[4 * word:4 * word + 4] = new.to_bytes(4, "little")

        self.both(op)

    # ------------------------------------------------------------------ the guest's API

    @rule(data=st.data())
    def guest_upcall(self, data):
        a = self.dom(data)
        v = data.draw(st.integers(0, len(self.N.doms[a].vcpus) - 1), label="vcpu")
        fail_on = data.draw(st.sampled_from([None, None, None, 0, 1]), label="handler fails at")

        def op(s):
            seen = []

            def handler(port):
                if len(seen) == fail_on:
                    raise HookBoom(port)
                seen.append(port)

            return s.doms[a].guest.do_upcall(v, handler if fail_on is not None else None)

        self.both(op)

    @rule(data=st.data())
    def guest_mask_unmask(self, data):
        a = self.dom(data)
        p = self.port(data, a)
        which = data.draw(st.sampled_from(["mask", "unmask", "unmask_on"]), label="op")
        v = data.draw(st.integers(0, 3), label="vcpu")

        def op(s):
            g = s.doms[a].guest
            if which == "mask":
                return g.mask(p)
            return g.unmask(p) if which == "unmask" else g.unmask(p, v)

        self.both(op)

    # ------------------------------------------------------------------ domain life cycle

    @precondition(lambda self: len(self.N.doms) > 2)
    @rule(data=st.data())
    def destroy_domain(self, data):
        domid = data.draw(
            st.one_of(st.sampled_from(self.domids()), st.sampled_from([9, 0x7FF0])), label="domid"
        )
        r = self.both(lambda s: s.hv.destroy_domain(domid))
        if r is None:
            self.N.dead.append(self.N.doms.pop(domid))
            self.R.dead.append(self.R.doms.pop(domid))
            del self.layout[domid]
            for s in (self.N, self.R):
                s.bufs.pop(domid, None)

    @precondition(lambda self: len(self.N.doms) < 5)
    @rule(data=st.data())
    def create_domain(self, data):
        bad = data.draw(st.integers(0, 5), label="bad arg") == 0  # sometimes an invalid one
        kw = dict(
            vcpus=data.draw(st.sampled_from([0, 8193, 1.0] if bad else [1, 2, 3]), label="vcpus"),
            privileged=data.draw(st.sampled_from([False, False, False, True]), label="privileged"),
            layout=data.draw(
                st.sampled_from(["arm", "x86_64", None] if bad else ["x86_64", "x86_64", "x86_32"]),
                label="layout",
            ),
            max_evtchn_port=data.draw(
                st.sampled_from([-1, 5, None] if bad else [None, None, 70, 63, 64, 130, 5]),
                label="max_evtchn_port",
            ),
            nr_pirqs=data.draw(
                st.sampled_from([-1, 65537, 256] if bad else [256, 256, 4, 1, 0, 65536]),
                label="nr_pirqs",
            ),
            type=data.draw(
                st.sampled_from(["HVM", "arm", None] if bad else [None, "pv", "hvm", "hvm", "pvh"]),
                label="type",
            ),
        )
        kw["domid"] = self.pick(
            data,
            [(4, st.none()), (1, st.sampled_from(self.domids())), (1, st.sampled_from([5, 0x7FEF])),
             (1 if bad else 0, st.sampled_from([0x7FF0, -1, 0x10000]))],
            "domid",
        )

        buf = self.pick(
            data,
            [(3, st.none()), (2, st.tuples(st.just(4096), st.integers(0, 255))),
             (1, st.tuples(st.sampled_from([3136, 2344, 3200, 100]), st.integers(0, 255)))],
            "shared_info",
        )
        made = {}
        bufs = {}

        def op(s):
            if buf is not None:  # a caller-owned buffer, pre-filled with garbage
                bufs[s.name] = bytearray([buf[1]]) * buf[0]
                kw["shared_info"] = bufs[s.name]
            d = s.hv.create_domain(**kw)
            made[s.name] = d
            return d.domid

        r = self.both(op)
        if r is not None and r[0] == "int":
            domid = r[1]
            self.N.doms[domid] = made["native"]
            self.R.doms[domid] = made["reference"]
            self.layout[domid] = kw["layout"]
            if buf is not None:
                self.N.bufs[domid] = bufs["native"]
                self.R.bufs[domid] = bufs["reference"]
        if bufs:
            assert bufs["native"] == bufs["reference"], "caller's shared_info buffers differ"

    @precondition(lambda self: bool(self.N.dead))
    @rule(data=st.data())
    def dead_domain_op(self, data):
        i = data.draw(st.integers(0, len(self.N.dead) - 1), label="dead")
        which = data.draw(
            st.sampled_from(["alloc_unbound", "close", "send", "status", "bind_ipi", "raw", "poll",
                             "raw_enosys", "raw_short", "compat"]),
            label="op",
        )

        def op(s):
            d = s.dead[i]
            if which == "alloc_unbound":
                return d.alloc_unbound(0)
            if which == "close":
                return d.close(1)
            if which == "send":
                return d.send(1)
            if which == "status":
                return d.status(1)
            if which == "bind_ipi":
                return d.bind_ipi(0)
            if which == "poll":
                return d.sched_poll([1])
            if which == "raw_enosys":  # -ESRCH comes before -ENOSYS (semantics.md)
                return d.event_channel_op(99, bytearray(8))
            if which == "raw_short":  # ... and before -EFAULT
                return d.event_channel_op(6, bytearray(2))
            if which == "compat":
                return d.event_channel_op_compat(bytearray(struct.pack("<iI", 3, 1) + bytes(20)))
            return d.event_channel_op(3, bytearray(struct.pack("<I", 1)))

        self.both(op)

    @rule(data=st.data())
    def raising_hooks(self, data):
        """An event source run while on_kick/on_wake raise: the exception reaches the
        caller after the state change is complete (semantics.md "Hooks")."""
        which = data.draw(
            st.sampled_from(["send", "inject", "send_virq", "send_pirq", "unmask",
                             "bind_interdomain", "advance", "guest_poke", "sched_poll",
                             "notify_xen_channel", "raw_sched_op", "hvm_callback",
                             "hvm_upcall_vector", "vm_exit"]),
            label="op with raising hooks",
        )
        self.N.boom = self.R.boom = True
        try:
            if which == "advance":
                self.advance(data.draw(st.sampled_from([1, 100, 1000, 5000]), label="ns"))
            else:
                getattr(self, which)(data)
        finally:
            self.N.boom = self.R.boom = False

    # ------------------------------------------------------------------ HVM/PVH upcalls

    @rule(data=st.data())
    def hvm_callback(self, data):
        """HVMOP_set_param(CALLBACK_IRQ) by the domain itself or by another (dom0: allowed;
        an unprivileged one: EPERM), through the wrapper or the raw hvm_op."""
        caller = self.dom(data)
        target = self.any_domid(data) if data.draw(st.booleans(), label="other") else DOMID_SELF
        value = data.draw(st.sampled_from(CALLBACK_VIAS), label="via")
        raw = data.draw(st.booleans(), label="raw")
        index = data.draw(st.sampled_from([0, 0, 0, 38, 39]), label="index")

        def op(s):
            d = s.doms[caller]
            if raw:
                return d.hvm_op(0, bytearray(struct.pack("<HHIQ", target, 0, index, value)))
            return d.set_hvm_param(index, value, dom=target)

        self.both(op)

    @rule(data=st.data())
    def hvm_get_param(self, data):
        caller = self.dom(data)
        target = self.any_domid(data) if data.draw(st.booleans(), label="other") else DOMID_SELF
        index = data.draw(st.sampled_from([0, 38, 39]), label="index")

        def op(s):
            buf = bytearray(struct.pack("<HHIQ", target, 0, index, 0xAAAA)) + b"\x55" * 4
            rc = s.doms[caller].hvm_op(1, buf)
            return rc, bytes(buf)

        self.both(op)

    @rule(data=st.data())
    def hvm_upcall_vector(self, data):
        a = self.dom(data)
        vcpu = data.draw(st.integers(0, 3), label="vcpu")
        vector = data.draw(st.sampled_from([0, 0x0F, 0x10, 0xF3, 0xF3, 0x40]), label="vector")
        short = data.draw(st.integers(0, 8), label="bytes") < 1
        raw = data.draw(st.booleans(), label="raw")

        def op(s):
            d = s.doms[a]
            if raw or short:
                buf = bytearray(struct.pack("<IB3x", vcpu, vector))
                return d.hvm_op(23, buf[:7] if short else buf)
            return d.set_upcall_vector(vcpu, vector)

        self.both(op)

    @rule(data=st.data())
    def vm_exit(self, data):
        a = self.dom(data)
        self.both(lambda s: s.doms[a].vm_exit())

    # ------------------------------------------------------------------ raw entry points

    def _words(self, data, n):
        d16 = st.one_of(st.sampled_from(self.domids()), st.sampled_from(ODD_DOMIDS))
        word = st.one_of(
            st.integers(0, 5),
            st.sampled_from(sorted(self.ports) or [1]),
            st.tuples(d16, d16).map(lambda t: t[0] | (t[1] << 16)),
            st.integers(0, 2**32 - 1),
        )
        return data.draw(st.lists(word, min_size=n, max_size=n), label="words")

    @rule(data=st.data())
    def raw_op(self, data):
        a = self.dom(data)
        cmd = data.draw(st.integers(-2, 16), label="cmd")
        n = data.draw(st.integers(0, 32), label="len")
        arg = struct.pack("<8I", *self._words(data, 8))[:n]
        out = {}

        def op(s):
            buf = bytearray(arg)
            rc = s.doms[a].event_channel_op(cmd, buf)
            out[s.name] = bytes(buf)
            return rc

        r = self.both(op)
        assert r is None or r[0] == "int", f"event_channel_op returned {r!r}"
        assert out.get("native") == out.get("reference"), (
            f"argument bytes after the call differ: native {out.get('native')!r} "
            f"reference {out.get('reference')!r}"
        )
        if r is not None and r[1] == 0 and len(arg) >= 12 and cmd in (0, 1, 2):
            self.ports.add(struct.unpack_from("<I", out["native"], 8)[0] & 0x1FFFF)
        elif r is not None and r[1] == 0 and len(arg) >= 8 and cmd in (6, 7):
            self.ports.add(struct.unpack_from("<I", out["native"], 4)[0] & 0x1FFFF)

    # ------------------------------------------------------------------ issue 19: Xen channels, sched_op

    @rule(data=st.data())
    def alloc_xen_channel(self, data):
        domid = self.any_domid(data, wild=True)
        vcpu = self.vcpu(data)
        remote = self.pick(
            data, [(6, st.sampled_from(self.domids())), (1, st.sampled_from(ODD_DOMIDS))], "remote"
        )
        with_notify = data.draw(st.integers(0, 3), label="notify") > 0
        r = self.both(lambda s: s.hv.alloc_xen_channel(
            domid, vcpu, remote, notify=s.xen_notify if with_notify else None))
        if r is not None and r[0] == "int":
            self.xen_ports.append((domid, r[1]))

    def xen_port(self, data, wild=False):
        """Mostly a (domid, port) that was allocated as a Xen channel (maybe freed since)."""
        if self.xen_ports and data.draw(st.integers(0, 3), label="xen port") > 0:
            return data.draw(st.sampled_from(self.xen_ports), label="(domid, port)")
        domid = self.any_domid(data)
        return domid, self.port(data, domid=domid if domid in self.N.doms else None, wild=wild)

    @rule(data=st.data())
    def notify_xen_channel(self, data):
        domid, port = self.xen_port(data, wild=True)
        self.both(lambda s: s.hv.notify_xen_channel(domid, port))

    @rule(data=st.data())
    def free_xen_channel(self, data):
        domid, port = self.xen_port(data)
        self.both(lambda s: s.hv.free_xen_channel(domid, port))

    @rule(data=st.data())
    def owner_uses_xen_channel(self, data):
        """What the owning guest may not do (close, send, bind_vcpu, set_priority) and
        the silent unmask, on a Xen-attached port."""
        domid, port = self.xen_port(data)
        if domid not in self.N.doms:
            return
        which = data.draw(st.sampled_from(["close", "send", "bind_vcpu", "unmask", "set_priority",
                                           "sched_poll", "status", "reset"]), label="op")
        vcpu = self.vcpu(data)

        def op(s):
            d = s.doms[domid]
            if which == "bind_vcpu":
                return d.bind_vcpu(port, vcpu)
            if which == "set_priority":
                return d.set_priority(port, 3)
            if which == "sched_poll":
                return d.sched_poll([port])
            if which == "reset":
                return d.reset()
            return getattr(d, which)(port)

        self.both(op)

    @rule(data=st.data())
    def raw_sched_op(self, data):
        """HYPERVISOR_sched_op with struct sched_poll in the domain's layout and the port
        array in guest memory (frames 10-11, across their boundary, or past the end)."""
        a = self.dom(data)
        cmd = data.draw(st.sampled_from([0, 1, 2, 3, 3, 3, 3, 4, 99, -1]), label="cmd")
        n = data.draw(st.sampled_from([0, 1, 1, 2, 3, 129]), label="nr_ports")
        bound = self.bound_ports(a)
        ports = [data.draw(st.sampled_from(bound), label="port") if bound and data.draw(st.booleans())
                 else self.port(data, domid=a) & 0xFFFFFFFF for _ in range(min(n, 4))]
        end = self.N.doms[a].memory.nr_frames * 4096
        addr = data.draw(st.sampled_from([10 * 4096, 12 * 4096 - 6, 11 * 4096 + 4092, end - 8,
                                          end, 2**32 - 2]), label="address")
        now = self.N.hv.now
        timeout = data.draw(st.sampled_from([0, now, now + 100]), label="timeout")
        x86_64 = self.layout[a] == "x86_64"
        arg = (struct.pack("<QI4xQ", addr, n, timeout) if x86_64
               else struct.pack("<IIQ", addr & 0xFFFFFFFF, n, timeout))
        arg = arg[:data.draw(st.sampled_from([len(arg)] * 4 + [0, len(arg) - 1]), label="len")]
        vcpu = self.pick(data, [(6, st.integers(0, len(self.N.doms[a].vcpus) - 1)), (1, st.integers(0, 40))],
                         "vcpu")
        raw = b"".join(struct.pack("<I", p) for p in ports)

        def op(s):
            mem = s.doms[a].memory
            for i, byte in enumerate(raw):  # byte by byte: the array may cross frames
                g, off = divmod(addr + i, 4096)
                if g < mem.nr_frames:
                    mem.page(g)[off] = byte
            return s.doms[a].sched_op(cmd, bytearray(arg), vcpu=vcpu)

        self.both(op)

    @rule(data=st.data())
    def raw_compat_op(self, data):
        a = self.dom(data)
        cmd = data.draw(st.integers(-2, 16), label="cmd")
        n = data.draw(st.one_of(st.just(28), st.integers(0, 32)), label="len")
        arg = (struct.pack("<i", cmd) + struct.pack("<7I", *self._words(data, 7)))[:n]
        out = {}

        def op(s):
            buf = bytearray(arg)
            rc = s.doms[a].event_channel_op_compat(buf)
            out[s.name] = bytes(buf)
            return rc

        r = self.both(op)
        assert r is None or r[0] == "int", f"event_channel_op_compat returned {r!r}"
        assert out.get("native") == out.get("reference"), (
            f"argument bytes after the call differ: native {out.get('native')!r} "
            f"reference {out.get('reference')!r}"
        )


Differential.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    # shrinking re-runs whole 200-step examples; XENEVTCHN_DIFF_NOSHRINK=1 skips it
    phases=[p for p in Phase if p != Phase.shrink or not os.environ.get("XENEVTCHN_DIFF_NOSHRINK")],
)
TestDifferential = Differential.TestCase


def test_zz_steps_ran():
    """Runs after TestDifferential (file order): the machine really did run many steps."""
    if STATS["examples"] == 0:  # TestDifferential deselected
        return
    print(f"\ndifferential: {STATS['examples']} examples, {STATS['steps']} steps, "
          f"{STATS['calls']} operations compared")
    assert STATS["steps"] >= 1000


# ---------------------------------------------------------------------------------------
# Fixed lockstep scenarios: sequences the random machine reaches only rarely (they were
# first found by long random runs), replayed on both implementations every time.


def _trace(m, scenario):
    """Run scenario(m, hv, call) and return everything observable, as comparable data."""
    hv = m.Hypervisor()
    log = []
    side = type("S", (), {"m": m, "name": m.__name__})
    doms = {}

    def domid_of(v):
        for i, d in doms.items():
            if any(x is v for x in d.vcpus):
                return i
        return None

    def hook(kind, boom):
        def h(v):
            log.append((domid_of(v), v.id, kind))
            if boom[0]:
                raise HookBoom(kind)

        return h

    boom = [False]
    hv.on_kick = hook("kick", boom)
    hv.on_wake = hook("wake", boom)
    trace = []

    def call(fn, range_equiv=False):
        log.clear()
        r = outcome(side, fn, range_equiv)
        trace.append((r, list(log)))
        return r

    def create(**kw):
        d = hv.create_domain(**kw)
        doms[d.domid] = d
        return d

    scenario(hv, create, call, boom)
    for i, d in sorted(doms.items()):
        trace.append((i, bytes(d.shared_info.buffer[:3136]), [bool(v.polling) for v in d.vcpus]))
    trace.append(hv.now)
    return trace


def _lockstep(scenario):
    tn = _trace(native_mod, scenario)
    tr = _trace(ref_mod, scenario)
    for i, (a, b) in enumerate(zip(tn, tr)):
        assert a == b, f"step {i}: native {a!r} reference {b!r}"
    assert len(tn) == len(tr)


def test_lockstep_wrapper_range_errors():
    """Out-of-range ints in every wrapper argument (semantics.md "Entry points")."""

    def scenario(hv, create, call, boom):
        create(vcpus=2, privileged=True)
        d = create(vcpus=2)
        for v in (-1, 2**32, 2**64):
            call(lambda: d.send(v), range_equiv=True)  # the documented exception
            for fn in (d.close, d.unmask, d.status, d.bind_ipi, d.bind_pirq,
                       d.bind_virq, lambda x: d.bind_vcpu(x, 0), lambda x: d.bind_vcpu(1, x),
                       lambda x: d.bind_interdomain(0, x), lambda x: d.send_many([x]),
                       lambda x: d.sched_poll([x])):
                call(lambda: fn(v))
        for v in (-1, 0x10000):
            for fn in (d.alloc_unbound, lambda x: d.alloc_unbound(0, dom=x),
                       lambda x: d.bind_interdomain(x, 1), lambda x: d.status(1, dom=x),
                       lambda x: d.reset(dom=x)):
                call(lambda: fn(v))

    _lockstep(scenario)


def test_lockstep_create_domain_check_order():
    """create_domain with an id in use *and* an unusable shared_info buffer."""

    def scenario(hv, create, call, boom):
        create(vcpus=1, privileged=True)
        create(vcpus=1)
        for kw in (dict(vcpus=0), dict(layout="arm"), dict(max_evtchn_port=-1),
                   dict(shared_info=bytearray(100)), dict(shared_info=bytes(4096)),
                   dict(shared_info=bytearray(2344))):
            call(lambda: create(domid=1, **kw).domid)

    _lockstep(scenario)


def test_lockstep_advance_with_raising_hook():
    """hv.advance fires several due poll timers while on_wake raises."""

    def scenario(hv, create, call, boom):
        d0 = create(vcpus=1, privileged=True)
        d1 = create(vcpus=2)
        p0, p1 = call(lambda: d0.bind_ipi(0))[1], call(lambda: d1.bind_ipi(0))[1]
        call(lambda: d0.sched_poll([p0], timeout=100))
        call(lambda: d1.sched_poll([p1], timeout=200))
        call(lambda: d1.sched_poll([p1], timeout=150, vcpu=1))
        boom[0] = True
        call(lambda: hv.advance(1000))
        boom[0] = False
        call(lambda: hv.advance(1))

    _lockstep(scenario)


def test_lockstep_kick_and_poller_wake_order():
    """One send both kicks (and so wakes) the polling target vCPU 2 and wakes a
    multi-port poller on vCPU 0 of the same domain: hook order."""

    def scenario(hv, create, call, boom):
        create(vcpus=1, privileged=True)
        d1 = create(vcpus=3)
        p = call(lambda: d1.bind_ipi(2))[1]
        q = call(lambda: d1.bind_ipi(1))[1]
        call(lambda: d1.sched_poll([], vcpu=0))
        call(lambda: d1.sched_poll([q], vcpu=2))
        call(lambda: d1.send(p))

    _lockstep(scenario)
