/*
 * The FIFO event-channel ABI (Xen's event_fifo.c; spec section 9): one 32-bit event word
 * per port in guest-provided array pages, and per vCPU a control block with a READY bit
 * and a HEAD port for each of 16 priority queues. Xen links a newly pending, unmasked
 * event onto the tail of its queue; the guest consumes queues from their heads.
 *
 * The words and control blocks live in guest memory, so every access is atomic: the
 * guest may be changing them at the same time. Xen's private queue state (the tails) is
 * guarded by a spinlock per queue, as in Xen. Nothing here allocates: the control plane
 * provides the pages and the struct xe_fifo, and keeps them alive.
 */
#include <errno.h>

#include "evtchn_abi.h"
#include "shinfo_layout.h"

#define W_PENDING (UINT32_C(1) << XE_FIFO_PENDING)
#define W_MASKED (UINT32_C(1) << XE_FIFO_MASKED)
#define W_LINKED (UINT32_C(1) << XE_FIFO_LINKED)
#define W_BUSY (UINT32_C(1) << XE_FIFO_BUSY)
#define W_LINK ((uint32_t)XE_FIFO_LINK_MASK)

typedef _Atomic uint32_t aword;

static inline struct xe_fifo *fifo_of(struct xe_domain *d)
{
    return __atomic_load_n(&d->fifo, __ATOMIC_ACQUIRE);
}

/* The event word of a port, or NULL while no array page covers it. */
static inline aword *word_of(struct xe_fifo *f, uint32_t port)
{
    if (!f || port >= __atomic_load_n(&f->num_evtchns, __ATOMIC_ACQUIRE))
        return NULL;
    return (aword *)f->pages[port / XE_FIFO_WORDS_PER_PAGE] + port % XE_FIFO_WORDS_PER_PAGE;
}

uint32_t *xe_fifo_word(struct xe_domain *d, uint32_t port)
{
    return (uint32_t *)word_of(fifo_of(d), port);
}

static inline uint32_t *control_block_of(struct xe_fifo *f, uint32_t vcpu)
{
    struct xe_fifo_vcpu *fv = fifo_vcpu(f, vcpu);
    return fv ? __atomic_load_n(&fv->control_block, __ATOMIC_ACQUIRE) : NULL;
}

static inline int word_test_and_set(aword *w, uint32_t bit)
{
    return (atomic_fetch_or(w, bit) & bit) != 0;
}

static inline int word_test_and_clear(aword *w, uint32_t bit)
{
    return (atomic_fetch_and(w, ~bit) & bit) != 0;
}

static void lock_queue(struct xe_fifo_queue *q)
{
    while (__atomic_exchange_n(&q->lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&q->lock, __ATOMIC_RELAXED))
            ;
}

static void unlock_queue(struct xe_fifo_queue *q)
{
    __atomic_store_n(&q->lock, 0, __ATOMIC_RELEASE);
}

/* Take both queues' locks in one global order (by address), so two raisers moving events
 * between the same queues in opposite directions cannot deadlock. */
static void lock_two(struct xe_fifo_queue *a, struct xe_fifo_queue *b)
{
    if (a == b) {
        lock_queue(a);
    } else if (a < b) {
        lock_queue(a);
        lock_queue(b);
    } else {
        lock_queue(b);
        lock_queue(a);
    }
}

static void unlock_two(struct xe_fifo_queue *a, struct xe_fifo_queue *b)
{
    unlock_queue(a);
    if (a != b)
        unlock_queue(b);
}

/*
 * Make `link` the successor of the queue's tail word, but only while that word is still
 * LINKED (the guest has not consumed it yet). Returns 1 when linked, 0 when the tail was
 * already consumed (the queue is empty), -EAGAIN when the word changed under us.
 */
static int try_link(aword *tail, uint32_t *seen, uint32_t link)
{
    if (!(*seen & W_LINKED))
        return 0;
    uint32_t want = (*seen & ~(W_BUSY | W_LINK)) | link;
    return atomic_compare_exchange_strong(tail, seen, want) ? 1 : -EAGAIN;
}

