/*
 * xenevtchn: the C data plane of Xen's event channels.
 *
 * Everything here works on memory the caller owns: a shared_info page (struct xe_shinfo
 * is only a view of it) and the port tables of struct xe_domain, which the Python control
 * plane allocates and writes and the data path reads. Every exported name starts with
 * xe_. The functions are lock-free, allocate nothing and may be called from any thread.
 *
 * A C simulator can include this header and link the static library directly; Python
 * reaches the same functions through cffi (build.py feeds this header, minus its
 * preprocessor lines, to cffi as the cdef).
 */
#ifndef XENEVTCHN_H
#define XENEVTCHN_H

#include <stddef.h>
#include <stdint.h>
#include "xen_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    XE_LAYOUT_X86_64 = 0,      /* 64-bit words, 4096 ports */
    XE_LAYOUT_X86_32 = 1,      /* 32-bit words, 1024 ports (compat guests) */

    XE_MAX_VCPUS = 32,         /* XEN_LEGACY_MAX_VCPUS: vCPUs with a vcpu_info slot in
                                * shared_info, and with the inline per-vCPU state below */
    XE_MAX_VIRT_CPUS = 8192,   /* x86 PV's MAX_VIRT_CPUS: vCPUs 32.. use the *_hi state */
    XE_NR_DOMIDS = 32752,      /* DOMID_FIRST_RESERVED: ids 0..0x7FEF name domains */

    /* Results of the bit-level set_pending / unmask. */
    XE_SET_NEWLY = 1,          /* the pending bit went 0 -> 1: pollers must be checked */
    XE_SET_KICK = 2,           /* evtchn_upcall_pending went 0 -> 1: kick the vCPU */

    /* Result flag of the domain-level calls: a kick or a poll wake-up was recorded in
     * xe_domain.kicked / .woken of some domain, so hooks may be owed. With
     * xe_hv.report_owed set, the sends also report it while the hypervisor lists records
     * nobody took yet (a caller stopped before it took them), so the next sender takes
     * them with xe_hv_take_hooks. */
    XE_EV_HOOKS = 1,
    /* Result flag of a send: the peer port is held by a Xen-internal consumer, whose
     * callback the caller runs instead of raising anything (notify_via_xen_event_channel's
     * other direction). */
    XE_EV_XEN = 2,

    /* Channel states (Xen's ECS_*). */
    XE_ECS_FREE = 0,
    XE_ECS_RESERVED = 1,
    XE_ECS_UNBOUND = 2,
    XE_ECS_INTERDOMAIN = 3,
    XE_ECS_PIRQ = 4,
    XE_ECS_VIRQ = 5,
    XE_ECS_IPI = 6,

    XE_ABI_2L = 0,
    XE_ABI_FIFO = 1,

    /* The FIFO ABI (spec section 9). */
    XE_FIFO_NR_CHANNELS = 1 << 17,   /* the 17-bit LINK field */
    XE_FIFO_MAX_QUEUES = 16,         /* priorities 0 (highest) .. 15 */
    XE_FIFO_PRIORITY_DEFAULT = 7,
    XE_FIFO_WORDS_PER_PAGE = 1024,
    XE_FIFO_MAX_PAGES = 128,
    XE_FIFO_CB_SIZE = 72,            /* struct evtchn_fifo_control_block */

    /* Keys of the one-argument fast paths: slot << XE_KEY_PORT_BITS | port, where a slot
     * names a domain registered with xe_slot_set. Keys stay below 2**30 (a port of either
     * ABI fits 17 bits), so Python passes them as small ints. */
    XE_KEY_PORT_BITS = 17,
    XE_KEY_PORT_MASK = 131071,
    XE_NR_SLOTS = 8192,

    /* Words per vCPU of a domain's vcpu_ports map: one bit per 2-level port (4096). */
    XE_2L_ROUTE_WORDS = 64,
    /* xe_2l_upcall_key: at least this, the rest is the number of ports in s->out. */
    XE_UPCALL_MANY = 1 << 24
};

