/*
 * Generic event paths over a domain's port table (Xen's event_channel.c data side):
 * the send fast path, delivery to a channel's notify vCPU, the unmask hypercall's
 * action, kicks and poller wake-ups. The Python control plane owns every state change
 * of the port table; these functions only read it.
 *
 * Kicks and wake-ups are recorded as bits in the target domain (kicked / woken) and the
 * call reports XE_EV_HOOKS, so the caller can run its on_kick / on_wake hooks afterwards
 * without any callback from C.
 */
#include <errno.h>
#include <stdatomic.h>

#include "event_2l.h"

#define A32(field) ((_Atomic uint32_t *)&(field))
#define AI32(field) ((_Atomic int32_t *)&(field))

static inline const struct xe_abi_ops *ops(const struct xe_domain *d)
{
    return abi_ops(d);
}

#define AOWED(hv) ((_Atomic(struct xe_domain *) *)&(hv)->owed)

/* Put d on its hypervisor's list of domains whose kicked/woken bits are to be taken, so
 * the caller's hook runner visits only those. d's bits are set before this runs, and
 * xe_hv_take_hooks clears hooks_owed before it takes them: a bit is never left behind. */
static void owe_hooks(struct xe_domain *d)
{
    struct xe_hv *hv = d->hv;
    if (!hv || atomic_exchange(A32(d->hooks_owed), 1))
        return;                                    /* already listed */
    struct xe_domain *head = atomic_load(AOWED(hv));
    do
        d->owed_next = head;
    while (!atomic_compare_exchange_weak(AOWED(hv), &head, d));
}

/* The per-vCPU bitmaps: map 0 poll, 1 kicked, 2 woken. vCPUs 0..31 use the inline
 * words, higher ones word (v - 32) / 32 of that map in hi_bits (NULL: no such vCPU). */
enum { MAP_POLL, MAP_KICKED, MAP_WOKEN };

static _Atomic uint32_t *vcpu_word(struct xe_domain *d, int map, uint32_t v)
{
    if (v < XE_MAX_VCPUS)
        return map == MAP_POLL ? A32(d->poll_mask) : map == MAP_KICKED ? A32(d->kicked)
                                                                      : A32(d->woken);
    v -= XE_MAX_VCPUS;
    if (!d->hi_bits || v / 32 >= d->hi_words)
        return NULL;
    return (_Atomic uint32_t *)&d->hi_bits[(size_t)map * d->hi_words + v / 32];
}

static _Atomic int32_t *poll_evtchn_of(struct xe_domain *d, uint32_t v)
{
    if (v < XE_MAX_VCPUS)
        return AI32(d->poll_evtchn[v]);
    return d->hi_poll_evtchn && (v - XE_MAX_VCPUS) / 32 < d->hi_words ?
        (_Atomic int32_t *)&d->hi_poll_evtchn[v - XE_MAX_VCPUS] : NULL;
}

static inline uint32_t vcpu_bit(uint32_t v)
{
    return UINT32_C(1) << (v % 32);
}

/* End vCPU v's poll if it is in one; report whether it was. */
static int end_poll(struct xe_domain *d, uint32_t v)
{
    _Atomic uint32_t *pw = v < XE_MAX_VCPUS ? A32(d->poll_mask) : vcpu_word(d, MAP_POLL, v);
    uint32_t bit = vcpu_bit(v);
    if (!pw || !(atomic_fetch_and(pw, ~bit) & bit))
        return 0;
    atomic_store(poll_evtchn_of(d, v), 0);
    if (v >= XE_MAX_VCPUS)
        atomic_fetch_sub(A32(d->hi_polling), 1);
    atomic_fetch_or(vcpu_word(d, MAP_WOKEN, v), bit);
    owe_hooks(d);
    return XE_EV_HOOKS;
}

/* Whether a kick leaves vCPU v in poll: kick_no_wake for vCPUs 0..31, hi_kick_no_wake
 * (HVM/PVH only; NULL for PV) for the others (kw non-NULL: v exists). */
