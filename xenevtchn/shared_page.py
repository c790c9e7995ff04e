"""Many processes, one page: a domain's shared_info in a sealed shared memory block.

The owning process creates the page and the domain on it; any other process attaches the
page by name and raises ports on it with the 2-level bit rules, while the owner handles
the upcalls::

    # the owner (also runs the Hypervisor and the guest's upcalls)
    page = SharedPage.create()
    guest = page.create_domain(hv, vcpus=2)
    ...                                    # bind channels; hand page.name to the senders

    # any other process (a device model, another simulator, a worker)
    with SharedPage.attach(name) as p:
        flags = p.raise_port(port, vcpu)   # SET_NEWLY | SET_KICK, exactly as Xen's set_pending

An attached process has the page, not the hypervisor: ``raise_port`` is Xen's 2-level
``set_pending`` on the shared bits (pending bit, then selector and ``evtchn_upcall_pending``
for an unmasked port) with C11 atomics, so raises from any number of processes and the
owner's own sends and upcalls interleave without losing or duplicating an edge. It does
no channel checks (is the port bound, which vCPU it notifies): the port tables live in the
owner. ``SET_KICK`` in the result means this call raised the vCPU's
``evtchn_upcall_pending`` from 0 to 1; the owner's ``hv.on_kick`` does not run for it, so
a sender that must wake the owner does so its own way (a pipe, a semaphore, ...).

The page is a sealed ``memfd`` (``memfd_create`` with ``F_SEAL_SHRINK | F_SEAL_GROW``):
no process, the owner included, can change its size, so a mapping of it can never
fault past the end of the file (a truncated shared memory block would kill its users
with SIGBUS). Other processes reach it three ways: by ``page.name``, a symlink in
/dev/shm to the owner's descriptor (while the owner keeps the page open), or by
``page.path`` (``/proc/PID/fd/N``), both given to ``attach``; or by the descriptor itself
(``page.fd``, passed with ``pass_fds`` or over a Unix socket) given to ``attach_fd``.
Attaching refuses any block whose size is not sealed this way.

The block is one 4096-byte page: the shared_info struct (Xen's layout, as the domain sees
it) and, in the page's last 64 bytes (past the struct, which neither Xen nor this
simulator ever touches), a small header (magic, layout, domid, vCPU count) so that
``attach`` needs only the name. Linux only (memfd and /proc). The owner's ``close()``
also unlinks the name and closes the descriptor. The owner's mapping
stays alive while the domain may still use it: ``close()`` then only unlinks, and the
mapping goes with the domain (once it is destroyed and reclaimed, or with the Hypervisor).
"""

from __future__ import annotations

import fcntl
import gc
import mmap
import os
import secrets
import struct
from typing import TYPE_CHECKING, Any

from .constants import PAGE_SIZE, XEN_LEGACY_MAX_VCPUS
from .shared_info import SharedInfo, layout_code

if TYPE_CHECKING:
    from .domain import Domain
    from .hypervisor import Hypervisor

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory (shm_open) blocks
MAGIC = b"XEVTCHN\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIII")          # magic, version, layout, domid, nr_vcpus
HEADER_OFFSET = PAGE_SIZE - 64              # past the struct in both layouts
_NO_DOMAIN = 0xFFFFFFFF
_LAYOUTS = {layout_code(name): name for name in ("x86_64", "x86_32")}


_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def _open(target: str | int) -> int:
    """A new descriptor for ``target``: a name under /dev/shm, a /proc/PID/fd/N path, or a
    descriptor (duplicated: the caller keeps theirs)."""
    if isinstance(target, bool) or not isinstance(target, (str, int)):
        raise TypeError(f"name must be a str or a file descriptor, not {type(target).__name__}")
    if isinstance(target, int):
        return os.dup(target)
    if target.startswith("/proc/"):
        return os.open(target, os.O_RDWR | os.O_CLOEXEC)
    bare = target.lstrip("/")
    if not bare or "/" in bare or "\0" in bare:
        raise ValueError(f"not a shared memory block name: {target!r}")
    return os.open(os.path.join(SHM_DIR, bare), os.O_RDWR | os.O_CLOEXEC)


def _map(fd: int, what: str) -> mmap.mmap:
    """Map the page behind ``fd`` read-write, once its size is checked (and sealed).

    The block is mapped from its descriptor (never through ``SharedMemory(name)``), which
    keeps it away from this process's resource tracker: before Python 3.13 that tracker
    unlinks every block a process opened when the process exits (CPython issue 82300).
    """
    size = os.fstat(fd).st_size
    if size < PAGE_SIZE:
        raise ValueError(f"shared memory block {what!r} holds {size} bytes; "
                         f"a xenevtchn page needs {PAGE_SIZE}")
    return mmap.mmap(fd, PAGE_SIZE)


