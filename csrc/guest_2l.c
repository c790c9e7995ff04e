/*
 * The guest's side of the 2-level ABI: Linux's upcall scan (events_2l.c, with its
 * per-vCPU fairness cursor), Mini-OS's simpler scan, the guest's local unmask, and the
 * queue of a libxenevtchn handle (the /dev/xen/evtchn ring).
 *
 * The scans are iterators: each call returns the next port to handle with its pending
 * bit already cleared (Linux acks before the handler runs), so a Python handler can run
 * between ports while the word and bit work stays here.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <unistd.h>

#include "event_2l.h"

/* The guest's ack of a port it is about to handle: the atomic clear of its pending bit.
 * Only the caller whose clear took the bit (found it set) may handle the port: another
 * vCPU's scan (Mini-OS scans every port of a selected word), a handle's driver or a
 * second pass may have taken the same edge between the read and the clear. */
static inline int take_pending(const struct xe_shinfo *s, uint32_t port)
{
    return port < s->nr_ports && xe_test_and_clear(pending_words(s), s->word_bits, port);
}

static inline uint64_t low_mask_from(uint32_t b)
{
    return b >= 64 ? 0 : ~UINT64_C(0) << b;
}

/* Is `port` one Linux would handle on `vcpu`: a mapped (usable) channel notifying that
 * vCPU? (Ports of libxenevtchn handles count: the evtchn driver's handler takes them.) */
static inline int handled_here(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    if (!port_is_valid(d, port))
        return 0;
    struct xe_chan *c = &chans_of(d)[port];
    return chan_usable(c) && c->notify_vcpu == vcpu;
}

/* A port of a libxenevtchn handle: the driver's ack takes it (masked, queued). */
static inline int taken_by_handle(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port) ||
        __atomic_load_n(&chans_of(d)[port].user, __ATOMIC_ACQUIRE) == NULL)
        return 0;
    xe_user_take(d, port);
    return 1;
}

/* ---- Linux's per-CPU evtchn mask ---------------------------------------------------- */

static inline uint64_t *route_map(struct xe_domain *d, uint32_t vcpu)
{
    return d->vcpu_ports + (size_t)vcpu * XE_2L_ROUTE_WORDS;
}

/* The map bits of word w (W bits wide) of vCPU v; all ones when the domain has no maps. */
static inline uint64_t route_bits(struct xe_domain *d, uint32_t vcpu, uint32_t w, uint32_t W)
{
    if (!d->vcpu_ports || vcpu >= d->nr_vcpus)
        return ~UINT64_C(0);
    const uint64_t *m = route_map(d, vcpu);
    if (W == 64)
        return w < XE_2L_ROUTE_WORDS ? __atomic_load_n(&m[w], __ATOMIC_ACQUIRE) : 0;
    if (w / 2 >= XE_2L_ROUTE_WORDS)
        return 0;
    return (__atomic_load_n(&m[w / 2], __ATOMIC_ACQUIRE) >> (32 * (w & 1))) & 0xffffffffu;
}

static inline int route_covers(struct xe_domain *d, uint32_t port)
{
    return d->vcpu_ports && port < 64 * XE_2L_ROUTE_WORDS;
}

void xe_2l_route_add(struct xe_domain *d, uint32_t port, uint32_t vcpu)
{
    if (route_covers(d, port) && vcpu < d->nr_vcpus)
        __atomic_fetch_or(&route_map(d, vcpu)[port / 64], UINT64_C(1) << (port % 64),
                          __ATOMIC_RELEASE);
}

void xe_2l_route_sync(struct xe_domain *d, uint32_t port)
{
    if (!route_covers(d, port))
        return;
    uint64_t bit = UINT64_C(1) << (port % 64);
    for (uint32_t v = 0; v < d->nr_vcpus; v++) {
        uint64_t *word = &route_map(d, v)[port / 64];
        int want = handled_here(d, v, port);
        int have = (__atomic_load_n(word, __ATOMIC_RELAXED) & bit) != 0;
        if (want && !have)
            __atomic_fetch_or(word, bit, __ATOMIC_RELEASE);
        else if (!want && have)
            __atomic_fetch_and(word, ~bit, __ATOMIC_RELEASE);
    }
}

static uint32_t route_ports(struct xe_domain *d)
{
    uint32_t n = 64 * XE_2L_ROUTE_WORDS;
    return max_ports_of(d) < n ? max_ports_of(d) : n;
}

void xe_2l_route_rebuild(struct xe_domain *d)
{
    for (uint32_t p = 0; p < route_ports(d); p++)
        xe_2l_route_sync(d, p);
}