static inline int no_wake(struct xe_domain *d, uint32_t v)
{
    if (v < XE_MAX_VCPUS)
        return (atomic_load_explicit(A32(d->kick_no_wake), memory_order_relaxed) >> v) & 1;
    uint32_t *nw = d->hi_kick_no_wake;
    return nw && (atomic_load_explicit((_Atomic uint32_t *)&nw[(v - XE_MAX_VCPUS) / 32],
                                       memory_order_relaxed) & vcpu_bit(v));
}

/* vcpu_mark_events_pending(): note the kick; a kick unblocks a vCPU that is polling
 * (not an HVM/PVH vCPU that Xen notifies through the callback line or not at all). */
static int kick(struct xe_domain *d, uint32_t v)
{
    _Atomic uint32_t *kw = v < XE_MAX_VCPUS ? A32(d->kicked) : vcpu_word(d, MAP_KICKED, v);
    if (!kw)
        return 0;
    atomic_fetch_or(kw, vcpu_bit(v));
    owe_hooks(d);
    if (!no_wake(d, v))
        end_poll(d, v);
    return XE_EV_HOOKS;
}

/* The ABI's set_pending; the 2-level one inlined (the table holds the same function). */
XE_INLINE int abi_set_pending(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    if (d->abi == XE_ABI_2L)
        return set_pending_2l(&d->si, vcpu, port);
    return ops(d)->set_pending(d, vcpu, port);
}

/* check_pollers(): vCPUs polling this port, or several / zero ports, wake up. */
static int wake_one_poller(struct xe_domain *d, uint32_t port, uint32_t v)
{
    int32_t want = atomic_load(poll_evtchn_of(d, v));
    return want <= 0 || (uint32_t)want == port ? end_poll(d, v) : 0;
}

static int wake_pollers(struct xe_domain *d, uint32_t port, uint32_t polling)
{
    int ev = 0;
    while (polling) {
        uint32_t v = (uint32_t)__builtin_ctz(polling);
        polling &= polling - 1;
        ev |= wake_one_poller(d, port, v);
    }
    if (atomic_load(A32(d->hi_polling)) && d->hi_bits) {
        for (uint32_t w = 0; w < d->hi_words; w++) {
            uint32_t bits = atomic_load((_Atomic uint32_t *)&d->hi_bits[(size_t)MAP_POLL * d->hi_words + w]);
            while (bits) {
                uint32_t b = (uint32_t)__builtin_ctz(bits);
                bits &= bits - 1;
                ev |= wake_one_poller(d, port, XE_MAX_VCPUS + 32 * w + b);
            }
        }
    }
    return ev;
}

XE_INLINE int check_pollers(struct xe_domain *d, uint32_t port)
{
    /* Nobody polls: the usual case, two relaxed loads of one cache line. */
    uint32_t polling = atomic_load_explicit(A32(d->poll_mask), memory_order_seq_cst);
    if (polling || atomic_load_explicit(A32(d->hi_polling), memory_order_seq_cst))
        return wake_pollers(d, port, polling);
    return 0;
}

/* A port bound through a libxenevtchn handle is taken the moment it is raised, as the
 * kernel driver's lateeoi ack does: masked, pending cleared, queued, the fd signalled.
 * It is never linked onto a FIFO queue. */
static int deliver_user(struct xe_domain *d, uint32_t port)
{
    const struct xe_abi_ops *o = ops(d);
    if (o->test_and_set_pending(d, port))
        return 0;                                   /* coalesced (or FIFO-deferred) */
    if (!o->is_masked(d, port))
        xe_user_take(d, port);
    return check_pollers(d, port);                  /* pending went 0 -> 1 */
}

/* evtchn_port_set_pending(): skipped for channels that are not usable. (Inlined: it is
 * the body of every send.) */
