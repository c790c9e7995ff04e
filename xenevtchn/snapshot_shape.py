"""The shape of a snapshot's JSON, checked while it is decompressed, before anything is built.

``json.loads`` turns two bytes of text (``[]``) into a 56-byte list, so a few KiB of
compressed hostile text could make a parser allocate gigabytes before any check ran.
``check_shape(payload)`` reads the zlib stream in pieces of ``CHUNK`` bytes of text,
tokenises each with one regular expression (a flat list of integers is one token), and
walks the tokens against the document's shape: which keys each object has, what each value
is, and how long each list may be (from Xen's limits: domids, ports, vCPUs, VIRQs, PIRQs).
The first token out of place raises ``ValueError`` naming the field; only a document of the
right shape is handed to ``json.loads``. What the parser then builds is bounded by the
lists' limits, i.e. by the size of the state the snapshot describes.

Sections (``snapshot.SECTIONS``) may carry any data: it is checked generically, at most
``ANY_DEPTH`` levels deep and ``ANY_ITEMS`` values per section.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Iterator

from .constants import (
    DOMID_FIRST_RESERVED,
    EVTCHN_FIFO_MAX_QUEUES,
    EVTCHN_FIFO_NR_CHANNELS,
    IRQ_MAX_GUESTS_LIMIT,
    NR_PIRQS_MAX,
    NR_VIRQS,
    MAX_VIRT_CPUS,
)

MAX_TEXT = 256 << 20        # decompressed bytes restore accepts at all
CHUNK = 256 << 10           # decompressed bytes looked at at once
MAX_TOKEN = 64 << 10        # the longest token (a base64 page is 5,464 bytes)
ANY_DEPTH = 8
ANY_ITEMS = 1 << 16
MAX_TIMERS = 1 << 24        # armed poll timers, stale heap entries included
MAX_FRAMES = 1 << 40        # guest memory frames a snapshot may carry (as nr_frames)

_WS = rb"[ \t\r\n]*"
_NUM = rb"-?[0-9]{1,40}"
_TOKEN = re.compile(
    _WS + rb"(?:"
    rb"(\[" + _WS + rb"(?:" + _NUM + rb"(?:" + _WS + rb"," + _WS + _NUM + rb")*)?" + _WS + rb"\])"  # 1 ints
    rb'|"([A-Za-z0-9+/=_.\-]{0,%d})"' % MAX_TOKEN +                                            # 2 str
    rb"|(" + _NUM + rb")(?![0-9.eE])"                                                           # 3 int
    rb"|(true|false|null)"                                                                      # 4
    rb"|([\[\]{},:])"                                                                           # 5
    rb")"
)
_TRAILING_WS = re.compile(_WS + rb"\Z")
_BRACKETS_WS = b"[] \t\r\n"

# Shapes: INT, BOOL, STR, ANY; ("opt", s); ("ints", lo, hi) a list of lo..hi integers;
# ("list", s, max); ("tuple", (s, ...)); ("obj", {key: s}); ("map", s, max); ("absent", s):
# a key of an "obj" that older snapshots do not have (s when present).
INT, BOOL, STR, ANY = "int", "bool", "str", "any"


def _ints(n: int, hi: int | None = None) -> tuple[str, int, int]:
    return ("ints", n, n if hi is None else hi)


_NV = MAX_VIRT_CPUS
_SCAN_KEYS = ("pending_words", "bits", "vcpu", "cursor_word", "cursor_bit", "start_w", "start_b",
              "w", "b", "i", "in_word", "end_visit", "commit", "next_word", "next_bit")
DOMAIN = ("obj", {
    "domid": INT, "vcpus": INT, "privileged": BOOL, "layout": STR, "max_evtchn_port": ("opt", INT),
    "guest": STR, "dying": BOOL, "pause_count": INT, "reset_next": INT,
    "nr_pirqs": ("absent", INT),
    "permitted_pirqs": _ints(0, NR_PIRQS_MAX),
    "pirq_to_port": ("list", _ints(2), NR_PIRQS_MAX),
    "virq_to_evtchn": ("list", _ints(NR_VIRQS), _NV),
    "shared_info": STR,
    "ports": ("obj", {"valid": INT, "active": INT, "chans": ("list", _ints(11), EVTCHN_FIFO_NR_CHANNELS)}),
    "c": ("obj", {"abi": INT, "dying": INT, "poll_mask": INT, "poll_evtchn": _ints(32),
                  "kicked": INT, "woken": INT}),
    "scans": ("list", ("obj", dict.fromkeys(_SCAN_KEYS, INT)), _NV),
    "fifo_scans": ("list", ("obj", {"ready": INT, "reread": INT, "head": _ints(EVTCHN_FIFO_MAX_QUEUES)}), _NV),
    "memory": ("obj", {"nr_frames": INT, "frames": ("list", ("tuple", (INT, STR)), MAX_FRAMES)}),
    "sections": ("map", ("obj", {"version": ANY, "data": ANY}), 64),
})
DOCUMENT = ("obj", {
    "format": STR, "version": INT,
    "hv": ("obj", {
        "now": INT, "timer_counter": INT,
        "timers": ("list", _ints(4), MAX_TIMERS),
        "timer_seq": ("list", _ints(3), DOMID_FIRST_RESERVED * 32),
        "hardware_domain": ("opt", INT), "hardware_domain_created": BOOL,
        "virq_handlers": ("list", _ints(2), NR_VIRQS),
        "irq_guests": ("list", ("tuple", (INT, _ints(0, IRQ_MAX_GUESTS_LIMIT))), NR_PIRQS_MAX),
        "irq_shareable": ("list", ("tuple", (INT, BOOL)), NR_PIRQS_MAX),
        "irq_max_guests": ("absent", INT),
    }),
    "domains": ("list", DOMAIN, DOMID_FIRST_RESERVED),
})


class _Refused(ValueError):
    pass


def _fail(where: str, msg: str) -> _Refused:
    return _Refused(f"corrupt snapshot: {where}: {msg}")


def _tokens(payload: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(kind, text, count) per token of the decompressed payload; kind is the group number
    (1 ints, 2 str, 3 int, 4 literal, 5 punctuation); count is the ints' length."""
    z = zlib.decompressobj()
    data, buf, total = payload, b"", 0
    while True:
        try:
            chunk = z.decompress(data, CHUNK)
        except zlib.error as exc:
            raise _Refused(f"corrupt snapshot: {exc}") from None
        data = z.unconsumed_tail
        total += len(chunk)
        if total > MAX_TEXT:
            raise _Refused(f"corrupt snapshot: payload is larger than {MAX_TEXT >> 20} MiB of text")
        final = z.eof
        if not final and not chunk and not data:
            raise _Refused("corrupt snapshot: payload too large or incomplete (zlib stream ends early)")
        buf += chunk
        pos, n = 0, len(buf)
        while True:
            m = _TOKEN.match(buf, pos)
            if m is None or (m.end() == n and not final):
                break
            pos = m.end()
            kind = m.lastindex or 0
            text = m.group(kind)
            yield kind, text, (text.count(b",") + 1 if kind == 1 and text.strip(_BRACKETS_WS) else 0)
        buf = buf[pos:]
        if final:
            if not _TRAILING_WS.match(buf):
                raise _Refused(f"corrupt snapshot: not snapshot JSON at {bytes(buf[:20])!r}")
            yield 0, b"", 0          # the end
            return
        if len(buf) > MAX_TOKEN + 64:
            raise _Refused(f"corrupt snapshot: not snapshot JSON at {bytes(buf[:20])!r}")


