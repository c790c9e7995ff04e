/*
 * Atomic bit operations on guest-visible words of either width, as Xen's event paths
 * use them. The words are plain integers in memory the caller owns; only here are they
 * viewed as _Atomic. Private to csrc/.
 */
#ifndef XENEVTCHN_BITOPS_H
#define XENEVTCHN_BITOPS_H

#include <stdatomic.h>
#include <stdint.h>

#define XE_INLINE static inline __attribute__((always_inline))

XE_INLINE _Atomic uint64_t *xe_word64(void *base, uint32_t bit)
{
    return (_Atomic uint64_t *)base + bit / 64;
}

XE_INLINE _Atomic uint32_t *xe_word32(void *base, uint32_t bit)
{
    return (_Atomic uint32_t *)base + bit / 32;
}

/* Each returns the bit's previous value. */
XE_INLINE int xe_test_and_set(void *base, uint32_t word_bits, uint32_t bit)
{
    if (word_bits == 64) {
        uint64_t m = UINT64_C(1) << (bit % 64);
        return (atomic_fetch_or(xe_word64(base, bit), m) & m) != 0;
    }
    uint32_t m = UINT32_C(1) << (bit % 32);
    return (atomic_fetch_or(xe_word32(base, bit), m) & m) != 0;
}

XE_INLINE int xe_test_and_clear(void *base, uint32_t word_bits, uint32_t bit)
{
    if (word_bits == 64) {
        uint64_t m = UINT64_C(1) << (bit % 64);
        return (atomic_fetch_and(xe_word64(base, bit), ~m) & m) != 0;
    }
    uint32_t m = UINT32_C(1) << (bit % 32);
    return (atomic_fetch_and(xe_word32(base, bit), ~m) & m) != 0;
}

XE_INLINE int xe_test_bit(void *base, uint32_t word_bits, uint32_t bit)
{
    if (word_bits == 64)
        return (atomic_load(xe_word64(base, bit)) >> (bit % 64)) & 1;
    return (atomic_load(xe_word32(base, bit)) >> (bit % 32)) & 1;
}

#endif
