/*
 * Multi-threaded stress test of the hypervisor's list of domains owing hooks
 * (xe_hv_take_hooks, fed by every kick and poll wake-up of the C core).
 *
 *   - P producer threads record kicks and wake-ups on random vCPUs of random domains:
 *     an IPI send after clearing the vCPU's upcall flag and selector and the port's
 *     pending bit (a kick when the flag goes 0 -> 1), or SCHEDOP_poll's begin + wake;
 *   - C consumer threads take records with a small cap (3), so a take often leaves part
 *     of the list behind and gives it back.
 *
 * The run is cut into many short rounds: each producer records a few events (1..64), the
 * consumers take while any producer is still at it, then everyone parks and the main
 * thread drains the list and checks that nothing was left behind, so a bit that slipped
 * past the list is caught before a later event of its domain could hide it.
 *
 * Checks (any failure: message on stderr, exit 1):
 *   1. a take never lists a domain twice;
 *   2. no bit is lost: at the end of every round, takes until the list is empty leave
 *      every domain with kicked == woken == 0 and hooks_owed == 0;
 *   3. per vCPU, bits reported <= 2 x events recorded (a kick may also end a poll), and
 *      > 0 wherever events were recorded.
 *
 * Usage: stress_hooks [seconds=1] [seed=1]
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xenevtchn.h"

#define NDOM 12
#define NVCPU 4
#define NPORT 32           /* IPI ports 1..NPORT-1, port p on vCPU p % NVCPU */
#define PRODUCERS 3
#define CONSUMERS 2
#define CAP 3

static struct xe_hv hv;
static struct xe_domain doms[NDOM];
static struct xe_chan chans[NDOM][NPORT];
static uint64_t pages[NDOM][512];

static _Atomic int stop;
static _Atomic int producing;                 /* producers still recording this round */
static pthread_barrier_t round_start, round_end;
static _Atomic uint64_t made[NDOM][NVCPU];      /* events that returned XE_EV_HOOKS */
static _Atomic uint64_t reported[NDOM][NVCPU];  /* kicked + woken bits taken */
static _Atomic int failed;

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void fail(const char *what)
{
    fprintf(stderr, "FAIL: %s\n", what);
    atomic_store(&failed, 1);
}

static void record(uint64_t *s)
{
    uint32_t d = (uint32_t)(rnd(s) % NDOM);
    uint32_t port = 1 + (uint32_t)(rnd(s) % (NPORT - 1));
    uint32_t v = port % NVCPU;
    struct xe_domain *dom = &doms[d];
    int rc;
    if (rnd(s) & 1) {
        xe_vcpu_set_upcall_pending(&dom->si, v, 0);
        xe_2l_take_pending_sel(&dom->si, v);
        xe_2l_clear_pending(&dom->si, port);
        rc = xe_evtchn_send(dom, port);
    } else {
        xe_poll_begin(dom, v);
        rc = xe_poll_wake(dom, v);
    }
    if (rc < 0)
        fail("an event call failed");
    if (rc & XE_EV_HOOKS)
        atomic_fetch_add(&made[d][v], 1);
}

static void *producer(void *arg)
{
    uint64_t s = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15u + 1;
    for (;;) {
        pthread_barrier_wait(&round_start);
        if (atomic_load(&stop))
            return NULL;
        for (uint64_t k = 1 + rnd(&s) % 64; k; k--)
            record(&s);
        atomic_fetch_sub(&producing, 1);
        pthread_barrier_wait(&round_end);
    }
}

static size_t take_once(void)
{
    uint32_t out[3 * CAP];
    size_t n = xe_hv_take_hooks(&hv, out, CAP);
    if (n > CAP)
        fail("take returned more records than its cap");
    for (size_t i = 0; i < n; i++) {
        uint32_t d = out[3 * i];
        if (d >= NDOM) {
            fail("a record names no domain");
            continue;
        }
        for (size_t j = 0; j < i; j++)
            if (out[3 * j] == d)
                fail("one take listed a domain twice");
        for (uint32_t v = 0; v < NVCPU; v++)
            atomic_fetch_add(&reported[d][v], ((out[3 * i + 1] >> v) & 1) + ((out[3 * i + 2] >> v) & 1));
        if ((out[3 * i + 1] | out[3 * i + 2]) >> NVCPU)
            fail("bits of a vCPU that does not exist");
    }
    return n;
}

