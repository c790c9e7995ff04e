"""A SharedPage's size cannot be changed by another process (issue 14, item 7): the page is
a sealed memfd, so truncating or growing it fails, and the owner's sends keep working
instead of dying of SIGBUS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import xenevtchn as xe
from xenevtchn.shared_info import SET_KICK, SET_NEWLY
from xenevtchn.shared_page import SharedPage

OWNER = textwrap.dedent(
    """
    import subprocess, sys
    import xenevtchn as xe
    from xenevtchn.shared_page import SharedPage

    hv = xe.Hypervisor()
    page = SharedPage.create()
    d0 = hv.create_domain(privileged=True)
    g = page.create_domain(hv, vcpus=2)
    p = g.alloc_unbound(0)
    q = d0.bind_interdomain(g.domid, p)
    g.guest.do_upcall(0)
    attacker = subprocess.run([sys.executable, "-c", sys.argv[1], page.name, page.path],
                              capture_output=True, text=True, timeout=60)
    print(attacker.stdout.strip())
    for _ in range(3):
        d0.send(q)                      # touches the page: SIGBUS if it shrank
        assert g.guest.do_upcall(0) == [p]
    g.shared_info.set_pending(4095)     # the page's last event bit
    page.close()
    print("owner ok")
    """
)

ATTACKER = textwrap.dedent(
    """
    import errno, os, sys
    name, path = sys.argv[1], sys.argv[2]
    out = []
    for target in ("/dev/shm/" + name, path):
        fd = os.open(target, os.O_RDWR)
        for size in (0, 100, 8192):
            try:
                os.ftruncate(fd, size)
                out.append("resized")
            except OSError as e:
                out.append(errno.errorcode[e.errno])
        os.close(fd)
    print(" ".join(out))
    """
)

HERE = Path(__file__).resolve().parent  # children start here, never in the source root


def test_truncating_the_page_from_another_process_fails_and_the_owner_lives():
    r = subprocess.run([sys.executable, "-c", OWNER, ATTACKER], capture_output=True, text=True, timeout=120,
                       cwd=HERE)  # not the project root: 'python -c' would import the unbuilt tree
    assert r.returncode != -signal.SIGBUS, "the owner died of SIGBUS"
    assert r.returncode == 0, r.stderr[-2000:]
    attacker, owner = r.stdout.strip().splitlines()
    assert attacker.split() == ["EPERM"] * 6, attacker
    assert owner == "owner ok"


def test_attach_by_path_and_by_descriptor():
    hv = xe.Hypervisor()
    page = SharedPage.create()
    try:
        d = page.create_domain(hv, vcpus=2)
        port = d.bind_ipi(1)
        assert page.path == f"/proc/{os.getpid()}/fd/{page.fd}"
        with SharedPage.attach(page.path) as by_path:
            assert (by_path.layout, by_path.domid, by_path.nr_vcpus) == ("x86_64", d.domid, 2)
        child = textwrap.dedent(
            f"""
            from xenevtchn.shared_page import SharedPage
            with SharedPage.attach_fd({page.fd}) as p:
                print(p.raise_port({port}, 1))
            """
        )
        r = subprocess.run([sys.executable, "-c", child], pass_fds=(page.fd,), capture_output=True, cwd=HERE,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) == SET_NEWLY | SET_KICK
        assert d.shared_info.is_pending(port)
    finally:
        page.close()


def test_an_unsealed_block_is_refused():
    from multiprocessing import shared_memory

    from xenevtchn.shared_page import HEADER_OFFSET, MAGIC

    blk = shared_memory.SharedMemory(create=True, size=4096)
    try:
        genuine = SharedPage.create()
        try:   # a copy of a real page's bytes, in a block anyone may resize
            with open(genuine.path, "rb") as f:
                blk.buf[:4096] = f.read(4096)
        finally:
            genuine.close()
        assert bytes(blk.buf[HEADER_OFFSET:HEADER_OFFSET + 8]) == MAGIC
        with pytest.raises(ValueError, match="seal"):
            SharedPage.attach(blk.name)
    finally:
        blk.close()
        blk.unlink()