/* A view of one shared_info struct in memory the caller owns. */
struct xe_shinfo {
    void *base;                /* struct shared_info or struct compat_shared_info */
    uint32_t word_bits;        /* 64 or 32 */
    uint32_t nr_ports;         /* word_bits * word_bits */
    /* Where each vCPU's vcpu_info lives (VCPUOP_register_vcpu_info may move it anywhere
     * in guest memory): nr_vcpu_info pointers, NULL for a vCPU that has none (Xen's
     * dummy). vcpu_info NULL (xe_shinfo_init): the legacy slots of base for vCPUs 0..31
     * and none beyond. Entries change with xe_vcpu_info_register only. */
    void **vcpu_info;
    uint32_t nr_vcpu_info;
    uint32_t _pad;
};

/* A libxenevtchn handle's queue of delivered ports (the kernel driver's ring). */
struct xe_user {
    uint32_t *ring;            /* cap entries: at least one per port, so it never fills */
    uint32_t cap;
    uint32_t prod;
    uint32_t cons;
    int32_t fd;                /* eventfd (semaphore mode) signalled per queued port, or -1 */
    uint32_t lock;             /* spinlock word */
};

/* One port of a domain, as the hypervisor keeps it (24 bytes). */
struct xe_chan {
    uint8_t state;             /* XE_ECS_* */
    uint8_t xen_consumer;      /* non-zero: owned by a Xen-internal consumer */
    uint16_t notify_vcpu;
    uint16_t remote_dom;       /* UNBOUND: the domid allowed to bind; INTERDOMAIN: peer */
    uint8_t priority;          /* FIFO queue priority */
    uint8_t fifo_pending;      /* FIFO: raised while the port had no event word */
    uint32_t remote_port;      /* INTERDOMAIN: the peer's port */
    uint32_t info;             /* PIRQ: pirq number; VIRQ: virq number */
    uint8_t last_vcpu;         /* FIFO: the queue the event was last linked on ... */
    uint8_t last_priority;     /* ... (vCPU, priority); zero means (0, 0) as in Xen */
    uint16_t last_vcpu_hi;     /* ... the vCPU's bits 8..15 (vCPUs 256..) */
    struct xe_user *user;      /* bound through a libxenevtchn handle, or NULL */
};

/* One FIFO queue: Xen's private tail (the head lives in the guest's control block). */
struct xe_fifo_queue {
    uint32_t tail;             /* the last port linked onto this queue, 0 for none */
    uint32_t lock;             /* spinlock word */
};

/* A vCPU's FIFO state: its control block in guest memory and its 16 queues. */
struct xe_fifo_vcpu {
    uint32_t *control_block;   /* READY at [0], HEAD[q] at [2 + q]; NULL: none registered */
    struct xe_fifo_queue queue[16];
};

/* A domain's FIFO state (allocated by the control plane at the first init_control). */
struct xe_fifo {
    uint32_t num_evtchns;      /* ports that have an event word: 1024 per page */
    uint32_t *pages[128];      /* event-array pages, 1024 words each */
    struct xe_fifo_vcpu vcpu[32];
    struct xe_fifo_vcpu *vcpu_hi;  /* vCPUs 32 .. 31 + nr_vcpu_hi (the control plane's) */
    uint32_t nr_vcpu_hi;
};