static int link_after_tail(aword *tail, uint32_t link)
{
    uint32_t seen = atomic_load(tail);
    int rc = try_link(tail, &seen, link);
    if (rc >= 0)
        return rc;
    /* The guest is racing on the word: hold it BUSY (the guest's unmask waits for that)
     * and retry a few times, as Xen does; then give up and call the event linked. */
    atomic_fetch_or(tail, W_BUSY);
    seen = atomic_load(tail);
    for (int attempt = 0; attempt < 4; attempt++) {
        rc = try_link(tail, &seen, link);
        if (rc >= 0) {
            if (rc == 0)
                atomic_fetch_and(tail, ~W_BUSY);
            return rc;
        }
    }
    atomic_fetch_and(tail, ~W_BUSY);
    return 1;
}

/* Xen's vcpu_mark_events_pending(): a kick only on the upcall flag's 0 -> 1 edge. */
static inline int mark_events_pending(struct xe_domain *d, uint32_t vcpu)
{
    char *vi = vcpu_info(&d->si, vcpu);   /* none (Xen's dummy): the upcall is lost */
    return vi && !(atomic_fetch_or((_Atomic uint8_t *)vi, 1) & 1) ? XE_SET_KICK : 0;
}

/*
 * set_pending (spec 9.3): raise `port` on `vcpu`'s queue for the channel's priority.
 * Returns XE_SET_NEWLY when PENDING went 0 -> 1 (pollers to check) and XE_SET_KICK when
 * the vCPU's upcall flag went 0 -> 1.
 */
int xe_fifo_set_pending(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    struct xe_fifo *f = fifo_of(d);
    struct xe_fifo_vcpu *fv = f ? fifo_vcpu(f, vcpu) : NULL;
    if (!fv || port >= max_ports_of(d))
        return 0;
    struct xe_chan *c = &chans_of(d)[port];
    aword *word = word_of(f, port);
    if (!word) {
        /* No array page yet: remembered, and raised when the page is added. */
        __atomic_store_n(&c->fifo_pending, 1, __ATOMIC_RELAXED);
        return 0;
    }
    uint32_t prio = __atomic_load_n(&c->priority, __ATOMIC_RELAXED) % XE_FIFO_MAX_QUEUES;
    struct xe_fifo_queue *q = &fv->queue[prio];
    struct xe_fifo_queue *oldq = NULL;

    /* Lock the queue the event was last linked on, and the target queue; the last queue
     * may change under us, so check it again once locked (3 tries, as in Xen). */
    for (int attempt = 0; attempt < 3 && !oldq; attempt++) {
        uint32_t lv = __atomic_load_n(&c->last_vcpu, __ATOMIC_ACQUIRE) |
                      (uint32_t)__atomic_load_n(&c->last_vcpu_hi, __ATOMIC_ACQUIRE) << 8;
        uint32_t lp = __atomic_load_n(&c->last_priority, __ATOMIC_ACQUIRE) % XE_FIFO_MAX_QUEUES;
        struct xe_fifo_vcpu *lfv = fifo_vcpu(f, lv);
        if (!lfv)
            lfv = &f->vcpu[0];   /* never recorded for a vCPU the domain lacks */
        struct xe_fifo_queue *candidate = &lfv->queue[lp];
        lock_two(q, candidate);
        if ((__atomic_load_n(&c->last_vcpu, __ATOMIC_RELAXED) |
             (uint32_t)__atomic_load_n(&c->last_vcpu_hi, __ATOMIC_RELAXED) << 8) == lv &&
            __atomic_load_n(&c->last_priority, __ATOMIC_RELAXED) == lp)
            oldq = candidate;
        else
            unlock_two(q, candidate);
    }
    if (!oldq)
        return 0;   /* the event is lost, as in Xen after too many queue changes */

    uint32_t *cb = control_block_of(f, vcpu);
    if (!cb) {
        /* No control block for this vCPU: no queues, the event is dropped whole. */
        unlock_two(q, oldq);
        return 0;
    }

    int flags = word_test_and_set(word, W_PENDING) ? 0 : XE_SET_NEWLY;
    int linked = 1;
    if (!(atomic_load(word) & W_MASKED) && !word_test_and_set(word, W_LINKED)) {
        /* It was the old queue's tail: that queue is empty now as far as Xen knows. */
        if (oldq->tail == port)
            oldq->tail = 0;
        if (oldq != q) {
            __atomic_store_n(&c->last_vcpu, (uint8_t)vcpu, __ATOMIC_RELEASE);
            __atomic_store_n(&c->last_vcpu_hi, (uint16_t)(vcpu >> 8), __ATOMIC_RELEASE);
            __atomic_store_n(&c->last_priority, (uint8_t)prio, __ATOMIC_RELEASE);
        }
        linked = 0;
        if (q->tail) {
            aword *tail = word_of(f, q->tail);
            linked = tail ? link_after_tail(tail, port) : 0;
        }
        if (!linked)
            atomic_store((aword *)&cb[2 + prio], port);
        q->tail = port;
    }
    unlock_two(q, oldq);

    /* A queue that starts anew sets its READY bit; the first READY bit kicks the vCPU. */
    if (!linked && !word_test_and_set((aword *)&cb[0], UINT32_C(1) << prio))
        flags |= mark_events_pending(d, vcpu);
    return flags;
}

