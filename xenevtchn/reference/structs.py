"""Byte layouts of the ``EVTCHNOP_*`` argument structs (x86_64, spec §12.1).

All formats are explicit little-endian with explicit padding, so they do not depend on
the host. The x86_32 layouts of these structs are identical (spec §12.2).
"""

from __future__ import annotations

import struct

# struct evtchn_alloc_unbound: dom (0,2) remote_dom (2,2) port (4,4)
ALLOC_UNBOUND = struct.Struct("<HHI")
# struct evtchn_bind_interdomain: remote_dom (0,2) pad (2,2) remote_port (4,4) local_port (8,4)
BIND_INTERDOMAIN = struct.Struct("<H2xII")
# struct evtchn_bind_virq: virq (0,4) vcpu (4,4) port (8,4)
BIND_VIRQ = struct.Struct("<III")
# struct evtchn_bind_pirq: pirq (0,4) flags (4,4) port (8,4)
BIND_PIRQ = struct.Struct("<III")
# struct evtchn_bind_ipi: vcpu (0,4) port (4,4)
BIND_IPI = struct.Struct("<II")
# struct evtchn_close / evtchn_send / evtchn_unmask: port (0,4)
PORT_ONLY = struct.Struct("<I")
# struct evtchn_status: dom (0,2) pad (2,2) port (4,4) status (8,4) vcpu (12,4) u (16,8)
STATUS = struct.Struct("<H2xI16x")  # inputs only: dom, port
STATUS_OUT = struct.Struct("<II")  # status, vcpu at offset 8
STATUS_OUT_OFFSET = 8
STATUS_UNION_OFFSET = 16  # u.unbound.dom / u.interdomain.dom (u16), u.pirq / u.virq (u32)
STATUS_INTERDOMAIN_PORT_OFFSET = 20  # u.interdomain.port (u32)
# struct evtchn_bind_vcpu: port (0,4) vcpu (4,4)
BIND_VCPU = struct.Struct("<II")
# struct evtchn_reset: dom (0,2)
RESET = struct.Struct("<H")
# struct evtchn_init_control: control_gfn (0,8) offset (8,4) vcpu (12,4) link_bits (16,1)
# _pad (17,7)
INIT_CONTROL = struct.Struct("<QII8x")
INIT_CONTROL_LINK_BITS_OFFSET = 16
# struct evtchn_expand_array: array_gfn (0,8)
EXPAND_ARRAY = struct.Struct("<Q")
# struct evtchn_set_priority: port (0,4) priority (4,4)
SET_PRIORITY = struct.Struct("<II")
# struct evtchn_op: cmd (0,4) u (4,24)
EVTCHN_OP_SIZE = 28
EVTCHN_OP_CMD = struct.Struct("<i")
EVTCHN_OP_UNION_OFFSET = 4

U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")

assert ALLOC_UNBOUND.size == 8 and BIND_INTERDOMAIN.size == 12 and BIND_VIRQ.size == 12
assert BIND_PIRQ.size == 12 and BIND_IPI.size == 8 and PORT_ONLY.size == 4
assert STATUS.size == 24 and BIND_VCPU.size == 8 and RESET.size == 2
assert INIT_CONTROL.size == 24 and EXPAND_ARRAY.size == 8 and SET_PRIORITY.size == 8
