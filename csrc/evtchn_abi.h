/*
 * The per-ABI operations the generic event paths call (Xen's evtchn_port_ops): the
 * generic code in evtchn.c never asks which ABI a domain uses. Private to csrc/.
 */
#ifndef XENEVTCHN_EVTCHN_ABI_H
#define XENEVTCHN_EVTCHN_ABI_H

#include "xenevtchn.h"

struct xe_abi_ops {
    /* Raise the port on vcpu; returns XE_SET_NEWLY / XE_SET_KICK flags. */
    int (*set_pending)(struct xe_domain *d, uint32_t vcpu, uint32_t port);
    void (*clear_pending)(struct xe_domain *d, uint32_t port);
    /* The EVTCHNOP_unmask action: XE_SET_KICK when the vCPU must be kicked, XE_SET_NEWLY
     * when the port became pending anew (pollers to check). */
    int (*unmask)(struct xe_domain *d, uint32_t vcpu, uint32_t port);
    int (*is_pending)(struct xe_domain *d, uint32_t port);
    int (*is_masked)(struct xe_domain *d, uint32_t port);
    /* For ports bound through a libxenevtchn handle, which are never queued: */
    int (*test_and_set_pending)(struct xe_domain *d, uint32_t port);  /* previous bit */
    int (*test_and_clear_pending)(struct xe_domain *d, uint32_t port);
    int (*mask)(struct xe_domain *d, uint32_t port);                  /* previous bit */
    int (*clear_mask)(struct xe_domain *d, uint32_t port);            /* previous bit */
};

extern const struct xe_abi_ops xe_abi_2l_ops;
extern const struct xe_abi_ops xe_abi_fifo_ops;

#include <stdatomic.h>

#define A8(field) ((_Atomic uint8_t *)&(field))

/*
 * The port table grows (to the FIFO ABI's size) while senders read it: the control plane
 * publishes the new array, then the new sizes, each with a release store
 * (xe_domain_set_chans, xe_domain_set_valid); every reader loads a size first (acquire:
 * port_is_valid, max_ports_of) and the array after it (chans_of), so a reader that sees
 * the new size also sees the new array, on weakly ordered CPUs too. An older, shorter
 * array a reader took before stays allocated (the control plane keeps it).
 */
static inline struct xe_chan *chans_of(const struct xe_domain *d)
{
    return __atomic_load_n(&d->chans, __ATOMIC_ACQUIRE);
}

static inline uint32_t max_ports_of(const struct xe_domain *d)
{
    return __atomic_load_n(&d->max_ports, __ATOMIC_ACQUIRE);
}

static inline int port_is_valid(struct xe_domain *d, uint32_t port)
{
    return port < atomic_load_explicit((_Atomic uint32_t *)&d->valid_evtchns,
                                       memory_order_acquire);
}

/* Xen's evtchn_usable(): guest-owned and in a bound or unbound state. */
static inline int chan_usable(struct xe_chan *c)
{
    return atomic_load_explicit(A8(c->xen_consumer), memory_order_relaxed) == 0 &&
           atomic_load_explicit(A8(c->state), memory_order_acquire) > XE_ECS_RESERVED;
}

/* A vCPU's FIFO state: inline for vCPUs 0..31, else in the control plane's vcpu_hi
 * array; NULL past both. */
static inline struct xe_fifo_vcpu *fifo_vcpu(struct xe_fifo *f, uint32_t vcpu)
{
    if (vcpu < XE_MAX_VCPUS)
        return &f->vcpu[vcpu];
    vcpu -= XE_MAX_VCPUS;
    return vcpu < f->nr_vcpu_hi && f->vcpu_hi ? &f->vcpu_hi[vcpu] : NULL;
}

/* The operations of the ABI the domain uses now (Xen's d->evtchn_port_ops). */
static inline const struct xe_abi_ops *abi_ops(const struct xe_domain *d)
{
    return __atomic_load_n(&d->abi, __ATOMIC_ACQUIRE) == XE_ABI_FIFO ? &xe_abi_fifo_ops
                                                                     : &xe_abi_2l_ops;
}

#endif