int32_t xe_2l_route_check(struct xe_domain *d)
{
    if (!d->vcpu_ports)
        return -1;
    for (uint32_t p = 0; p < route_ports(d); p++)
        for (uint32_t v = 0; v < d->nr_vcpus; v++) {
            int have = (route_map(d, v)[p / 64] >> (p % 64)) & 1;
            if (have != handled_here(d, v, p))
                return (int32_t)p;
        }
    return -1;
}

/* Linux's active(): pending & ~mask & bound to this vCPU, read live, one word. The map
 * narrows the candidates; the record of each one decides. */
static uint64_t active_bits(struct xe_domain *d, uint32_t vcpu, uint32_t w)
{
    const struct xe_shinfo *s = &d->si;
    uint32_t W = s->word_bits;
    uint64_t cand = xe_load_word(pending_words(s), W, w) & ~xe_load_word(mask_words(s), W, w) &
                    route_bits(d, vcpu, w, W);
    uint64_t out = 0;
    while (cand) {
        uint32_t bit = (uint32_t)__builtin_ctzll(cand);
        cand &= cand - 1;
        if (handled_here(d, vcpu, w * W + bit))
            out |= UINT64_C(1) << bit;
    }
    return out;
}

int32_t xe_2l_take_timer(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    const struct xe_shinfo *s = &d->si;
    if (port == 0 || port >= s->nr_ports || !handled_here(d, vcpu, port) ||
        !xe_2l_is_pending(s, port) || xe_2l_is_masked(s, port))
        return -1;
    if (taken_by_handle(d, port))      /* a handle's timer port: the driver takes it */
        return -1;
    return take_pending(s, port) ? (int32_t)port : -1;
}

/* The selector is ORed into the scan's own words: a pass abandoned before its end (an
 * exception between its begin and its end) left words it had taken there, and the next
 * pass visits them instead of losing them. A pass that ran to its end left none. */
void xe_2l_scan_begin(struct xe_domain *d, struct xe_scan *s)
{
    s->pending_words |= xe_2l_take_pending_sel(&d->si, s->vcpu);
    s->phase = 0;
    s->start_w = s->cursor_word;
    s->start_b = s->cursor_bit;
    s->w = s->start_w;
    s->i = 0;
    s->in_word = 0;
    s->end_visit = 0;
    s->commit = 0;
}

/* The cursor moves past a port once its handler has returned (Linux's order). */
static inline void commit_cursor(struct xe_scan *s)
{
    if (s->commit) {
        s->cursor_word = s->next_word;
        s->cursor_bit = s->next_bit;
        s->commit = 0;
    }
}

static inline void finish_visit(struct xe_scan *s, uint32_t W)
{
    /* The start word stays selected after its first visit: it is visited again last. */
    if (!(s->w == s->start_w && s->i == 0))
        s->pending_words &= ~(UINT64_C(1) << s->w);
    s->w = (s->w + 1) & (W - 1);            /* W is 32 or 64: no division */
    s->i++;
    s->in_word = 0;
    s->end_visit = 0;
}

int32_t xe_2l_scan_next(struct xe_domain *d, struct xe_scan *s)
{
    uint32_t W = d->si.word_bits;
    commit_cursor(s);
    if (s->end_visit)
        finish_visit(s, W);
    while (s->pending_words) {
        if (!s->in_word) {
            uint64_t cand = s->pending_words & low_mask_from(s->w);
            if (!cand) {            /* wrap to word 0; the wrap counts as an iteration */
                s->w = 0;
                s->i++;
                continue;
            }
            s->w = (uint32_t)__builtin_ctzll(cand);
            s->bits = active_bits(d, s->vcpu, s->w);   /* one snapshot per visit */
            s->b = (s->w == s->start_w && s->i == 0) ? s->start_b : 0;
            s->in_word = 1;
        }
        uint64_t m = s->bits & low_mask_from(s->b);
        if (!m) {
            finish_visit(s, W);
            continue;
        }
        uint32_t bit = (uint32_t)__builtin_ctzll(m);
        uint32_t port = s->w * W + bit;
        s->b = (bit + 1) & (W - 1);
        s->next_word = s->b ? s->w : (s->w + 1) & (W - 1);
        s->next_bit = s->b;
        s->commit = 1;
        s->end_visit = s->b == 0;  /* the bit index wrapped: this visit ends */
        /* A handle's port is not the kernel's to list; one whose bit another taker
         * cleared since the snapshot (a handle's driver, a scan on another vCPU after a
         * rebind, a reset) is not this scan's to handle: move on past either. */
        if (taken_by_handle(d, port) || !take_pending(&d->si, port)) {
            commit_cursor(s);
            if (s->end_visit)
                finish_visit(s, W);
            continue;
        }
        return (int32_t)port;
    }
    return -1;
}

void xe_2l_scan_end(struct xe_scan *s)
{
    commit_cursor(s);
}