int xe_fifo_is_busy(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    return w && (atomic_load(w) & W_LINKED);
}

/* ---- the control plane's entry points (called with the hypervisor's lock held) -------- */

void xe_fifo_switch(struct xe_domain *d, struct xe_fifo *fifo)
{
    __atomic_store_n(&d->fifo, fifo, __ATOMIC_RELEASE);
    __atomic_store_n(&d->abi, (uint8_t)XE_ABI_FIFO, __ATOMIC_RELEASE);
}

void xe_fifo_teardown(struct xe_domain *d)
{
    __atomic_store_n(&d->abi, (uint8_t)XE_ABI_2L, __ATOMIC_RELEASE);
    __atomic_store_n(&d->fifo, NULL, __ATOMIC_RELEASE);
}

/* Append one event-array page; returns the first port it covers, or -ENOSPC. */
int xe_fifo_add_page(struct xe_domain *d, uint32_t *page)
{
    struct xe_fifo *f = fifo_of(d);
    if (!f)
        return -EOPNOTSUPP;
    uint32_t first = f->num_evtchns;
    uint32_t slot = first / XE_FIFO_WORDS_PER_PAGE;
    if (slot >= XE_FIFO_MAX_PAGES)
        return -ENOSPC;
    f->pages[slot] = page;
    /* The page pointer is visible before any port it covers is. */
    __atomic_store_n(&f->num_evtchns, first + XE_FIFO_WORDS_PER_PAGE, __ATOMIC_RELEASE);
    return (int)first;
}

/* ---- the rest of the per-ABI table ------------------------------------------------- */

static void ops_clear_pending(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    if (w)
        atomic_fetch_and(w, ~W_PENDING);   /* the guest skips unlinked, non-pending words */
}

/* EVTCHNOP_unmask (spec 9.5): clear MASKED, and relink a pending event. */
static int ops_unmask(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    if (!w)
        return 0;
    atomic_fetch_and(w, ~W_MASKED);
    /* The guest may have handled the event meanwhile (in another thread), in which case
     * this raise is a new one (XE_SET_NEWLY) and pollers must hear of it. */
    if (atomic_load(w) & W_PENDING)
        return xe_fifo_set_pending(d, vcpu, port);
    return 0;
}

static int ops_is_pending(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    return w && (atomic_load(w) & W_PENDING);
}

static int ops_is_masked(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    return !w || (atomic_load(w) & W_MASKED);
}

static int ops_test_and_set_pending(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    if (!w) {
        if (port < max_ports_of(d))
            __atomic_store_n(&chans_of(d)[port].fifo_pending, 1, __ATOMIC_RELAXED);
        return 1;   /* deferred: nothing to take now */
    }
    return word_test_and_set(w, W_PENDING);
}

static int ops_test_and_clear_pending(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    return w && word_test_and_clear(w, W_PENDING);
}

static int ops_mask(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    return !w || word_test_and_set(w, W_MASKED);
}

static int ops_clear_mask(struct xe_domain *d, uint32_t port)
{
    aword *w = word_of(fifo_of(d), port);
    return w && word_test_and_clear(w, W_MASKED);
}

const struct xe_abi_ops xe_abi_fifo_ops = {
    .set_pending = xe_fifo_set_pending,
    .clear_pending = ops_clear_pending,
    .unmask = ops_unmask,
    .is_pending = ops_is_pending,
    .is_masked = ops_is_masked,
    .test_and_set_pending = ops_test_and_set_pending,
    .test_and_clear_pending = ops_test_and_clear_pending,
    .mask = ops_mask,
    .clear_mask = ops_clear_mask,
};
