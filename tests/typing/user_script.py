"""A user's script, written the way the README shows, for ``mypy --strict``.

tests/test_typing.py checks it (and every Python block of the README) with
``mypy --strict``; ``assert_type`` fails there if a public name degrades to ``Any``.
It also runs, so what it asserts about types holds at run time too.
"""

from __future__ import annotations

import errno
from typing import assert_type

import xenevtchn as xe


def main() -> list[int]:
    hv = xe.Hypervisor()
    assert_type(hv, xe.Hypervisor)
    dom0 = hv.create_domain(vcpus=2, privileged=True)
    guest = hv.create_domain(vcpus=2)
    assert_type(guest, xe.Domain)
    kicked: list[xe.Vcpu] = []
    hv.on_kick = kicked.append

    front = guest.alloc_unbound(remote_dom=0)
    assert_type(front, int)
    back = dom0.bind_interdomain(guest.domid, front)
    dom0.send(back)
    status = guest.status(front)
    assert_type(status, xe.EvtchnStatus)
    try:
        guest.close(0)
    except xe.EvtchnError as e:
        assert_type(e.errno, int)
        assert e.errno == errno.EINVAL

    seen: list[int] = []

    def handler(port: int) -> None:
        seen.append(port)

    handled = guest.guest.do_upcall(0, handler=handler)
    assert_type(handled, list[int])
    assert handled == seen == [front] and kicked[-1] is guest.vcpus[0]

    with xe.XenEvtchn(dom0) as h:
        port = h.bind_unbound_port(guest.domid)
        gport = guest.bind_interdomain(dom0.domid, port)
        guest.send(gport)
        got = h.pending()
        assert_type(got, int | None)
        if got is not None:
            h.unmask(got)

    sim = xe.Simulation(xe.default_scenario())
    assert_type(sim, xe.Simulation)
    sim.run(events=200)
    summary = sim.summary()
    assert summary["totals"]["sent"] == 200
    assert isinstance(xe.__version__, str)
    return handled


if __name__ == "__main__":
    print(main())