/* A domain's event-channel state that the data path needs. */
struct xe_domain {
    struct xe_shinfo si;
    struct xe_chan *chans;     /* max_ports entries */
    struct xe_hv *hv;
    uint32_t max_ports;        /* entries in chans */
    uint32_t valid_evtchns;    /* port_is_valid(p) <=> p < valid_evtchns */
    uint32_t nr_vcpus;
    uint16_t domid;
    uint8_t abi;               /* XE_ABI_* */
    uint8_t dying;
    uint32_t poll_mask;        /* bit v: vCPU v is blocked in SCHEDOP_poll */
    int32_t poll_evtchn[32];   /* >0: polling that port; <0: several/zero ports; 0: none */
    uint32_t kicked;           /* bit v: vCPU v was kicked since the last xe_take_kicked */
    uint32_t woken;            /* bit v: vCPU v left poll since the last xe_take_woken */
    struct xe_fifo *fifo;      /* FIFO state while abi == XE_ABI_FIFO, else NULL */
    uint32_t hooks_owed;       /* on hv's list of domains with kicked/woken bits to take */
    struct xe_domain *owed_next;   /* that list's link */
    /* The guest's side, read by its Linux upcall (guest_2l.c). vcpu_ports: nr_vcpus maps of
     * XE_2L_ROUTE_WORDS words, Linux's per-CPU evtchn mask: the bit of a port is set in
     * the map of the vCPU it notifies whenever the port is usable (extra bits are harmless:
     * the scan checks the record of every port the map lets through). NULL: no maps, the
     * scan checks the record of every pending port. Kept by xe_2l_route_*(). */
    uint64_t *vcpu_ports;
    struct xe_scan *scans;     /* nr_vcpus Linux upcall states (xe_2l_upcall_key), or NULL */
    /* vCPUs 32 and up (nr_vcpus > 32; NULL otherwise): the same per-vCPU state, in arrays
     * the control plane allocates. hi_bits: three bitmaps of hi_words words each (poll,
     * kicked, woken), the bit of vCPU v at v - 32; hi_poll_evtchn: nr_vcpus - 32 entries
     * like poll_evtchn; hi_polling: how many of those vCPUs are in poll now. */
    uint32_t *hi_bits;
    int32_t *hi_poll_evtchn;
    uint32_t hi_words;
    uint32_t hi_polling;
    /* Bit v: a kick of vCPU v does not end its poll. Zero for PV (vcpu_kick unblocks);
     * an HVM/PVH vCPU whose upcall is the GSI/INTx line of vCPU 0, or reaches nobody, is
     * not kicked by Xen at all (spec xen-hvm-and-beyond 2.3 cases 3 and 4). Kept by the
     * control plane. */
    uint32_t kick_no_wake;
    uint32_t *hi_kick_no_wake; /* the same for vCPUs 32.. (hi_words words; NULL: none, PV) */
};

/* The hypervisor: domains by domid, so an interdomain send can reach its peer. */
struct xe_hv {
    struct xe_domain *domains[32752];
    struct xe_domain *owed;    /* domains that recorded kicks or wake-ups (xe_hv_take_hooks) */
    /* Non-zero: every send reports XE_EV_HOOKS while `owed` lists a domain, for a caller
     * that takes the records with xe_hv_take_hooks after each flagged call and may be
     * stopped between the two (the Python package). Zero (calloc): only the calls that
     * record something report it. */
    uint32_t report_owed;
};

/* One Linux 2-level handle_events pass on one vCPU, in progress; the fairness cursor
 * (cursor_word, cursor_bit) persists across passes. */
struct xe_scan {
    uint64_t pending_words;    /* the selector taken at the start of the pass */
    uint64_t bits;             /* snapshot of the word being visited */
    uint32_t vcpu;
    uint32_t cursor_word;
    uint32_t cursor_bit;
    uint32_t start_w;
    uint32_t start_b;
    uint32_t w;
    uint32_t b;
    uint32_t i;
    uint32_t in_word;          /* a word visit is in progress */
    uint32_t end_visit;        /* the port just returned ended its word visit */
    uint32_t commit;           /* the port just returned still owes its cursor update */
    uint32_t next_word;        /* ... to (next_word, next_bit) */
    uint32_t next_bit;
    /* xe_2l_upcall: the whole upcall of a vCPU in C, for callers with no handler. */
    struct xe_domain *d;
    uint32_t *out;             /* cap ports per call */
    uint32_t cap;
    uint32_t timer;            /* the vCPU's VIRQ_TIMER port, or 0 */
    uint32_t phase;            /* 0: next call starts a pass; 1: a pass is in progress */
    /* Linux's nesting count of the vCPU's upcall: 0 when none runs; an upcall entered
     * while one runs (a handler's, or another thread's) only adds 1, and the running one
     * makes another pass. Used by every upcall of the vCPU, whatever the ABI. */
    uint32_t nesting;
    uint32_t seen;             /* nesting when the pass in progress began */
};

/* ---- shared_info views ---------------------------------------------------------- */

size_t xe_shinfo_size(int layout);
int xe_shinfo_init(struct xe_shinfo *s, void *base, int layout);
void xe_shinfo_reset(const struct xe_shinfo *s);