static void *consumer(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_barrier_wait(&round_start);
        if (atomic_load(&stop))
            return NULL;
        while (atomic_load(&producing))
            take_once();
        pthread_barrier_wait(&round_end);
    }
}

/* Between rounds (everyone parked): drain the list; nothing may be left behind. */
static void drain_and_check(void)
{
    while (take_once() == CAP)
        ;
    if (take_once() != 0 || hv.owed != NULL)
        fail("the list is not empty after the final takes");
    for (uint32_t d = 0; d < NDOM; d++) {
        if (doms[d].kicked || doms[d].woken)
            fail("bits left behind: a domain was not on the list");
        if (doms[d].hooks_owed)
            fail("hooks_owed left set");
    }
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    unsigned seed = argc > 2 ? (unsigned)atoi(argv[2]) : 1;
    if (seconds <= 0 || seconds > 600) {
        fprintf(stderr, "usage: stress_hooks [seconds] [seed]\n");
        return 2;
    }
    for (uint32_t d = 0; d < NDOM; d++) {
        struct xe_domain *dom = &doms[d];
        if (xe_shinfo_init(&dom->si, pages[d], XE_LAYOUT_X86_64))
            return 1;
        dom->chans = chans[d];
        dom->hv = &hv;
        dom->max_ports = dom->valid_evtchns = NPORT;
        dom->nr_vcpus = NVCPU;
        dom->domid = (uint16_t)d;
        for (uint32_t p = 1; p < NPORT; p++) {
            chans[d][p].notify_vcpu = (uint16_t)(p % NVCPU);
            chans[d][p].state = XE_ECS_IPI;
        }
        chans[d][0].state = XE_ECS_RESERVED;
        hv.domains[d] = dom;
    }
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    pthread_barrier_init(&round_start, NULL, PRODUCERS + CONSUMERS + 1);
    pthread_barrier_init(&round_end, NULL, PRODUCERS + CONSUMERS + 1);
    for (uintptr_t i = 0; i < PRODUCERS; i++)
        pthread_create(&prod[i], NULL, producer, (void *)(i + seed * 17));
    for (int i = 0; i < CONSUMERS; i++)
        pthread_create(&cons[i], NULL, consumer, NULL);
    double end = now_s() + seconds;
    uint64_t rounds = 0;
    while (now_s() < end && !atomic_load(&failed)) {
        atomic_store(&producing, PRODUCERS);
        pthread_barrier_wait(&round_start);
        pthread_barrier_wait(&round_end);
        drain_and_check();
        rounds++;
    }
    atomic_store(&stop, 1);
    pthread_barrier_wait(&round_start);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(prod[i], NULL);
    for (int i = 0; i < CONSUMERS; i++)
        pthread_join(cons[i], NULL);
    drain_and_check();
    uint64_t total_made = 0, total_reported = 0;
    for (uint32_t d = 0; d < NDOM; d++) {
        for (uint32_t v = 0; v < NVCPU; v++) {
            uint64_t m = atomic_load(&made[d][v]), r = atomic_load(&reported[d][v]);
            total_made += m;
            total_reported += r;
            if (r > 2 * m)   /* a kick may end a poll too: two bits for one event */
                fail("more bits reported than events recorded");
            if (m && !r)
                fail("events recorded, none reported");
        }
    }
    printf("rounds=%llu made=%llu reported=%llu\n", (unsigned long long)rounds,
           (unsigned long long)total_made, (unsigned long long)total_reported);
    if (atomic_load(&failed))
        return 1;
    if (!total_made || !total_reported) {
        fprintf(stderr, "FAIL: nothing happened\n");
        return 1;
    }
    printf("OK\n");
    return 0;
}