XE_INLINE int deliver(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    struct xe_chan *c = &chans_of(d)[port];
    if (!chan_usable(c) || vcpu >= d->nr_vcpus)
        return 0;
    struct xe_user *u = __atomic_load_n(&c->user, __ATOMIC_ACQUIRE);
    if (u)
        return deliver_user(d, port);
    int f = abi_set_pending(d, vcpu, port);
    if (!f)
        return 0;
    int ev = 0;
    if (f & XE_SET_KICK)
        ev |= kick(d, vcpu);
    if (f & XE_SET_NEWLY)
        ev |= check_pollers(d, port);
    return ev;
}

int xe_evtchn_set_pending(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    if (!port_is_valid(d, port))
        return -EINVAL;
    return deliver(d, vcpu, port);
}

/* After a FIFO array page was added: raise every valid port of [first, end) that was
 * raised while it had no event word, on its notify vCPU, without looking at its state
 * (spec 4.13 step 5). */
int xe_fifo_raise_deferred(struct xe_domain *d, uint32_t first, uint32_t end)
{
    int ev = 0;
    for (uint32_t port = first; port < end && port_is_valid(d, port); port++) {
        struct xe_chan *c = &chans_of(d)[port];
        if (!__atomic_load_n(&c->fifo_pending, __ATOMIC_RELAXED))
            continue;
        if (__atomic_load_n(&c->user, __ATOMIC_ACQUIRE)) {
            ev |= deliver_user(d, port);   /* a handle's port is taken, not queued */
            continue;
        }
        uint32_t v = __atomic_load_n(&c->notify_vcpu, __ATOMIC_RELAXED);
        int f = v < d->nr_vcpus ? xe_fifo_set_pending(d, v, port) : 0;
        if (f & XE_SET_KICK)
            ev |= kick(d, v);
        if (f & XE_SET_NEWLY)
            ev |= check_pollers(d, port);
    }
    return ev;
}

int xe_evtchn_raise(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port))
        return -EINVAL;
    return deliver(d, atomic_load_explicit((_Atomic uint16_t *)&chans_of(d)[port].notify_vcpu,
                                           memory_order_relaxed), port);
}

/* ---- borrowed domains ------------------------------------------------------------------
 * A send finds its peer in hv->domains, and xe_hv_take_hooks walks hv->owed, without a
 * lock: either may be using a domain that another thread is destroying at that moment.
 * Each counts itself in `borrowers` while it holds such a domain. Python frees a
 * destroyed domain only once it is in neither place and it has then seen the count at
 * zero (xe_borrowers): every call that could have found the domain has returned. */
static _Atomic uint64_t borrowers;

static inline void borrow(void)
{
    atomic_fetch_add_explicit(&borrowers, 1, memory_order_seq_cst);
}

static inline void unborrow(void)
{
    atomic_fetch_sub_explicit(&borrowers, 1, memory_order_release);
}

uint64_t xe_borrowers(void)
{
    atomic_thread_fence(memory_order_seq_cst);  /* after the caller's table stores */
    return atomic_load_explicit(&borrowers, memory_order_seq_cst);
}

static int send_interdomain(struct xe_domain *d, struct xe_chan *c)
{
    /* A racing close and rebind can show a stale peer id: never index past the table. */
    uint32_t rdom = __atomic_load_n(&c->remote_dom, __ATOMIC_RELAXED);
    struct xe_domain *rd = rdom < XE_NR_DOMIDS ?
        atomic_load_explicit((_Atomic(struct xe_domain *) *)&d->hv->domains[rdom], memory_order_acquire) :
        NULL;
    uint32_t rport = c->remote_port;
    if (!rd || !port_is_valid(rd, rport))
        return 0;
    struct xe_chan *rc = &chans_of(rd)[rport];
    if (rc->xen_consumer)   /* Xen's own consumer takes it: the caller calls it */
        return XE_EV_XEN;
    return deliver(rd, rc->notify_vcpu, rport);
}

