/*
 * Where the 2-level words live inside a shared_info of either layout. Private to csrc/.
 */
#ifndef XENEVTCHN_SHINFO_LAYOUT_H
#define XENEVTCHN_SHINFO_LAYOUT_H

#include "bitops.h"
#include "xenevtchn.h"

enum {
    VCPU_INFO_SIZE = 64,
    PENDING_OFFSET = 2048,        /* evtchn_pending[] in both layouts */
    MASK_OFFSET_64 = 2048 + 512,  /* evtchn_mask[], x86_64 */
    MASK_OFFSET_32 = 2048 + 128,  /* evtchn_mask[], x86_32 */
    SEL_OFFSET_64 = 8,            /* vcpu_info.evtchn_pending_sel, x86_64 */
    SEL_OFFSET_32 = 4,            /* vcpu_info.evtchn_pending_sel, x86_32 */
};

XE_INLINE void *pending_words(const struct xe_shinfo *s)
{
    return (char *)s->base + PENDING_OFFSET;
}

XE_INLINE void *mask_words(const struct xe_shinfo *s)
{
    return (char *)s->base + (s->word_bits == 64 ? MASK_OFFSET_64 : MASK_OFFSET_32);
}

/* The legacy vcpu_info slot of a vCPU below XE_MAX_VCPUS inside shared_info itself. */
XE_INLINE char *legacy_vcpu_info(const struct xe_shinfo *s, uint32_t vcpu)
{
    return (char *)s->base + (size_t)vcpu * VCPU_INFO_SIZE;
}

/* Where the vCPU's vcpu_info lives now, or NULL when it has none (Xen's dummy): its
 * table entry, or without a table its legacy slot. The acquire load pairs with the
 * release store of xe_vcpu_info_register, so the filled area is seen before it is used. */
XE_INLINE char *vcpu_info(const struct xe_shinfo *s, uint32_t vcpu)
{
    if (__builtin_expect(vcpu < s->nr_vcpu_info, 1))   /* a table covers it: the usual case */
        return (char *)__atomic_load_n(&s->vcpu_info[vcpu], __ATOMIC_ACQUIRE);
    return !s->vcpu_info && vcpu < XE_MAX_VCPUS ? legacy_vcpu_info(s, vcpu) : NULL;
}

XE_INLINE void *sel_of(const struct xe_shinfo *s, char *vi)
{
    return vi + (s->word_bits == 64 ? SEL_OFFSET_64 : SEL_OFFSET_32);
}

/* Read word w of a bitmap as a 64-bit value (either width). */
XE_INLINE uint64_t xe_load_word(void *words, uint32_t word_bits, uint32_t w)
{
    if (word_bits == 64)
        return atomic_load((_Atomic uint64_t *)words + w);
    return atomic_load((_Atomic uint32_t *)words + w);
}

#endif
