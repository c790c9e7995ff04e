/*
 * The guest's side of the FIFO ABI, as Linux's events_fifo.c does it (guest-side spec
 * 1.10): take READY, serve the highest-priority queue one event at a time, re-read READY
 * after every event, and keep a private head per queue across upcalls. Also the guest's
 * own mask and unmask of event words.
 */
#include "evtchn_abi.h"

#define W_PENDING (UINT32_C(1) << XE_FIFO_PENDING)
#define W_MASKED (UINT32_C(1) << XE_FIFO_MASKED)
#define W_LINKED (UINT32_C(1) << XE_FIFO_LINKED)
#define W_BUSY (UINT32_C(1) << XE_FIFO_BUSY)
#define W_LINK ((uint32_t)XE_FIFO_LINK_MASK)

/* How long the guest's unmask waits for Xen to drop BUSY (Xen holds it only for a few
 * instructions). A word left BUSY by hand would hang Linux; we clear MASKED anyway. */
#define BUSY_SPINS (1u << 12)

/* READY bits that name a queue; the guest may have written others, which are ignored. */
#define QUEUES ((UINT32_C(1) << XE_FIFO_MAX_QUEUES) - 1)

typedef _Atomic uint32_t aword;

static inline struct xe_fifo *fifo_of(struct xe_domain *d)
{
    return __atomic_load_n(&d->fifo, __ATOMIC_ACQUIRE);
}

static inline aword *word_of(struct xe_domain *d, uint32_t port)
{
    return (aword *)xe_fifo_word(d, port);
}

static inline aword *control_block(struct xe_domain *d, uint32_t vcpu)
{
    struct xe_fifo *f = fifo_of(d);
    struct xe_fifo_vcpu *fv = f ? fifo_vcpu(f, vcpu) : NULL;
    return fv ? (aword *)__atomic_load_n(&fv->control_block, __ATOMIC_ACQUIRE) : NULL;
}

void xe_fifo_scan_begin(struct xe_domain *d, struct xe_fifo_scan *s)
{
    aword *cb = control_block(d, s->vcpu);
    /* ORed in: queues a pass abandoned before its end (an exception between this begin
     * and the pass's abort or end) left in s->ready are served, not dropped. */
    s->ready |= cb ? atomic_exchange(&cb[0], 0) & QUEUES : 0;
    s->reread = 0;
}

/* A handler failed in the middle of a pass: the queues it still owed stay READY, so the
 * next upcall serves them. */
void xe_fifo_scan_abort(struct xe_domain *d, struct xe_fifo_scan *s)
{
    aword *cb = control_block(d, s->vcpu);
    if (cb && s->ready)
        atomic_fetch_or(&cb[0], s->ready);
    s->ready = 0;
    s->reread = 0;
}

/* Unlink the head of queue q; returns the port and leaves its successor as the head. */
static uint32_t take_head(struct xe_domain *d, aword *cb, struct xe_fifo_scan *s, uint32_t q,
                          uint32_t *word_out)
{
    uint32_t port = s->head[q];
    if (!port)
        port = atomic_load_explicit(&cb[2 + q], memory_order_acquire);
    aword *w = word_of(d, port);
    uint32_t seen = 0, next = 0;
    if (w) {
        seen = atomic_load(w);
        while (!atomic_compare_exchange_weak(w, &seen, seen & ~(W_LINKED | W_LINK)))
            ;
        next = seen & W_LINK;
    }
    if (!next)
        s->ready &= ~(UINT32_C(1) << q);
    s->head[q] = next;
    *word_out = seen;
    return port;
}

/* The next port to handle on this vCPU (its PENDING already cleared), or -1 when the
 * pass is over. Masked or no-longer-pending entries are unlinked and skipped. */
int32_t xe_fifo_scan_next(struct xe_domain *d, struct xe_fifo_scan *s)
{
    aword *cb = control_block(d, s->vcpu);
    if (!cb) {
        s->ready = 0;
        return -1;
    }
    for (;;) {
        if (s->reread) {
            s->ready |= atomic_exchange(&cb[0], 0) & QUEUES;
            s->reread = 0;
        }
        if (!s->ready)
            return -1;
        uint32_t q = (uint32_t)__builtin_ctz(s->ready);
        uint32_t seen;
        uint32_t port = take_head(d, cb, s, q, &seen);
        s->reread = 1;
        /* Linux handles a port only if it has an IRQ bound to it (a usable channel);
         * any other is unlinked and left as it is. */
        if ((seen & W_PENDING) && !(seen & W_MASKED) && port_is_valid(d, port) &&
            port < max_ports_of(d) && chan_usable(&chans_of(d)[port])) {
            if (__atomic_load_n(&chans_of(d)[port].user, __ATOMIC_ACQUIRE)) {
                xe_user_take(d, port);   /* a handle's port goes to its handle */
                continue;
            }
            /* The edge handler's ack: the port is this scan's only if its clear took
             * PENDING (a handle's driver may have taken it since `seen` was read). */
            if (atomic_fetch_and(word_of(d, port), ~W_PENDING) & W_PENDING)
                return (int32_t)port;
        }
    }
}

size_t xe_fifo_scan_fill(struct xe_domain *d, struct xe_fifo_scan *s, uint32_t *out, size_t cap)
{
    size_t n = 0;
    while (n < cap) {
        int32_t port = xe_fifo_scan_next(d, s);
        if (port < 0)
            break;
        out[n++] = (uint32_t)port;
    }
    return n;
}

void xe_fifo_mask(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(d, port);
    if (w)
        atomic_fetch_or(w, W_MASKED);
}

/*
 * Linux's unmask: clear MASKED locally unless the event is PENDING, in which case Xen
 * must link it: returns 1 (make the EVTCHNOP_unmask hypercall), else 0. The local clear
 * waits a while for Xen to drop BUSY.
 */
int xe_fifo_guest_unmask(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(d, port);
    if (!w)
        return 0;
    uint32_t seen = atomic_load(w);
    for (uint32_t spins = 0; spins < BUSY_SPINS; spins++) {
        if (!(seen & W_MASKED))
            return 0;
        if (seen & W_PENDING)
            return 1;
        uint32_t expect = seen & ~W_BUSY;
        if (atomic_compare_exchange_weak(w, &expect, expect & ~W_MASKED))
            return 0;
        seen = expect;
    }
    if (!(atomic_fetch_and(w, ~W_MASKED) & W_PENDING))
        return 0;
    atomic_fetch_or(w, W_MASKED);   /* raced with a raise: let Xen link it after all */
    return 1;
}