/* One send. `held`: the caller already counts itself a borrower (a batch borrows once
 * for all its ports, not two atomic read-modify-writes per port). */
XE_INLINE int send_in(struct xe_domain *d, uint32_t port, int held)
{
    if (!port_is_valid(d, port))
        return -EINVAL;
    struct xe_chan *c = &chans_of(d)[port];
    if (atomic_load_explicit(A8(c->xen_consumer), memory_order_relaxed))
        return -EINVAL;
    switch (atomic_load_explicit(A8(c->state), memory_order_acquire)) {
    case XE_ECS_INTERDOMAIN: {
        if (held)
            return send_interdomain(d, c);
        borrow();
        int rc = send_interdomain(d, c);
        unborrow();
        return rc;
    }
    case XE_ECS_IPI:
        return deliver(d, c->notify_vcpu, port);
    case XE_ECS_UNBOUND:
        return 0;   /* nobody to notify yet: the event is dropped */
    default:
        return -EINVAL;
    }
}

XE_INLINE int send_one(struct xe_domain *d, uint32_t port)
{
    return send_in(d, port, 0);
}

/* A send's flags, with XE_EV_HOOKS added while the hypervisor still lists hooks nobody
 * took, if it asked for that (report_owed): a caller that recorded a kick and was stopped
 * before it ran its hooks (a Python signal handler's exception between the C call and
 * the hook runner) leaves them listed, and the next send on the hypervisor, whoever
 * makes it, runs them. One relaxed load when nothing is listed. */
XE_INLINE int with_owed(struct xe_domain *d, int rc)
{
    struct xe_hv *hv = d->hv;
    if (rc >= 0 && hv && atomic_load_explicit(AOWED(hv), memory_order_relaxed) &&
        atomic_load_explicit((_Atomic uint32_t *)&hv->report_owed, memory_order_relaxed))
        rc |= XE_EV_HOOKS;
    return rc;
}

int xe_evtchn_send(struct xe_domain *d, uint32_t port)
{
    return with_owed(d, send_one(d, port));
}

int xe_evtchn_send_many(struct xe_domain *d, const uint32_t *ports, size_t n,
                        size_t *failed_at)
{
    int ev = 0;
    borrow();
    for (size_t i = 0; i < n; i++) {
        int rc = send_in(d, ports[i], 1);
        if (rc < 0) {
            unborrow();
            if (failed_at)
                *failed_at = i;
            return rc;
        }
        ev |= rc;
    }
    unborrow();
    if (failed_at)
        *failed_at = n;
    return with_owed(d, ev);
}

int64_t xe_evtchn_send_batch(struct xe_domain *d, const uint32_t *ports, size_t n)
{
    int ev = 0;
    borrow();
    for (size_t i = 0; i < n; i++) {
        int rc = send_in(d, ports[i], 1);
        if (rc < 0) {
            unborrow();
            return -((int64_t)i * 256 + (int64_t)-rc);
        }
        ev |= rc;
    }
    unborrow();
    return with_owed(d, ev);
}

int xe_evtchn_unmask(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port))
        return -EINVAL;
    struct xe_chan *c = &chans_of(d)[port];
    if (!chan_usable(c))
        return 0;
    if (__atomic_load_n(&c->user, __ATOMIC_ACQUIRE)) {
        xe_user_unmask(d, port);   /* the re-fired event is the handle's: queued */
        return 0;
    }
    uint32_t v = c->notify_vcpu;
    if (v >= d->nr_vcpus)
        return 0;
    int f = ops(d)->unmask(d, v, port);
    int ev = (f & XE_SET_KICK) ? kick(d, v) : 0;
    if (f & XE_SET_NEWLY)
        ev |= check_pollers(d, port);
    return ev;
}

/* The guest's own mask write, in whichever ABI the domain uses. */
void xe_evtchn_mask(struct xe_domain *d, uint32_t port)
{
    if (port < max_ports_of(d))
        ops(d)->mask(d, port);
}