class _Walker:
    def __init__(self, payload: bytes) -> None:
        self._it = _tokens(payload)
        self._peek: tuple[int, bytes, int] | None = None
        self.any_items = 0

    def next(self) -> tuple[int, bytes, int]:
        if self._peek is not None:
            tok, self._peek = self._peek, None
            return tok
        return next(self._it)

    def peek(self) -> tuple[int, bytes, int]:
        if self._peek is None:
            self._peek = next(self._it)
        return self._peek

    def expect(self, punct: bytes, where: str) -> None:
        kind, text, _ = self.next()
        if kind != 5 or text != punct:
            raise _fail(where, f"expected {punct.decode()!r}, found {_show(kind, text)}")

    # ---- values ---------------------------------------------------------------------

    def value(self, shape: Any, where: str) -> None:
        if shape == ANY:
            self.any_value(where, 0)
            return
        kind, text, count = self.next()
        if shape == INT:
            if kind != 3:
                raise _fail(where, f"not an integer: {_show(kind, text)}")
        elif shape == BOOL:
            if kind != 4 or text == b"null":
                raise _fail(where, f"not a boolean: {_show(kind, text)}")
        elif shape == STR:
            if kind != 2:
                raise _fail(where, f"not a base64 or name string: {_show(kind, text)}")
        elif shape[0] == "opt":
            if not (kind == 4 and text == b"null"):
                self._peek = (kind, text, count)
                self.value(shape[1], where)
        elif shape[0] == "ints":
            n = count if kind == 1 else self._int_items(kind, text, where, shape[2])
            if not shape[1] <= n <= shape[2]:
                raise _fail(where, f"{n} integers, expected {shape[1]}..{shape[2]}")
        elif shape[0] == "list":
            if kind == 1:
                if count and shape[1] != INT or count > shape[2]:
                    raise _fail(where, "a list of the wrong kind of values")
            else:
                self._list(kind, text, shape[1], shape[2], where)
        elif shape[0] == "tuple":
            if kind == 1 and all(s == INT for s in shape[1]) and count == len(shape[1]):
                return
            if kind != 5 or text != b"[":
                raise _fail(where, f"not a list: {_show(kind, text)}")
            for i, s in enumerate(shape[1]):
                if i:
                    self.expect(b",", where)
                self.value(s, f"{where}[{i}]")
            self.expect(b"]", where)
        elif shape[0] in ("obj", "map"):
            self._object(kind, text, shape, where)
        else:  # pragma: no cover - the shapes above are all there are
            raise AssertionError(shape)

    def _int_items(self, kind: int, text: bytes, where: str, top: int) -> int:
        """A list of integers split across pieces of text: ``[`` seen, read to ``]``."""
        if kind != 5 or text != b"[":
            raise _fail(where, f"not a list of integers: {_show(kind, text)}")
        n = 0
        while True:
            kind, text, _ = self.next()
            if kind == 5 and text == b"]" and n == 0:
                return 0
            if kind != 3:
                raise _fail(where, f"not a list of integers: {_show(kind, text)}")
            n += 1
            if n > top:
                raise _fail(where, f"more than {top} integers")
            kind, text, _ = self.next()
            if kind == 5 and text == b"]":
                return n
            if kind != 5 or text != b",":
                raise _fail(where, f"not a list of integers: {_show(kind, text)}")

    def _list(self, kind: int, text: bytes, item: Any, top: int, where: str) -> None:
        if kind != 5 or text != b"[":
            raise _fail(where, f"not a list: {_show(kind, text)}")
        kind, text, _ = self.peek()
        if kind == 5 and text == b"]":
            self.next()
            return
        n = 0
        while True:
            if n >= top:
                raise _fail(where, f"more than {top} entries")
            self.value(item, f"{where}[{n}]")
            n += 1
            kind, text, _ = self.next()
            if kind == 5 and text == b"]":
                return
            if kind != 5 or text != b",":
                raise _fail(where, f"expected ',' or ']', found {_show(kind, text)}")

    def _object(self, kind: int, text: bytes, shape: Any, where: str) -> None:
        if kind != 5 or text != b"{":
            raise _fail(where, "not an object")
        keys: dict[str, Any] | None = shape[1] if shape[0] == "obj" else None
        seen: set[str] = set()
        kind, text, _ = self.peek()
        if kind == 5 and text == b"}":
            self.next()
        else:
            while True:
                kind, text, _ = self.next()
                if kind != 2:
                    raise _fail(where, f"a key that is not a name: {_show(kind, text)}")
                key = text.decode("ascii")
                if key in seen:
                    raise _fail(where, f"key {key!r} repeated")
                if keys is not None and key not in keys:
                    raise _fail(where, f"keys differ (unexpected [{key!r}])")
                seen.add(key)
                if keys is None and len(seen) > shape[2]:
                    raise _fail(where, f"more than {shape[2]} keys")
                self.expect(b":", where)
                sub = keys[key] if keys is not None else shape[1]
                self.value(sub[1] if sub[0] == "absent" else sub, f"{where}.{key}")
                kind, text, _ = self.next()
                if kind == 5 and text == b"}":
                    break
                if kind != 5 or text != b",":
                    raise _fail(where, f"expected ',' or '}}', found {_show(kind, text)}")
        if keys is not None:
            missing = sorted(k for k, sub in keys.items() if k not in seen and sub[0] != "absent")
            if missing:
                raise _fail(where, f"keys differ (missing {missing}, unexpected [])")

    def any_value(self, where: str, depth: int) -> None:
        """Any JSON value, at most ``ANY_DEPTH`` deep, counted against ``ANY_ITEMS``."""
        self.any_items += 1
        if self.any_items > ANY_ITEMS:
            raise _fail(where, f"more than {ANY_ITEMS} values")
        if depth > ANY_DEPTH:
            raise _fail(where, f"nested more than {ANY_DEPTH} deep")
        kind, text, count = self.next()
        if kind == 1:
            self.any_items += count
        elif kind == 5 and text == b"[":
            kind, text, _ = self.peek()
            if kind == 5 and text == b"]":
                self.next()
                return
            while True:
                self.any_value(where, depth + 1)
                kind, text, _ = self.next()
                if kind == 5 and text == b"]":
                    return
                if kind != 5 or text != b",":
                    raise _fail(where, f"expected ',' or ']', found {_show(kind, text)}")
        elif kind == 5 and text == b"{":
            kind, text, _ = self.peek()
            if kind == 5 and text == b"}":
                self.next()
                return
            while True:
                kind, text, _ = self.next()
                if kind != 2:
                    raise _fail(where, f"a key that is not a name: {_show(kind, text)}")
                self.expect(b":", where)
                self.any_value(where, depth + 1)
                kind, text, _ = self.next()
                if kind == 5 and text == b"}":
                    return
                if kind != 5 or text != b",":
                    raise _fail(where, f"expected ',' or '}}', found {_show(kind, text)}")
        elif kind not in (2, 3, 4):
            raise _fail(where, f"not a value: {_show(kind, text)}")


def _show(kind: int, text: bytes) -> str:
    return "the end of the text" if kind == 0 else repr(bytes(text[:24]).decode("ascii", "replace"))


def check_shape(payload: bytes) -> None:
    """Check the zlib-compressed JSON ``payload`` against ``DOCUMENT`` without building it.

    ``ValueError`` names the first field out of shape.
    """
    w = _Walker(payload)
    try:
        w.value(DOCUMENT, "document")
        kind, text, _ = w.next()
        if kind != 0:
            raise _fail("document", f"text after the end: {_show(kind, text)}")
    except StopIteration:  # pragma: no cover - _tokens always ends with kind 0
        raise _Refused("corrupt snapshot: incomplete") from None