uint8_t xe_vcpu_upcall_pending(const struct xe_shinfo *s, uint32_t vcpu);
uint8_t xe_vcpu_upcall_mask(const struct xe_shinfo *s, uint32_t vcpu);
uint64_t xe_vcpu_pending_sel(const struct xe_shinfo *s, uint32_t vcpu);
void xe_vcpu_set_upcall_pending(const struct xe_shinfo *s, uint32_t vcpu, uint8_t value);
void xe_vcpu_set_upcall_mask(const struct xe_shinfo *s, uint32_t vcpu, uint8_t value);
/* The vCPU's vcpu_info (64 bytes), or NULL when it has none. */
void *xe_vcpu_info(const struct xe_shinfo *s, uint32_t vcpu);

/* ---- 2-level data path (Xen's event_2l.c, spec section 8) ------------------------ */

int xe_2l_set_pending(const struct xe_shinfo *s, uint32_t vcpu, uint32_t port);
void xe_2l_clear_pending(const struct xe_shinfo *s, uint32_t port);
void xe_2l_mask(const struct xe_shinfo *s, uint32_t port);
int xe_2l_unmask(const struct xe_shinfo *s, uint32_t vcpu, uint32_t port);
int xe_2l_is_pending(const struct xe_shinfo *s, uint32_t port);
int xe_2l_is_masked(const struct xe_shinfo *s, uint32_t port);
uint64_t xe_2l_take_pending_sel(const struct xe_shinfo *s, uint32_t vcpu);

/* ---- domain-level paths: channel checks, delivery, pollers ----------------------- */

int xe_evtchn_set_pending(struct xe_domain *d, uint32_t vcpu, uint32_t port);
int xe_evtchn_raise(struct xe_domain *d, uint32_t port);
int xe_evtchn_send(struct xe_domain *d, uint32_t port);
int xe_evtchn_send_many(struct xe_domain *d, const uint32_t *ports, size_t n,
                        size_t *failed_at);
int xe_evtchn_unmask(struct xe_domain *d, uint32_t port);
void xe_evtchn_mask(struct xe_domain *d, uint32_t port);
void xe_evtchn_clear_pending(struct xe_domain *d, uint32_t port);
int xe_evtchn_is_pending(struct xe_domain *d, uint32_t port);
int xe_evtchn_is_masked(struct xe_domain *d, uint32_t port);

/* VCPUOP_register_vcpu_info's action (spec xen-hvm-and-beyond 3.3 steps 7-9) once the
 * checks passed: fill `area` (a copy of the vCPU's current vcpu_info, or zeros with the
 * mask set when it has none), switch d->si's table entry to it, force the selector to
 * all ones and mark events pending. Returns XE_EV_HOOKS when the vCPU was kicked,
 * 0 otherwise, -EINVAL without a table entry for the vCPU. */
int xe_vcpu_info_register(struct xe_domain *d, uint32_t vcpu, void *area);

void xe_poll_begin(struct xe_domain *d, uint32_t vcpu);
void xe_poll_set_port(struct xe_domain *d, uint32_t vcpu, int32_t port);
int xe_poll_cancel(struct xe_domain *d, uint32_t vcpu);
int xe_poll_wake(struct xe_domain *d, uint32_t vcpu);
int xe_vcpu_polling(struct xe_domain *d, uint32_t vcpu);
uint32_t xe_take_kicked(struct xe_domain *d);
uint32_t xe_take_woken(struct xe_domain *d);

/* Every domain of hv that recorded kicks or wake-ups since the last call, as records of
 * three words (domid | g << 16, kicked bits, woken bits) taken atomically, at most cap
 * records; the rest stay for the next call. Returns the number of records. A record of
 * group g holds the bits of vCPUs 32g .. 32g + 31 (g > 0 only for domains with more
 * than 32 vCPUs). */
size_t xe_hv_take_hooks(struct xe_hv *hv, uint32_t *out, size_t cap);

/* Publish a domain's port table (chans, max_ports) and its valid range with release
 * stores, the array before its size: a C reader that loads the size (acquire) and then
 * the array finds one at least that long. The control plane's only way to change them
 * while senders may run. */