void xe_evtchn_clear_pending(struct xe_domain *d, uint32_t port)
{
    if (port_is_valid(d, port) && chan_usable(&chans_of(d)[port]))
        ops(d)->clear_pending(d, port);
}

int xe_evtchn_is_pending(struct xe_domain *d, uint32_t port)
{
    return port_is_valid(d, port) && chan_usable(&chans_of(d)[port]) &&
           ops(d)->is_pending(d, port);
}

int xe_evtchn_is_masked(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port) || !chan_usable(&chans_of(d)[port]))
        return 1;
    return ops(d)->is_masked(d, port);
}

/* ---- SCHEDOP_poll bookkeeping -------------------------------------------------------- */

void xe_poll_begin(struct xe_domain *d, uint32_t vcpu)
{
    _Atomic uint32_t *pw = vcpu_word(d, MAP_POLL, vcpu);
    if (!pw)
        return;
    atomic_store(poll_evtchn_of(d, vcpu), -1);
    if (vcpu >= XE_MAX_VCPUS && !(atomic_load(pw) & vcpu_bit(vcpu)))
        atomic_fetch_add(A32(d->hi_polling), 1);   /* before the bit: a waker finds it */
    if ((atomic_fetch_or(pw, vcpu_bit(vcpu)) & vcpu_bit(vcpu)) && vcpu >= XE_MAX_VCPUS)
        atomic_fetch_sub(A32(d->hi_polling), 1);   /* it was already polling */
}

void xe_poll_set_port(struct xe_domain *d, uint32_t vcpu, int32_t port)
{
    _Atomic int32_t *pe = poll_evtchn_of(d, vcpu);
    if (pe)
        atomic_store(pe, port);
}

int xe_poll_cancel(struct xe_domain *d, uint32_t vcpu)
{
    _Atomic uint32_t *pw = vcpu_word(d, MAP_POLL, vcpu);
    if (!pw)
        return 0;
    uint32_t bit = vcpu_bit(vcpu);
    int was = (atomic_fetch_and(pw, ~bit) & bit) != 0;
    atomic_store(poll_evtchn_of(d, vcpu), 0);
    if (was && vcpu >= XE_MAX_VCPUS)
        atomic_fetch_sub(A32(d->hi_polling), 1);
    return was;
}

int xe_poll_wake(struct xe_domain *d, uint32_t vcpu)
{
    return end_poll(d, vcpu);
}

int xe_vcpu_polling(struct xe_domain *d, uint32_t vcpu)
{
    _Atomic uint32_t *pw = vcpu_word(d, MAP_POLL, vcpu);
    return pw && ((atomic_load(pw) & vcpu_bit(vcpu)) != 0);
}

uint32_t xe_take_kicked(struct xe_domain *d)
{
    return atomic_exchange(A32(d->kicked), 0);
}

uint32_t xe_take_woken(struct xe_domain *d)
{
    return atomic_exchange(A32(d->woken), 0);
}

/* ---- VCPUOP_register_vcpu_info ------------------------------------------------------- */

int xe_vcpu_info_register(struct xe_domain *d, uint32_t vcpu, void *area)
{
    struct xe_shinfo *s = &d->si;
    if (!s->vcpu_info || vcpu >= s->nr_vcpu_info || vcpu >= d->nr_vcpus || !area)
        return -EINVAL;
    /* Populate: a copy of the current area (every byte, the mask included), word by word
     * as senders may be setting bits in it; or, from Xen's dummy, zeros and the mask. */
    _Atomic uint32_t *to = area;
    char *old = vcpu_info(s, vcpu);
    for (size_t i = 0; i < VCPU_INFO_SIZE / 4; i++)
        atomic_store_explicit(&to[i], old ? atomic_load_explicit((_Atomic uint32_t *)old + i,
                                                                 memory_order_relaxed) : 0,
                              memory_order_relaxed);
    if (!old)
        atomic_store((_Atomic uint8_t *)area + 1, 1);
    /* Switch: from here every sender uses the new area. A selector bit set in the old
     * one after its copy is recovered by the all-ones selector below. */
    __atomic_store_n(&s->vcpu_info[vcpu], area, __ATOMIC_SEQ_CST);
    if (s->word_bits == 64)
        atomic_store((_Atomic uint64_t *)sel_of(s, area), UINT64_MAX);
    else
        atomic_store((_Atomic uint32_t *)sel_of(s, area), UINT32_MAX);
    /* vcpu_mark_events_pending(): a kick only if the (copied) flag was still 0. */
    if (atomic_fetch_or((_Atomic uint8_t *)area, 1) & 1)
        return 0;
    return kick(d, vcpu);
}

