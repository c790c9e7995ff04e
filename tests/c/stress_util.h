/*
 * What the C stress programs (stress_2l.c, stress_fifo.c, stress_minios.c) share: a
 * pseudo-random generator, the pause in which the main thread checks a round, a monotonic
 * maximum and the layout argument. Each program includes it once; everything here is
 * static to that program.
 */
#ifndef XENEVTCHN_STRESS_UTIL_H
#define XENEVTCHN_STRESS_UTIL_H

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "xenevtchn.h"

/* Rounds: the main thread sets `paused`, waits until every worker has `parked`, checks,
 * then lets them go on. */
static _Atomic int paused, parked;

/* Called by a worker at a point where it holds nothing in flight; returns 1 if it parked
 * (the caller then re-checks its stop flag before doing anything). */
static inline int park_if_paused(_Atomic int *stop)
{
    if (!atomic_load(&paused))
        return 0;
    atomic_fetch_add(&parked, 1);
    while (atomic_load(&paused) && !atomic_load(stop))
        sched_yield();
    atomic_fetch_sub(&parked, 1);
    return 1;
}

/* xorshift64*: a per-thread stream, seeded by the caller. */
static inline uint64_t rng_next(uint64_t *x)
{
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 0x2545F4914F6CDD1DULL;
}

/* Raise *p to v unless another thread already stored something larger. */
static inline void store_max(_Atomic uint64_t *p, uint64_t v)
{
    uint64_t cur = atomic_load(p);
    while (cur < v && !atomic_compare_exchange_weak(p, &cur, v))
        ;
}

/* The layout named on the command line, or -1 for a name the programs do not know. */
static inline int stress_layout(const char *name)
{
    if (!strcmp(name, "x86_64"))
        return XE_LAYOUT_X86_64;
    if (!strcmp(name, "x86_32"))
        return XE_LAYOUT_X86_32;
    return -1;
}

#endif