void xe_domain_set_chans(struct xe_domain *d, struct xe_chan *chans, uint32_t max_ports);
void xe_domain_set_valid(struct xe_domain *d, uint32_t valid_evtchns);

/* C calls running now that may hold a domain found in hv->domains or on hv->owed (after a
 * full fence): a domain removed from both may be freed once this has been seen at 0. */
uint64_t xe_borrowers(void);

/* send_many with the failure in the result: >= 0 XE_EV_HOOKS flags, or
 * -(index * 256 + errno) of the first port that failed (the ports before it were sent). */
int64_t xe_evtchn_send_batch(struct xe_domain *d, const uint32_t *ports, size_t n);

/* ---- one-argument fast paths (keys: see XE_KEY_PORT_BITS) ------------------------------ */

int xe_slot_set(uint32_t slot, struct xe_domain *d);
int xe_send_key(uint32_t key);         /* xe_evtchn_send */
int xe_unmask_key(uint32_t key);       /* xe_evtchn_unmask (EVTCHNOP_unmask) */

/* ---- the guest side (Linux's events_2l.c, Mini-OS's events.c) ------------------------ */

int32_t xe_2l_take_timer(struct xe_domain *d, uint32_t vcpu, uint32_t port);
void xe_2l_scan_begin(struct xe_domain *d, struct xe_scan *s);
int32_t xe_2l_scan_next(struct xe_domain *d, struct xe_scan *s);
void xe_2l_scan_end(struct xe_scan *s);
size_t xe_2l_scan_fill(struct xe_domain *d, struct xe_scan *s, uint32_t *out, size_t cap);
void xe_minios_scan_begin(struct xe_domain *d, struct xe_scan *s);
int32_t xe_minios_scan_next(struct xe_domain *d, struct xe_scan *s);
size_t xe_minios_scan_fill(struct xe_domain *d, struct xe_scan *s, uint32_t *out, size_t cap);
int xe_2l_guest_unmask(const struct xe_shinfo *s, uint32_t vcpu, uint32_t port);
/* Linux's local unmask on the port's notify vCPU (a handle's port: re-fired into its
 * queue); -EINVAL for a port past the shared_info, -ENOSYS for a non-2-level domain. */
int xe_linux_unmask_key(uint32_t key);
/* The guest's mask write (xe_2l_mask) on the key's port; -ENOSYS for a non-2-level
 * domain, -EINVAL for a port past the shared_info. */
int xe_2l_mask_key(uint32_t key);
/* Linux's per-CPU evtchn mask (d->vcpu_ports). Before a port may become usable on vCPU
 * v (a bind, a move to v), xe_2l_route_add(d, port, v); after any change of its record,
 * xe_2l_route_sync(d, port). _rebuild recomputes every map from the records; _check
 * returns the first port whose bits differ from its record, or -1. */
void xe_2l_route_add(struct xe_domain *d, uint32_t port, uint32_t vcpu);
void xe_2l_route_sync(struct xe_domain *d, uint32_t port);
void xe_2l_route_rebuild(struct xe_domain *d);
int32_t xe_2l_route_check(struct xe_domain *d);
/* The nesting count of a vCPU's upcall (s->nesting). _enter returns the count before it
 * (non-zero: another upcall runs; it makes another pass). _pass_begin records the count
 * at the start of a pass; _leave ends the upcall (1, count back to 0) unless the count
 * moved during the pass or the vCPU's upcall flag is set again (0: make another pass).
 * _abort drops the count to 0 (an upcall that stops on an exception). */
uint32_t xe_upcall_enter(struct xe_scan *s);
void xe_upcall_pass_begin(struct xe_scan *s);
int xe_upcall_leave(struct xe_scan *s, const struct xe_shinfo *si);
void xe_upcall_abort(struct xe_scan *s);
/* The same, with a cell of the caller's that says whether the count is its own (see
 * guest_2l.c): _enter_owned sets *owner to 1 when it took the count from 0;
 * _leave_owned clears it when it ends the upcall; _abort_owned drops the count only if
 * *owner is set, and clears it. A caller that may be interrupted anywhere (a Python
 * signal handler's exception) calls _abort_owned in its cleanup, unconditionally. */