static size_t take_hooks(struct xe_hv *hv, uint32_t *out, size_t cap);

size_t xe_hv_take_hooks(struct xe_hv *hv, uint32_t *out, size_t cap)
{
    if (!atomic_load_explicit(AOWED(hv), memory_order_relaxed))
        return 0;
    borrow();                                  /* the list may hold destroyed domains */
    size_t n = take_hooks(hv, out, cap);
    unborrow();
    return n;
}

static size_t take_hooks(struct xe_hv *hv, uint32_t *out, size_t cap)
{
    struct xe_domain *d = atomic_exchange(AOWED(hv), NULL);
    size_t n = 0;
    while (d && n < cap) {
        struct xe_domain *next = d->owed_next;
        atomic_store(A32(d->hooks_owed), 0);      /* before its bits are taken */
        if (hv->domains[d->domid] == d) {          /* a destroyed domain owes nothing */
            out[3 * n] = d->domid;
            out[3 * n + 1] = atomic_exchange(A32(d->kicked), 0);
            out[3 * n + 2] = atomic_exchange(A32(d->woken), 0);
            n++;
            /* vCPUs 32..: a record per group of 32 with bits; what does not fit stays
             * recorded, and the domain is listed again for the next call. */
            uint32_t *hb = d->hi_bits;
            for (uint32_t w = 0; hb && w < d->hi_words; w++) {
                _Atomic uint32_t *kw = (_Atomic uint32_t *)&hb[(size_t)MAP_KICKED * d->hi_words + w];
                _Atomic uint32_t *ww = (_Atomic uint32_t *)&hb[(size_t)MAP_WOKEN * d->hi_words + w];
                if (!atomic_load(kw) && !atomic_load(ww))
                    continue;
                if (n == cap) {
                    owe_hooks(d);
                    break;
                }
                out[3 * n] = d->domid | (w + 1) << 16;
                out[3 * n + 1] = atomic_exchange(kw, 0);
                out[3 * n + 2] = atomic_exchange(ww, 0);
                n++;
            }
        }
        d = next;
    }
    if (d) {                                       /* out is full: the rest go back */
        struct xe_domain *tail = d;
        while (tail->owed_next)
            tail = tail->owed_next;
        struct xe_domain *head = atomic_load(AOWED(hv));
        do
            tail->owed_next = head;
        while (!atomic_compare_exchange_weak(AOWED(hv), &head, d));
    }
    return n;
}

/* ---- one-argument fast paths ------------------------------------------------------------ */

/* Domains by slot, for Python's per-event calls: a cffi call with one argument takes a
 * fast path that one with two does not, so (slot, port) travel as one small int. */
static _Atomic(struct xe_domain *) slots[XE_NR_SLOTS];

int xe_slot_set(uint32_t slot, struct xe_domain *d)
{
    if (slot >= XE_NR_SLOTS)
        return -EINVAL;
    atomic_store_explicit(&slots[slot], d, memory_order_release);
    return 0;
}

static inline struct xe_domain *key_domain(uint32_t key)
{
    uint32_t slot = key >> XE_KEY_PORT_BITS;
    if (slot >= XE_NR_SLOTS)
        return NULL;
    return atomic_load_explicit(&slots[slot], memory_order_acquire);
}