/* Up to cap ports of a scan into out, for callers with no handler to run between. */
static size_t scan_fill(struct xe_domain *d, struct xe_scan *s, uint32_t *out, size_t cap,
                        int32_t (*next)(struct xe_domain *, struct xe_scan *))
{
    size_t n = 0;
    int32_t port;
    while (n < cap && (port = next(d, s)) >= 0)
        out[n++] = (uint32_t)port;
    return n;
}

size_t xe_2l_scan_fill(struct xe_domain *d, struct xe_scan *s, uint32_t *out, size_t cap)
{
    return scan_fill(d, s, out, cap, xe_2l_scan_next);
}

void xe_minios_scan_begin(struct xe_domain *d, struct xe_scan *s)
{
    s->pending_words |= xe_2l_take_pending_sel(&d->si, s->vcpu);   /* see xe_2l_scan_begin */
}

int32_t xe_minios_scan_next(struct xe_domain *d, struct xe_scan *s)
{
    const struct xe_shinfo *si = &d->si;
    uint32_t W = si->word_bits;
    while (s->pending_words) {
        uint32_t w = (uint32_t)__builtin_ctzll(s->pending_words);
        uint64_t m = xe_load_word(pending_words(si), W, w) & ~xe_load_word(mask_words(si), W, w);
        if (!m) {                  /* the word reads empty: on to the next one */
            s->pending_words &= ~(UINT64_C(1) << w);
            continue;
        }
        uint32_t port = w * W + (uint32_t)__builtin_ctzll(m);
        if (taken_by_handle(d, port))
            continue;
        /* Every vCPU's scan reads every port of a word it selected: of two scans that
         * read the same pending bit, only the one whose clear takes it handles the port. */
        if (take_pending(si, port))
            return (int32_t)port;
    }
    return -1;
}

size_t xe_minios_scan_fill(struct xe_domain *d, struct xe_scan *s, uint32_t *out, size_t cap)
{
    return scan_fill(d, s, out, cap, xe_minios_scan_next);
}

/* ---- the nesting count, and the whole upcall without a handler ------------------------ */

uint32_t xe_upcall_enter(struct xe_scan *s)
{
    return __atomic_fetch_add(&s->nesting, 1, __ATOMIC_ACQ_REL);
}

void xe_upcall_pass_begin(struct xe_scan *s)
{
    s->seen = __atomic_load_n(&s->nesting, __ATOMIC_ACQUIRE);
}

