"""The GIL is released while C sends a batch, so threads sending to different domains
run at the same time.

Shown without any clock: each sender's batch is ``[a, h, b]`` where ``h`` reaches a port
of a libxenevtchn handle whose queue spinlock the test holds. ``send_many`` raises ``a``,
then spins inside C on that lock; only the test releases it. While both senders are
provably inside their one C call (``a`` pending, ``b`` not yet, the thread alive), the
main thread runs Python; had either sender kept the GIL, nothing else could run and the
child would hang, which the timeout turns into a failure.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import threading
    from array import array

    import xenevtchn as xe

    hv = xe.Hypervisor()
    dom0 = hv.create_domain(privileged=True)

    def sender_world():
        g = hv.create_domain()
        h = xe.XenEvtchn(g)
        hport = h.bind_unbound_port(dom0.domid)
        a, b = g.alloc_unbound(dom0.domid), g.alloc_unbound(dom0.domid)
        batch = array("I", [dom0.bind_interdomain(g.domid, p) for p in (a, hport, b)])
        h._u.lock = 1                        # hold the handle's queue lock
        return g, h, hport, a, b, batch

    worlds = [sender_world(), sender_world()]
    threads = [threading.Thread(target=dom0.send_many, args=(w[5],)) for w in worlds]
    for t in threads:
        t.start()

    # Python keeps running here while the senders are in C.
    spins = 0
    while not all(g.shared_info.is_pending(a) for g, h, hp, a, b, _ in worlds):
        spins += 1
        assert all(t.is_alive() for t in threads), "a sender finished without waiting"
    # Both threads are inside their single send_many call at once: each raised a, and
    # neither can have raised b while its handle's lock is held.
    for (g, h, hp, a, b, _), t in zip(worlds, threads):
        assert t.is_alive()
        assert not g.shared_info.is_pending(b)
    work = sum(i * i for i in range(20000))  # more Python, still with both senders in C

    for g, h, *_ in worlds:
        h._u.lock = 0
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    for g, h, hport, a, b, _ in worlds:
        assert g.shared_info.is_pending(b)
        assert h.pending() == hport          # the handle's port was delivered, once
        assert h.pending() is None
    print("OK", spins >= 0, work > 0)
    """
)


def test_send_many_releases_the_gil_two_senders_in_c_at_once():
    out = subprocess.run([sys.executable, "-P", "-c", CHILD], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK True True"
