/*
 * The 2-level raise as an inline function, so the send paths of evtchn.c can take it
 * without a call through the per-ABI table when a domain uses the 2-level ABI (the table
 * entry in event_2l.c is the same function). Private to csrc/.
 */
#ifndef XENEVTCHN_EVENT_2L_H
#define XENEVTCHN_EVENT_2L_H

#include "evtchn_abi.h"
#include "shinfo_layout.h"

/* The selector bit of a port: its word's index (a shift, where a division by the
 * run-time word size would cost tens of cycles on the send path). */
static inline uint32_t word_of(const struct xe_shinfo *s, uint32_t port)
{
    return s->word_bits == 64 ? port / 64 : port / 32;
}

/* Xen's mark_events_pending(): bit 0 of upcall_pending in the vcpu_info `vi`; a kick
 * only on its 0 -> 1 edge. */
static inline int mark_events_pending(char *vi)
{
    return (atomic_fetch_or((_Atomic uint8_t *)vi, 1) & 1) ? 0 : XE_SET_KICK;
}

/*
 * Xen's evtchn_2l_set_pending(), for one word size W (a constant once inlined, so the
 * width tests fold away). A bit found already set by a plain load is treated as the
 * test-and-set that found it set (setting a set bit changes nothing, and the load is a
 * point at which the bit was set): the same result, without a locked write.
 */
XE_INLINE int set_pending_w(const struct xe_shinfo *s, uint32_t vcpu, uint32_t port, uint32_t W)
{
    char *base = s->base;
    void *pending = base + PENDING_OFFSET;
    /* 1. An already-pending port is a coalesced event: nothing else happens at all. */
    if (xe_test_bit(pending, W, port) || xe_test_and_set(pending, W, port))
        return 0;
    int flags = XE_SET_NEWLY;
    /* 2. Unmasked: the selector bit of the port's word, and an upcall on its 0 -> 1 edge,
     * in the vCPU's vcpu_info wherever it lives; a vCPU with none (Xen's dummy) loses the
     * upcall, not the event. */
    if (!xe_test_bit(base + (W == 64 ? MASK_OFFSET_64 : MASK_OFFSET_32), W, port)) {
        char *vi = vcpu_info(s, vcpu);
        if (!vi)
            return flags;
        void *sel = vi + (W == 64 ? SEL_OFFSET_64 : SEL_OFFSET_32);
        uint32_t w = port / W;
        if (!xe_test_bit(sel, W, w) && !xe_test_and_set(sel, W, w))
            flags |= mark_events_pending(vi);
    }
    /* 3. The caller checks pollers (masked ports wake pollers too). */
    return flags;
}

XE_INLINE int set_pending_2l(const struct xe_shinfo *s, uint32_t vcpu, uint32_t port)
{
    if (port >= s->nr_ports)
        return 0;
    return s->word_bits == 64 ? set_pending_w(s, vcpu, port, 64) : set_pending_w(s, vcpu, port, 32);
}

#endif