uint32_t xe_upcall_enter_owned(struct xe_scan *s, uint32_t *owner);
int xe_upcall_leave_owned(struct xe_scan *s, const struct xe_shinfo *si, uint32_t *owner);
void xe_upcall_abort_owned(struct xe_scan *s, uint32_t *owner);
/* A Linux upcall on s->vcpu of s->d with no handler, inside an entered nesting count:
 * ports into s->out, at most s->cap per call; a call that fills s->out leaves s->phase
 * set and the next call goes on; the call that finishes leaves the count. Returns the
 * number of ports, or -ENOSYS for a non-2-level domain, -EINVAL for a bad scan. */
int32_t xe_2l_upcall(struct xe_scan *s);
/* The whole no-handler upcall of vCPU (key & XE_KEY_PORT_MASK) of the key's domain, with
 * the nesting count entered and left here. Returns 0 (no port, or another upcall of the
 * vCPU runs), the port when exactly one was handled, or XE_UPCALL_MANY + n with n ports
 * in d->scans[v].out (n == cap: the upcall goes on with xe_2l_upcall). Negative: the key
 * names no 2-level domain with scans, or no such vCPU (take the checked path). */
int32_t xe_2l_upcall_key(uint32_t key);
/* The scan xe_2l_upcall_key uses for that key, or NULL. */
struct xe_scan *xe_2l_key_scan(uint32_t key);

/* ---- the FIFO ABI (Xen's event_fifo.c; spec section 9) ----------------------------- */

/* Bits of an event word. */
enum {
    XE_FIFO_PENDING = 31,
    XE_FIFO_MASKED = 30,
    XE_FIFO_LINKED = 29,
    XE_FIFO_BUSY = 28,
    XE_FIFO_LINK_MASK = (1 << 17) - 1
};

/* Linux's consumer on one vCPU: a private head per queue that persists across upcalls,
 * and the READY bits of the handle_events pass in progress. */
struct xe_fifo_scan {
    uint32_t vcpu;
    uint32_t ready;            /* queues this pass still has to look at */
    uint32_t reread;           /* READY must be re-read before the next event */
    uint32_t head[16];
};

int xe_fifo_set_pending(struct xe_domain *d, uint32_t vcpu, uint32_t port);
int xe_fifo_is_busy(struct xe_domain *d, uint32_t port);
uint32_t *xe_fifo_word(struct xe_domain *d, uint32_t port);
int xe_fifo_add_page(struct xe_domain *d, uint32_t *page);
int xe_fifo_raise_deferred(struct xe_domain *d, uint32_t first, uint32_t end);
void xe_fifo_switch(struct xe_domain *d, struct xe_fifo *fifo);
void xe_fifo_teardown(struct xe_domain *d);
void xe_fifo_mask(struct xe_domain *d, uint32_t port);
int xe_fifo_guest_unmask(struct xe_domain *d, uint32_t port);
void xe_fifo_scan_begin(struct xe_domain *d, struct xe_fifo_scan *s);
int32_t xe_fifo_scan_next(struct xe_domain *d, struct xe_fifo_scan *s);
void xe_fifo_scan_abort(struct xe_domain *d, struct xe_fifo_scan *s);
size_t xe_fifo_scan_fill(struct xe_domain *d, struct xe_fifo_scan *s, uint32_t *out, size_t cap);

/* libxenevtchn handles: take a raised port for its handle, and the handle's queue. */
int xe_user_take(struct xe_domain *d, uint32_t port);
int xe_user_unmask(struct xe_domain *d, uint32_t port);
int64_t xe_user_pop(struct xe_user *u);
uint32_t xe_user_queued(struct xe_user *u);
/* Stop signalling u's eventfd: sets u->fd to -1 under the queue's lock and returns the
 * descriptor it held (-1: none). Every C write and read of the fd holds that lock, so
 * after this the caller may close the descriptor: no sender writes into a reused one. */
int32_t xe_user_detach_fd(struct xe_user *u);

#ifdef __cplusplus
}
#endif

#endif
