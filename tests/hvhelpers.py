"""Shared helpers for the hypervisor-side tests: one way to call every command through
each entry point, and errno assertions.

``Via`` objects give the same Pythonic call shape for the three entry points:

* ``wrapper``: the Domain's Pythonic methods (raise ``EvtchnError``);
* ``raw``: ``d.event_channel_op(cmd, buf)`` with a struct packed by ``xenabi``;
* ``compat``: ``d.event_channel_op_compat(buf28)`` (commands 0..9 only).

The raw paths raise ``RawError`` (an ``OSError`` carrying the errno) when the call returns
``-errno``, and check the copy-back rules of spec §3 on every single call:
failure writes nothing; success writes only the command's OUT fields (input fields,
padding and any bytes past the struct read back as supplied), commands without outputs
never write, and ``evtchn_status`` leaves the union bytes it does not report untouched
(spec §4.7).
"""

from __future__ import annotations

import errno
from contextlib import contextmanager

import pytest

import xenabi
from xenabi import DOMID_SELF

FILL = 0xA5  # what the caller leaves in bytes it does not set
TRAIL = 8  # bytes appended after the struct in raw calls (must stay untouched)


class RawError(OSError):
    """A raw hypercall returned -errno."""

    def __init__(self, err: int):
        super().__init__(err, errno.errorcode.get(err, str(err)))


def errname(err):
    return errno.errorcode.get(err, str(err))


@contextmanager
def raises_errno(xe, err):
    """Expect an ``EvtchnError`` (or a raw ``-errno`` turned into ``RawError``) with
    ``.errno == err``."""
    with pytest.raises(OSError) as ei:
        yield ei
    e = ei.value
    assert isinstance(e, (xe.EvtchnError, RawError)), f"unexpected exception type {type(e)!r}: {e!r}"
    assert e.errno == err, f"expected {errname(err)}, got {errname(e.errno)} ({e!r})"


def make_pair(hv, vcpus: int = 2, domu_vcpus: int | None = None):
    """dom0 (privileged, the hardware domain, domid 0) and a domU (domid 1)."""
    dom0 = hv.create_domain(vcpus=vcpus, privileged=True)
    domu = hv.create_domain(vcpus=vcpus if domu_vcpus is None else domu_vcpus)
    assert dom0.domid == 0 and domu.domid == 1
    return dom0, domu


def status_tuple(st):
    return (st.status, st.vcpu, st.dom, st.port, st.pirq, st.virq)


class WrapperVia:
    name = "wrapper"

    def __init__(self, xe):
        self.xe = xe

    def _w(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except OSError as e:
            assert isinstance(e, self.xe.EvtchnError), f"wrapper raised {type(e)!r}"
            assert e.errno > 0
            raise

    def _port(self, fn, *args, **kw):
        port = self._w(fn, *args, **kw)
        assert isinstance(port, int) and not isinstance(port, bool)
        return port

    def alloc_unbound(self, d, remote_dom, dom=DOMID_SELF):
        return self._port(d.alloc_unbound, remote_dom, dom=dom)

    def bind_interdomain(self, d, remote_dom, remote_port):
        return self._port(d.bind_interdomain, remote_dom, remote_port)

    def bind_virq(self, d, virq, vcpu=0):
        return self._port(d.bind_virq, virq, vcpu)

    def bind_pirq(self, d, pirq, flags=0):
        return self._port(d.bind_pirq, pirq, flags)

    def bind_ipi(self, d, vcpu=0):
        return self._port(d.bind_ipi, vcpu)

    def close(self, d, port):
        self._w(d.close, port)

    def send(self, d, port):
        self._w(d.send, port)

    def status(self, d, port, dom=DOMID_SELF):
        st = self._w(d.status, port, dom=dom)
        assert isinstance(st, self.xe.EvtchnStatus)
        return status_tuple(st)

    def bind_vcpu(self, d, port, vcpu):
        self._w(d.bind_vcpu, port, vcpu)

    def unmask(self, d, port):
        self._w(d.unmask, port)

    def reset(self, d, dom=DOMID_SELF):
        self._w(d.reset, dom=dom)


class RawVia:
    name = "raw"
    compat = False

    def __init__(self, xe):
        self.xe = xe

    def call(self, d, name, **fields):
        """Run command ``name``; return the struct's fields after the call (dict) or raise
        RawError. Checks the copy-back rules."""
        if self.compat:
            buf = xenabi.compat_op(name, fill=FILL, **fields)
            base = 4
        else:
            buf = xenabi.pack(name, fill=FILL, extra=TRAIL, **fields)
            base = 0
        before = bytes(buf)
        if self.compat:
            rc = d.event_channel_op_compat(buf)
        else:
            rc = d.event_channel_op(xenabi.CMD[name], buf)
        assert isinstance(rc, int) and not isinstance(rc, bool), f"rc {rc!r} is not an int"
        if rc != 0:
            assert rc < 0, f"{name}: positive return {rc}"
            assert bytes(buf) == before, f"{name} failed ({errname(-rc)}) but wrote the buffer"
            raise RawError(-rc)
        writable = set()
        for a, b in xenabi.OUT_RANGES[name]:
            writable.update(range(base + a, base + b))
        changed = [i for i in range(len(buf)) if i not in writable and buf[i] != before[i]]
        assert not changed, f"{name}: bytes {changed} (input/padding/trailing) were modified"
        if name == "status":
            st = xenabi.unpack("status", buf, base)["status"]
            assert st in xenabi.STATUS_UNION_UNWRITTEN, f"bad status value {st}"
            for i in xenabi.STATUS_UNION_UNWRITTEN[st]:
                j = base + 16 + i
                assert buf[j] == before[j], f"status {st}: union byte {i} was written"
        return xenabi.unpack(name, buf, base)

    def alloc_unbound(self, d, remote_dom, dom=DOMID_SELF):
        return self.call(d, "alloc_unbound", dom=dom, remote_dom=remote_dom)["port"]

    def bind_interdomain(self, d, remote_dom, remote_port):
        return self.call(d, "bind_interdomain", remote_dom=remote_dom, remote_port=remote_port)[
            "local_port"
        ]

    def bind_virq(self, d, virq, vcpu=0):
        return self.call(d, "bind_virq", virq=virq, vcpu=vcpu)["port"]

    def bind_pirq(self, d, pirq, flags=0):
        return self.call(d, "bind_pirq", pirq=pirq, flags=flags)["port"]

    def bind_ipi(self, d, vcpu=0):
        return self.call(d, "bind_ipi", vcpu=vcpu)["port"]

    def close(self, d, port):
        self.call(d, "close", port=port)

    def send(self, d, port):
        self.call(d, "send", port=port)

    def status(self, d, port, dom=DOMID_SELF):
        return xenabi.status_fields_tuple(self.call(d, "status", dom=dom, port=port))

    def bind_vcpu(self, d, port, vcpu):
        self.call(d, "bind_vcpu", port=port, vcpu=vcpu)

    def unmask(self, d, port):
        self.call(d, "unmask", port=port)

    def reset(self, d, dom=DOMID_SELF):
        self.call(d, "reset", dom=dom)

    def reset_cont(self, d, dom=DOMID_SELF):
        self.call(d, "reset_cont", dom=dom)


class CompatVia(RawVia):
    name = "compat"
    compat = True


VIAS = {"wrapper": WrapperVia, "raw": RawVia, "compat": CompatVia}


def make_via(name, xe):
    return VIAS[name](xe)
