"""The one exception type of the library, and helpers to raise it from ``-errno``."""

from __future__ import annotations

import errno as _errno
import os


class EvtchnError(OSError):
    """A hypercall failed: ``.errno`` is the positive errno Xen returned.

    ``EvtchnError(errno.EINVAL)`` fills in the message from ``os.strerror``; an extra
    argument names the operation (``EvtchnError(errno.EINVAL, "send")``).
    """

    errno: int  # always set: the positive errno of the failed call

    def __init__(self, err: int, what: str | None = None) -> None:
        msg = os.strerror(err)
        if what:
            msg = f"{what}: {msg}"
        super().__init__(err, msg)


def check(rc: int, what: str | None = None) -> int:
    """Return ``rc`` unchanged when it is >= 0, else raise ``EvtchnError(-rc)``."""
    if rc < 0:
        raise EvtchnError(-rc, what)
    return rc


# Xen's errno numbers (public errno.h); on Linux they equal the host's values.
XEN_ERRNO = {
    "EPERM": 1, "ENOENT": 2, "ESRCH": 3, "EAGAIN": 11, "ENOMEM": 12, "EACCES": 13,
    "EFAULT": 14, "EBUSY": 16, "EEXIST": 17, "EINVAL": 22, "ENOSPC": 28, "ENOSYS": 38,
    "EOPNOTSUPP": 95,
}
assert all(getattr(_errno, k) == v for k, v in XEN_ERRNO.items()), "host errno differs from Xen's"