int xe_upcall_leave(struct xe_scan *s, const struct xe_shinfo *si)
{
    if (xe_vcpu_upcall_pending(si, s->vcpu))
        return 0;
    uint32_t seen = s->seen;
    /* Fails when an upcall came in after the pass began: it is owed another pass. */
    return __atomic_compare_exchange_n(&s->nesting, &seen, 0, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

void xe_upcall_abort(struct xe_scan *s)
{
    __atomic_store_n(&s->nesting, 0, __ATOMIC_RELEASE);
}

/* The same three with the caller's cell `owner`, written here in the same C call as the
 * count: 1 once this call's enter took the count from 0, 0 again once its leave (or
 * abort) gave it back. An exception that lands between a C call's return and the next
 * bytecode cannot separate the two, so the caller's cleanup knows whether it owns the
 * count without having stored anything itself. */
uint32_t xe_upcall_enter_owned(struct xe_scan *s, uint32_t *owner)
{
    uint32_t before = xe_upcall_enter(s);
    *owner = before == 0;
    return before;
}

int xe_upcall_leave_owned(struct xe_scan *s, const struct xe_shinfo *si, uint32_t *owner)
{
    if (!*owner)
        return 1;              /* not this call's upcall (left already): nothing to leave */
    if (!xe_upcall_leave(s, si))
        return 0;
    *owner = 0;
    return 1;
}

void xe_upcall_abort_owned(struct xe_scan *s, uint32_t *owner)
{
    if (*owner) {
        *owner = 0;
        xe_upcall_abort(s);
    }
}

/* LinuxGuest.do_upcall with no handler, whole: each pass clears the upcall flag, takes
 * the VIRQ_TIMER port first, then scans; passes repeat while the flag was set again or
 * another upcall of the vCPU came in. */
int32_t xe_2l_upcall(struct xe_scan *s)
{
    struct xe_domain *d = s->d;
    if (!d || d->abi != XE_ABI_2L)
        return -ENOSYS;
    const struct xe_shinfo *si = &d->si;
    uint32_t v = s->vcpu, cap = s->cap, n = 0;
    uint32_t *out = s->out;
    if (v >= d->nr_vcpus || cap < 2 || !out)
        return -EINVAL;
    for (;;) {
        if (s->phase == 0) {
            xe_upcall_pass_begin(s);
            xe_vcpu_set_upcall_pending(si, v, 0);
            if (s->timer) {
                int32_t port = xe_2l_take_timer(d, v, s->timer);
                if (port >= 0)
                    out[n++] = (uint32_t)port;
            }
            xe_2l_scan_begin(d, s);
            s->phase = 1;
        }
        int32_t port;
        while (n < cap && (port = xe_2l_scan_next(d, s)) >= 0)
            out[n++] = (uint32_t)port;
        if (n == cap)
            return (int32_t)n;                     /* the caller comes back for the rest */
        xe_2l_scan_end(s);
        s->phase = 0;
        if (xe_upcall_leave(s, si))
            return (int32_t)n;
    }
}

int xe_2l_guest_unmask(const struct xe_shinfo *s, uint32_t vcpu, uint32_t port)
{
    if (port >= s->nr_ports)
        return 0;
    /* Clear the mask first, then look at pending: an event racing in is not missed. */
    xe_test_and_clear(mask_words(s), s->word_bits, port);
    char *vi = vcpu_info(s, vcpu);
    if (!vi || !xe_test_bit(pending_words(s), s->word_bits, port))
        return 0;
    /* Re-fire the swallowed edge locally; the guest writes its own upcall flag. (A selector
     * bit a load finds set is the test-and-set that finds it set.) */
    void *sel = sel_of(s, vi);
    uint32_t w = word_of(s, port);
    if (xe_test_bit(sel, s->word_bits, w) || xe_test_and_set(sel, s->word_bits, w))
        return 0;
    atomic_store((_Atomic uint8_t *)vi, 1);
    return 1;
}

/* ---- libxenevtchn handles ------------------------------------------------------------- */

static inline void user_lock(struct xe_user *u)
{
    while (__atomic_exchange_n(&u->lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&u->lock, __ATOMIC_RELAXED))
            ;
}

static inline void user_unlock(struct xe_user *u)
{
    __atomic_store_n(&u->lock, 0, __ATOMIC_RELEASE);
}

int xe_user_take(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port) || port >= max_ports_of(d))
        return 0;
    struct xe_user *u = __atomic_load_n(&chans_of(d)[port].user, __ATOMIC_ACQUIRE);
    if (!u)
        return 0;
    const struct xe_abi_ops *o = abi_ops(d);
    user_lock(u);
    /* Mask, then take the pending bit, under the queue's lock. A taker that finds the bit
     * already taken (a racing raise or unmask queued the port, and it may since have been
     * popped and unmasked) gives back a mask it set itself, or the port would stay masked
     * with nothing queued and every later raise would be lost; a raise that saw that
     * short-lived mask and left the port to us is taken here. */
    for (;;) {
        int was_masked = o->mask(d, port);
        /* A full queue leaves the port pending and masked: the next unmask takes it. */
        if (u->prod - u->cons >= u->cap) {
            user_unlock(u);
            return 0;
        }
        if (o->test_and_clear_pending(d, port))
            break;
        if (was_masked) {
            user_unlock(u);
            return 0;
        }
        o->clear_mask(d, port);
        if (!o->is_pending(d, port)) {
            user_unlock(u);
            return 0;
        }
    }
    u->ring[u->prod % u->cap] = port;
    u->prod++;
    /* The eventfd's count moves with the queue, under the same lock: a pop between the
     * push and this write would otherwise leave the fd readable with nothing queued. */
    if (u->fd >= 0) {
        uint64_t one = 1;
        ssize_t rc;
        do
            rc = write(u->fd, &one, sizeof one);
        while (rc < 0 && errno == EINTR);
    }
    user_unlock(u);
    return 1;
}

int xe_user_unmask(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port) || port >= max_ports_of(d))
        return 0;
    /* The driver's lateeoi: unmask, and a port raised meanwhile is taken again. */
    const struct xe_abi_ops *o = abi_ops(d);
    o->clear_mask(d, port);
    if (!o->is_pending(d, port))
        return 0;
    return xe_user_take(d, port);
}

int32_t xe_user_detach_fd(struct xe_user *u)
{
    /* Under the queue's lock, which every write and read of the eventfd holds: once this
     * returns, no C path touches the descriptor, and the caller may close it. */
    user_lock(u);
    int32_t fd = u->fd;
    u->fd = -1;
    user_unlock(u);
    return fd;
}

int64_t xe_user_pop(struct xe_user *u)
{
    user_lock(u);
    if (u->cons == u->prod) {
        user_unlock(u);
        return -1;
    }
    uint32_t port = u->ring[u->cons % u->cap];
    u->cons++;
    if (u->fd >= 0) {
        uint64_t v;
        ssize_t rc;
        do
            rc = read(u->fd, &v, sizeof v);
        while (rc < 0 && errno == EINTR);
    }
    user_unlock(u);
    return port;
}

uint32_t xe_user_queued(struct xe_user *u)
{
    user_lock(u);
    uint32_t n = u->prod - u->cons;
    user_unlock(u);
    return n;
}
