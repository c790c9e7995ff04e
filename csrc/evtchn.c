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

#include "evtchn_abi.h"
#include "shinfo_layout.h"

#define A32(field) ((_Atomic uint32_t *)&(field))
#define AI32(field) ((_Atomic int32_t *)&(field))

static inline const struct xe_abi_ops *ops(const struct xe_domain *d)
{
    return abi_ops(d);
}

/* End vCPU v's poll if it is in one; report whether it was. */
static int end_poll(struct xe_domain *d, uint32_t v)
{
    uint32_t bit = UINT32_C(1) << v;
    if (!(atomic_fetch_and(A32(d->poll_mask), ~bit) & bit))
        return 0;
    atomic_store(AI32(d->poll_evtchn[v]), 0);
    atomic_fetch_or(A32(d->woken), bit);
    return XE_EV_HOOKS;
}

/* vcpu_kick(): note the kick; a kick unblocks a vCPU that is polling. */
static int kick(struct xe_domain *d, uint32_t v)
{
    atomic_fetch_or(A32(d->kicked), UINT32_C(1) << v);
    end_poll(d, v);
    return XE_EV_HOOKS;
}

/* check_pollers(): vCPUs polling this port, or several / zero ports, wake up. */
static int check_pollers(struct xe_domain *d, uint32_t port)
{
    uint32_t polling = atomic_load(A32(d->poll_mask));
    int ev = 0;
    while (polling) {
        uint32_t v = (uint32_t)__builtin_ctz(polling);
        polling &= polling - 1;
        int32_t want = atomic_load(AI32(d->poll_evtchn[v]));
        if (want <= 0 || (uint32_t)want == port)
            ev |= end_poll(d, v);
    }
    return ev;
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

/* evtchn_port_set_pending(): skipped for channels that are not usable. */
static inline int deliver(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    struct xe_chan *c = &d->chans[port];
    if (!chan_usable(c) || vcpu >= d->nr_vcpus)
        return 0;
    struct xe_user *u = __atomic_load_n(&c->user, __ATOMIC_ACQUIRE);
    if (u)
        return deliver_user(d, port);
    int f = ops(d)->set_pending(d, vcpu, port);
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
        struct xe_chan *c = &d->chans[port];
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
    return deliver(d, atomic_load_explicit((_Atomic uint16_t *)&d->chans[port].notify_vcpu,
                                           memory_order_relaxed), port);
}

static inline int send_one(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port))
        return -EINVAL;
    struct xe_chan *c = &d->chans[port];
    if (atomic_load_explicit(A8(c->xen_consumer), memory_order_relaxed))
        return -EINVAL;
    switch (atomic_load_explicit(A8(c->state), memory_order_acquire)) {
    case XE_ECS_INTERDOMAIN: {
        struct xe_domain *rd = d->hv->domains[c->remote_dom];
        uint32_t rport = c->remote_port;
        if (!rd || !port_is_valid(rd, rport))
            return 0;
        struct xe_chan *rc = &rd->chans[rport];
        if (rc->xen_consumer)   /* Xen's own consumer takes it; nothing for the guest */
            return 0;
        return deliver(rd, rc->notify_vcpu, rport);
    }
    case XE_ECS_IPI:
        return deliver(d, c->notify_vcpu, port);
    case XE_ECS_UNBOUND:
        return 0;   /* nobody to notify yet: the event is dropped */
    default:
        return -EINVAL;
    }
}

int xe_evtchn_send(struct xe_domain *d, uint32_t port)
{
    return send_one(d, port);
}

int xe_evtchn_send_many(struct xe_domain *d, const uint32_t *ports, size_t n,
                        size_t *failed_at)
{
    int ev = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = send_one(d, ports[i]);
        if (rc < 0) {
            if (failed_at)
                *failed_at = i;
            return rc;
        }
        ev |= rc;
    }
    if (failed_at)
        *failed_at = n;
    return ev;
}

int xe_evtchn_unmask(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port))
        return -EINVAL;
    struct xe_chan *c = &d->chans[port];
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
    if (port < d->max_ports)
        ops(d)->mask(d, port);
}

void xe_evtchn_clear_pending(struct xe_domain *d, uint32_t port)
{
    if (port_is_valid(d, port) && chan_usable(&d->chans[port]))
        ops(d)->clear_pending(d, port);
}

int xe_evtchn_is_pending(struct xe_domain *d, uint32_t port)
{
    return port_is_valid(d, port) && chan_usable(&d->chans[port]) &&
           ops(d)->is_pending(d, port);
}

int xe_evtchn_is_masked(struct xe_domain *d, uint32_t port)
{
    if (!port_is_valid(d, port) || !chan_usable(&d->chans[port]))
        return 1;
    return ops(d)->is_masked(d, port);
}

/* ---- SCHEDOP_poll bookkeeping -------------------------------------------------------- */

void xe_poll_begin(struct xe_domain *d, uint32_t vcpu)
{
    if (vcpu >= XE_MAX_VCPUS)
        return;
    atomic_store(AI32(d->poll_evtchn[vcpu]), -1);
    atomic_fetch_or(A32(d->poll_mask), UINT32_C(1) << vcpu);
}

void xe_poll_set_port(struct xe_domain *d, uint32_t vcpu, int32_t port)
{
    if (vcpu < XE_MAX_VCPUS)
        atomic_store(AI32(d->poll_evtchn[vcpu]), port);
}

int xe_poll_cancel(struct xe_domain *d, uint32_t vcpu)
{
    if (vcpu >= XE_MAX_VCPUS)
        return 0;
    uint32_t bit = UINT32_C(1) << vcpu;
    int was = (atomic_fetch_and(A32(d->poll_mask), ~bit) & bit) != 0;
    atomic_store(AI32(d->poll_evtchn[vcpu]), 0);
    return was;
}

int xe_poll_wake(struct xe_domain *d, uint32_t vcpu)
{
    return vcpu < XE_MAX_VCPUS ? end_poll(d, vcpu) : 0;
}

int xe_vcpu_polling(struct xe_domain *d, uint32_t vcpu)
{
    return vcpu < XE_MAX_VCPUS &&
           ((atomic_load(A32(d->poll_mask)) >> vcpu) & 1);
}

uint32_t xe_take_kicked(struct xe_domain *d)
{
    return atomic_exchange(A32(d->kicked), 0);
}

uint32_t xe_take_woken(struct xe_domain *d)
{
    return atomic_exchange(A32(d->woken), 0);
}