def _sealed(fd: int) -> bool:
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS == _SEALS
    except OSError:          # not a memfd (a /dev/shm file, say): no seals at all
        return False


class SharedPage:
    """A shared_info page in a named shared memory block; see the module docstring.

    Use ``SharedPage.create()`` (owner) or ``SharedPage.attach(name)`` (anyone else),
    not the constructor.
    """

    def __init__(self, _target: str | int, _owner_fd: int | None = None,
                 _name: str | None = None) -> None:
        fd = _open(_target) if _owner_fd is None else _owner_fd
        try:
            self._map: mmap.mmap | None = _map(fd, str(_target))
        except BaseException:
            if _owner_fd is None:
                os.close(fd)
            raise
        self._fd: int | None = fd if _owner_fd is not None else None   # the owner keeps its memfd
        if _owner_fd is None:
            sealed = _sealed(fd)
            os.close(fd)       # the mapping keeps the page
        else:
            sealed = True
        if _name is not None:
            self.name: str = _name
        elif isinstance(_target, str) and not _target.startswith("/proc/"):
            self.name = _target.lstrip("/")
        else:
            self.name = str(_target)
        self._owner = _owner_fd is not None   # the owner unlinks the name on close
        self._si: SharedInfo | None = None
        self._domain: Domain | None = None
        magic, version, code = self._header()[:3]
        if magic != MAGIC or version != VERSION or code not in _LAYOUTS:
            self._map.close()
            self._map = None
            raise ValueError(f"shared memory block {_target!r} is not a xenevtchn shared_info page")
        if not sealed:
            self._map.close()
            self._map = None
            raise ValueError(f"shared memory block {_target!r} is not a sealed xenevtchn page "
                             "(any process could resize it under us)")
        self.layout: str = _LAYOUTS[code]

    def _header(self) -> tuple[Any, ...]:
        m = self._map
        if m is None:
            raise ValueError("operation on a closed SharedPage")
        return _HEADER.unpack(m[HEADER_OFFSET:HEADER_OFFSET + _HEADER.size])

    def _write_header(self, code: int, domid: int, vcpus: int) -> None:
        assert self._map is not None
        self._map[HEADER_OFFSET:HEADER_OFFSET + _HEADER.size] = _HEADER.pack(
            MAGIC, VERSION, code, domid, vcpus)

    # ---- creating and attaching -----------------------------------------------------

    @classmethod
    def create(cls, layout: str = "x86_64", name: str | None = None) -> SharedPage:
        """A new zeroed page (named ``name``, or a fresh name) owned by this process.

        ``FileExistsError`` if /dev/shm already holds ``name``.
        """
        code = layout_code(layout)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        bare = name.lstrip("/") if name is not None else f"xevtchn_{secrets.token_hex(8)}"
        if not bare or "/" in bare or "\0" in bare:
            raise ValueError(f"not a shared memory block name: {name!r}")
        fd = os.memfd_create(bare, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        link = os.path.join(SHM_DIR, bare)
        linked = False
        try:
            os.ftruncate(fd, PAGE_SIZE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
            os.pwrite(fd, _HEADER.pack(MAGIC, VERSION, code, _NO_DOMAIN, 0), HEADER_OFFSET)
            os.symlink(f"/proc/{os.getpid()}/fd/{fd}", link)
            linked = True
            return cls(bare, fd, bare)
        except BaseException:
            if linked:
                os.unlink(link)
            os.close(fd)
            raise

    @classmethod
    def attach(cls, name: str) -> SharedPage:
        """Map the page that another process created, by its ``name`` or its ``path``
        (``/proc/PID/fd/N``): ``FileNotFoundError`` if there is none, ``ValueError`` if
        the block is not a sealed xenevtchn page."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        return cls(name)

    @classmethod
    def attach_fd(cls, fd: int) -> SharedPage:
        """Map the page behind a descriptor of it (``page.fd`` passed to this process);
        the descriptor stays the caller's."""
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        return cls(fd)

    def create_domain(self, hv: Hypervisor, **kwargs: Any) -> Domain:
        """``hv.create_domain(**kwargs)`` with its shared_info in this page (owner only).

        ``layout`` comes from the page; ``shared_info`` may not be given.
        """
        self._header()
        if not self._owner:
            raise ValueError("only the process that created the page may create its domain")
        if self._domain is not None:
            raise ValueError(f"this page already holds the shared_info of domain {self._domain.domid}")
        if "shared_info" in kwargs:
            raise TypeError("create_domain() on a SharedPage takes no shared_info argument")
        if kwargs.setdefault("layout", self.layout) != self.layout:
            raise ValueError(f"this page was created for layout {self.layout!r}, "
                             f"not {kwargs['layout']!r}")
        if self._si is not None:
            raise ValueError("close the page's own shared_info view before creating its domain")
        vcpus = kwargs.get("vcpus", 1)
        if isinstance(vcpus, int) and not 1 <= vcpus <= XEN_LEGACY_MAX_VCPUS:
            # The other process sees shared_info only: every vCPU needs its legacy slot.
            raise ValueError(f"a SharedPage domain has 1..{XEN_LEGACY_MAX_VCPUS} vCPUs, not {vcpus}")
        # The mmap itself is the buffer (not a memoryview of it: a memoryview with a live
        # export must never be left to the cycle collector).
        d = hv.create_domain(shared_info=self._map, **kwargs)
        self._domain = d
        self._si = d.shared_info
        self._write_header(layout_code(self.layout), d.domid, len(d.vcpus))
        return d

    # ---- what the page holds ------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The owner's descriptor of the page (to pass to another process), while open."""
        if self._fd is None:
            raise ValueError("only the owner of an open SharedPage has its descriptor")
        return self._fd

    @property
    def path(self) -> str:
        """``/proc/PID/fd/N``: a path any process of this user can ``attach``."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    @property
    def domid(self) -> int | None:
        """The domain whose shared_info this is, or None before ``create_domain``."""
        domid = self._header()[3]
        return None if domid == _NO_DOMAIN else int(domid)

    @property
    def nr_vcpus(self) -> int:
        """The domain's vCPU count (0 before ``create_domain``)."""
        return int(self._header()[4])

    @property
    def shared_info(self) -> SharedInfo:
        """A ``SharedInfo`` over the page (in the owner, the domain's own one)."""
        self._header()
        if self._si is None:
            self._si = SharedInfo(self._map, self.layout)
        return self._si

    # ---- the sender's side ----------------------------------------------------------------

    def raise_port(self, port: int, vcpu: int = 0) -> int:
        """Xen's 2-level set_pending of ``port`` towards ``vcpu``, on the shared bits.

        Returns ``SET_NEWLY`` (the pending bit went 0 -> 1) | ``SET_KICK`` (this call
        raised ``evtchn_upcall_pending`` 0 -> 1: the vCPU is owed a kick). ``vcpu`` must
        be one of the domain's vCPUs, ``port`` below the layout's port count.
        """
        if not isinstance(vcpu, int):
            raise TypeError(f"vcpu must be an int, not {type(vcpu).__name__}")
        n = self.nr_vcpus
        if n == 0:
            raise ValueError("no domain on this page yet (the owner has not called create_domain)")
        if not 0 <= vcpu < n:
            raise ValueError(f"vcpu {vcpu} does not exist (the domain has {n})")
        return self.shared_info.set_pending(port, vcpu)

    # ---- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Detach from the block; the owner also unlinks its name. Idempotent.

        In the owner, a mapping the domain still uses stays mapped until the domain is
        gone; the name is unlinked at once either way. Elsewhere, ``BufferError`` if
        a ``SharedInfo`` or memoryview of the page is still alive (the page stays open).
        """
        m = self._map
        if m is None:
            return
        if self._domain is None:
            self._si = None           # ours; a caller's reference keeps it alive
            try:
                m.close()
            except BufferError:
                gc.collect()          # a view may live only in a dead reference cycle
                try:
                    m.close()
                except BufferError:
                    raise BufferError("the page is still in use (a SharedInfo or memoryview "
                                      "of it is alive): drop those before close()") from None
        # else the domain's SharedInfo holds the mapping; it goes with the Hypervisor
        self._forget()

    def _forget(self) -> None:
        self._map = None
        self._si = None
        self._domain = None
        if self._owner and self._fd is not None:
            link = os.path.join(SHM_DIR, self.name)
            try:
                if os.readlink(link) == f"/proc/{os.getpid()}/fd/{self._fd}":
                    os.unlink(link)          # ours: a name someone replaced is theirs
            except OSError:
                pass
            os.close(self._fd)               # the mappings keep the page itself
            self._fd = None

    @property
    def closed(self) -> bool:
        return self._map is None

    def __enter__(self) -> SharedPage:
        self._header()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._map is None:
            return f"<SharedPage {self.name!r} closed>"
        role = "owner" if self._owner else "attached"
        return f"<SharedPage {self.name!r} {self.layout} {role} domid={self.domid}>"