int xe_send_key(uint32_t key)
{
    struct xe_domain *d = key_domain(key);
    return d ? with_owed(d, send_one(d, key & XE_KEY_PORT_MASK)) : -ESRCH;
}

int xe_unmask_key(uint32_t key)
{
    struct xe_domain *d = key_domain(key);
    return d ? xe_evtchn_unmask(d, key & XE_KEY_PORT_MASK) : -ESRCH;
}

struct xe_scan *xe_2l_key_scan(uint32_t key)
{
    struct xe_domain *d = key_domain(key);
    uint32_t v = key & XE_KEY_PORT_MASK;
    if (!d || !d->scans || v >= d->nr_vcpus || d->scans[v].d != d || d->scans[v].vcpu != v)
        return NULL;
    return &d->scans[v];
}

int32_t xe_2l_upcall_key(uint32_t key)
{
    struct xe_scan *s = xe_2l_key_scan(key);
    if (!s)
        return -EINVAL;
    if (s->d->abi != XE_ABI_2L)
        return -ENOSYS;
    if (xe_upcall_enter(s))
        return 0;                       /* the upcall running on this vCPU takes them */
    int32_t n = xe_2l_upcall(s);
    if (n < 0) {
        xe_upcall_abort(s);
        return n;
    }
    if (n == 1 && s->cap > 1)
        return (int32_t)s->out[0];      /* never 0: port 0 is never usable */
    return n ? XE_UPCALL_MANY + n : 0;
}

/* The 2-level domain of a guest-side key call and its port; NULL with *err set (-ENOSYS
 * for a key that names no 2-level domain, -EINVAL for a port past the shared_info). */
static inline struct xe_domain *key_2l_domain(uint32_t key, uint32_t *port, int *err)
{
    struct xe_domain *d = key_domain(key);
    *port = key & XE_KEY_PORT_MASK;
    if (!d || d->abi != XE_ABI_2L) {
        *err = -ENOSYS;
        return NULL;
    }
    if (*port >= d->si.nr_ports) {
        *err = -EINVAL;
        return NULL;
    }
    return d;
}

int xe_linux_unmask_key(uint32_t key)
{
    uint32_t port;
    int err;
    struct xe_domain *d = key_2l_domain(key, &port, &err);
    if (!d)
        return err;
    uint32_t v = 0;                                /* as Linux: vCPU 0 past the valid range */
    if (port_is_valid(d, port)) {
        struct xe_chan *c = &chans_of(d)[port];
        if (__atomic_load_n(&c->user, __ATOMIC_ACQUIRE))
            return xe_user_unmask(d, port);
        v = atomic_load_explicit((_Atomic uint16_t *)&c->notify_vcpu, memory_order_relaxed);
    }
    return xe_2l_guest_unmask(&d->si, v, port);
}

/* The guest's own mask write on a 2-level port (d.guest.mask); -ENOSYS for a key that
 * names no 2-level domain, -EINVAL for a port past the shared_info. */
int xe_2l_mask_key(uint32_t key)
{
    uint32_t port;
    int err;
    struct xe_domain *d = key_2l_domain(key, &port, &err);
    if (!d)
        return err;
    xe_2l_mask(&d->si, port);
    return 0;
}

/* ---- publishing the port table (see chans_of in evtchn_abi.h) ----------------------- */

void xe_domain_set_chans(struct xe_domain *d, struct xe_chan *chans, uint32_t max_ports)
{
    __atomic_store_n(&d->chans, chans, __ATOMIC_RELEASE);        /* the array first ... */
    __atomic_store_n(&d->max_ports, max_ports, __ATOMIC_RELEASE); /* ... then its size */
}

void xe_domain_set_valid(struct xe_domain *d, uint32_t valid_evtchns)
{
    __atomic_store_n(&d->valid_evtchns, valid_evtchns, __ATOMIC_RELEASE);
}
