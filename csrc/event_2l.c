/*
 * The 2-level event-channel ABI (Xen's event_2l.c; spec section 8): pending and mask
 * bitmaps in shared_info, a per-vCPU selector word, and the per-vCPU upcall flag.
 * Every function works on either guest width; none allocates or blocks.
 */
#include <errno.h>
#include <string.h>

#include "event_2l.h"

/* ---- views ---------------------------------------------------------------------- */

size_t xe_shinfo_size(int layout)
{
    switch (layout) {
    case XE_LAYOUT_X86_64:
        return sizeof(struct shared_info);
    case XE_LAYOUT_X86_32:
        return sizeof(struct compat_shared_info);
    default:
        return 0;
    }
}

int xe_shinfo_init(struct xe_shinfo *s, void *base, int layout)
{
    if (!s || !base || ((uintptr_t)base % 8) != 0 || xe_shinfo_size(layout) == 0)
        return -EINVAL;
    s->base = base;
    s->word_bits = layout == XE_LAYOUT_X86_64 ? 64 : 32;
    s->nr_ports = s->word_bits * s->word_bits;
    s->vcpu_info = NULL;   /* the legacy slots */
    s->nr_vcpu_info = 0;
    s->_pad = 0;
    return 0;
}

void xe_shinfo_reset(const struct xe_shinfo *s)
{
    size_t size = s->word_bits == 64 ? sizeof(struct shared_info)
                                     : sizeof(struct compat_shared_info);
    memset(s->base, 0, size);
    for (uint32_t v = 0; v < XE_MAX_VCPUS; v++)   /* the legacy slots, wherever vCPUs moved */
        atomic_store((_Atomic uint8_t *)legacy_vcpu_info(s, v) + 1, 1);
}

void *xe_vcpu_info(const struct xe_shinfo *s, uint32_t vcpu)
{
    return vcpu_info(s, vcpu);
}

/* A vCPU without a vcpu_info reads 0 everywhere and ignores writes (Xen's dummy). */
uint8_t xe_vcpu_upcall_pending(const struct xe_shinfo *s, uint32_t vcpu)
{
    char *vi = vcpu_info(s, vcpu);
    return vi ? atomic_load((_Atomic uint8_t *)vi) : 0;
}

uint8_t xe_vcpu_upcall_mask(const struct xe_shinfo *s, uint32_t vcpu)
{
    char *vi = vcpu_info(s, vcpu);
    return vi ? atomic_load((_Atomic uint8_t *)vi + 1) : 0;
}

uint64_t xe_vcpu_pending_sel(const struct xe_shinfo *s, uint32_t vcpu)
{
    char *vi = vcpu_info(s, vcpu);
    if (!vi)
        return 0;
    if (s->word_bits == 64)
        return atomic_load((_Atomic uint64_t *)sel_of(s, vi));
    return atomic_load((_Atomic uint32_t *)sel_of(s, vi));
}

void xe_vcpu_set_upcall_pending(const struct xe_shinfo *s, uint32_t vcpu, uint8_t value)
{
    char *vi = vcpu_info(s, vcpu);
    if (vi)
        atomic_store((_Atomic uint8_t *)vi, value);
}

void xe_vcpu_set_upcall_mask(const struct xe_shinfo *s, uint32_t vcpu, uint8_t value)
{
    char *vi = vcpu_info(s, vcpu);
    if (vi)
        atomic_store((_Atomic uint8_t *)vi + 1, value);
}

/* ---- the data path ----------------------------------------------------------------- */

int xe_2l_set_pending(const struct xe_shinfo *s, uint32_t vcpu, uint32_t port)
{
    return set_pending_2l(s, vcpu, port);
}

void xe_2l_clear_pending(const struct xe_shinfo *s, uint32_t port)
{
    if (port < s->nr_ports)
        xe_test_and_clear(pending_words(s), s->word_bits, port);
}

void xe_2l_mask(const struct xe_shinfo *s, uint32_t port)
{
    if (port < s->nr_ports)
        xe_test_and_set(mask_words(s), s->word_bits, port);
}

int xe_2l_unmask(const struct xe_shinfo *s, uint32_t vcpu, uint32_t port)
{
    if (port >= s->nr_ports)
        return 0;
    /* Only a mask bit that was still set makes the hypercall act. */
    if (!xe_test_and_clear(mask_words(s), s->word_bits, port))
        return 0;
    char *vi = vcpu_info(s, vcpu);
    if (vi && xe_test_bit(pending_words(s), s->word_bits, port) &&
        !xe_test_and_set(sel_of(s, vi), s->word_bits, word_of(s, port)))
        return mark_events_pending(vi);
    return 0;
}

int xe_2l_is_pending(const struct xe_shinfo *s, uint32_t port)
{
    return port < s->nr_ports && xe_test_bit(pending_words(s), s->word_bits, port);
}

int xe_2l_is_masked(const struct xe_shinfo *s, uint32_t port)
{
    return port >= s->nr_ports || xe_test_bit(mask_words(s), s->word_bits, port);
}

uint64_t xe_2l_take_pending_sel(const struct xe_shinfo *s, uint32_t vcpu)
{
    char *vi = vcpu_info(s, vcpu);
    if (!vi)
        return 0;
    if (s->word_bits == 64)
        return atomic_exchange((_Atomic uint64_t *)sel_of(s, vi), 0);
    return atomic_exchange((_Atomic uint32_t *)sel_of(s, vi), 0);
}

/* ---- the 2-level entry of the per-ABI table ----------------------------------------- */

static int ops_set_pending(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    return xe_2l_set_pending(&d->si, vcpu, port);
}

static void ops_clear_pending(struct xe_domain *d, uint32_t port)
{
    xe_2l_clear_pending(&d->si, port);
}

static int ops_unmask(struct xe_domain *d, uint32_t vcpu, uint32_t port)
{
    return xe_2l_unmask(&d->si, vcpu, port);
}

static int ops_is_pending(struct xe_domain *d, uint32_t port)
{
    return xe_2l_is_pending(&d->si, port);
}

static int ops_is_masked(struct xe_domain *d, uint32_t port)
{
    return xe_2l_is_masked(&d->si, port);
}

static int ops_test_and_set_pending(struct xe_domain *d, uint32_t port)
{
    const struct xe_shinfo *s = &d->si;
    return port >= s->nr_ports || xe_test_and_set(pending_words(s), s->word_bits, port);
}

static int ops_test_and_clear_pending(struct xe_domain *d, uint32_t port)
{
    const struct xe_shinfo *s = &d->si;
    return port < s->nr_ports && xe_test_and_clear(pending_words(s), s->word_bits, port);
}

static int ops_mask(struct xe_domain *d, uint32_t port)
{
    const struct xe_shinfo *s = &d->si;
    return port >= s->nr_ports || xe_test_and_set(mask_words(s), s->word_bits, port);
}

static int ops_clear_mask(struct xe_domain *d, uint32_t port)
{
    const struct xe_shinfo *s = &d->si;
    return port < s->nr_ports && xe_test_and_clear(mask_words(s), s->word_bits, port);
}

const struct xe_abi_ops xe_abi_2l_ops = {
    .set_pending = ops_set_pending,
    .clear_pending = ops_clear_pending,
    .unmask = ops_unmask,
    .is_pending = ops_is_pending,
    .is_masked = ops_is_masked,
    .test_and_set_pending = ops_test_and_set_pending,
    .test_and_clear_pending = ops_test_and_clear_pending,
    .mask = ops_mask,
    .clear_mask = ops_clear_mask,
};
