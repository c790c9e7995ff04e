/*
 * Two vCPUs running Mini-OS's upcall scan (xe_minios_scan_begin/next) on one shared_info
 * at once, while sender threads raise ports notifying either vCPU.
 *
 * Mini-OS handles every pending, unmasked port of a word its vCPU's selector names,
 * whichever vCPU the port notifies, so both vCPUs' scans read the same bits. A port must
 * be returned only by the scan whose atomic clear took its pending bit: otherwise two
 * vCPUs handle one event (issue 14 item 2). The ports sit in word 0, which is selected
 * on both vCPUs nearly all the time.
 *
 *   - S sender threads: xe_2l_set_pending(notify vCPU of the port, random port), counting
 *     per port the calls that returned XE_SET_NEWLY (each is one 0 -> 1 edge);
 *   - 2 consumer threads, one per vCPU: while their upcall flag is set: clear it, begin a
 *     scan, count every port the scan returns.
 *
 * The senders make a fixed number of calls each (bounded work, not time). Then the
 * consumers stop, the main thread drains both vCPUs once more, and checks:
 *   1. per port: handled == NEWLY edges (no event lost, none handled twice);
 *   2. nothing is left pending, no selector bit and no upcall flag set.
 *
 * Usage: stress_minios [calls per sender=400000] [x86_64|x86_32] [seed=1] [senders=2]
 * Prints a `layout=... key=value` statistics line, then OK; exit 1 on a failed check,
 * 2 on bad arguments.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>

#include "xenevtchn.h"
#include "stress_util.h"

#define PAGE 4096u
#define NR_VCPUS 2u
#define MAX_SENDERS 8
#define NR_PORTS 16u           /* one word: every scan reads the same bits */

static struct xe_domain dom;
static _Alignas(4096) unsigned char page[PAGE];
static struct xe_chan chans[NR_PORTS];
static struct xe_scan scans[NR_VCPUS];

static _Atomic uint64_t newly[NR_PORTS], handled[NR_PORTS], sends, upcalls;
/* Edges raised and not yet handled: senders wait while there are more than MAX_OUT, so
 * the consumers scan while the senders raise (not after them), both on the same words. */
static _Atomic int64_t outstanding;
#define MAX_OUT 6
static _Atomic int stop_consumers;
static long calls_per_sender;

struct sender_arg {
    uint64_t seed;
};

static uint32_t notify_of(uint32_t port)
{
    return port % NR_VCPUS;
}

static void *sender(void *p)
{
    struct sender_arg *a = p;
    uint64_t rng = a->seed;
    for (long i = 0; i < calls_per_sender; i++) {
        while (atomic_load(&outstanding) > MAX_OUT && !atomic_load(&stop_consumers))
            sched_yield();
        uint32_t port = 1 + (uint32_t)(rng_next(&rng) % (NR_PORTS - 1));
        int f = xe_2l_set_pending(&dom.si, notify_of(port), port);
        if (f & XE_SET_NEWLY) {
            atomic_fetch_add(&newly[port], 1);
            atomic_fetch_add(&outstanding, 1);
        }
        atomic_fetch_add(&sends, 1);
    }
    return NULL;
}

/* One upcall of vCPU v: passes while its flag is set (Mini-OS's loop). */
static void upcall(uint32_t v)
{
    while (xe_vcpu_upcall_pending(&dom.si, v)) {
        xe_vcpu_set_upcall_pending(&dom.si, v, 0);
        atomic_fetch_add(&upcalls, 1);
        xe_minios_scan_begin(&dom, &scans[v]);
        int32_t port;
        while ((port = xe_minios_scan_next(&dom, &scans[v])) >= 0) {
            atomic_fetch_add(&handled[port], 1);
            atomic_fetch_sub(&outstanding, 1);
        }
    }
}

static void *consumer(void *p)
{
    uint32_t v = (uint32_t)(uintptr_t)p;
    while (!atomic_load(&stop_consumers)) {
        if (!xe_vcpu_upcall_pending(&dom.si, v))
            sched_yield();          /* nothing to do: let a sender run */
        upcall(v);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    calls_per_sender = argc > 1 ? strtol(argv[1], NULL, 0) : 400000;
    const char *layout_name = argc > 2 ? argv[2] : "x86_64";
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 1;
    int nsend = argc > 4 ? atoi(argv[4]) : 2;
    int layout = stress_layout(layout_name);

    if (layout < 0) {
        fprintf(stderr, "usage: %s [calls] [x86_64|x86_32] [seed] [senders]\n", argv[0]);
        return 2;
    }
    if (calls_per_sender < 1 || nsend < 1 || nsend > MAX_SENDERS) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    if (xe_shinfo_init(&dom.si, page, layout) != 0) {
        fprintf(stderr, "xe_shinfo_init refused an aligned page\n");
        return 1;
    }
    xe_shinfo_reset(&dom.si);
    for (uint32_t v = 0; v < NR_VCPUS; v++) {
        xe_vcpu_set_upcall_mask(&dom.si, v, 0);
        scans[v].vcpu = v;
    }
    for (uint32_t p = 1; p < NR_PORTS; p++) {
        chans[p].state = XE_ECS_IPI;
        chans[p].notify_vcpu = (uint16_t)notify_of(p);
    }
    dom.chans = chans;
    dom.max_ports = NR_PORTS;
    dom.valid_evtchns = NR_PORTS;
    dom.nr_vcpus = NR_VCPUS;

    pthread_t tc[NR_VCPUS], ts[MAX_SENDERS];
    struct sender_arg sargs[MAX_SENDERS];
    for (uint32_t v = 0; v < NR_VCPUS; v++)
        if (pthread_create(&tc[v], NULL, consumer, (void *)(uintptr_t)v)) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    for (int i = 0; i < nsend; i++) {
        sargs[i].seed = seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0xD1B54A32D192ED03ULL + 1;
        if (pthread_create(&ts[i], NULL, sender, &sargs[i])) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    }
    for (int i = 0; i < nsend; i++)
        pthread_join(ts[i], NULL);
    atomic_store(&stop_consumers, 1);
    for (uint32_t v = 0; v < NR_VCPUS; v++)
        pthread_join(tc[v], NULL);
    for (uint32_t v = 0; v < NR_VCPUS; v++)
        upcall(v);

    int fail = 0;
    uint64_t tot_newly = 0, tot_handled = 0, doubled = 0, lost = 0;
    for (uint32_t p = 0; p < NR_PORTS; p++) {
        uint64_t n = atomic_load(&newly[p]), h = atomic_load(&handled[p]);
        tot_newly += n;
        tot_handled += h;
        if (h > n)
            doubled += h - n;
        if (h < n)
            lost += n - h;
        if (h != n && fail++ < 10)
            fprintf(stderr, "FAIL: port %u: %" PRIu64 " edges, handled %" PRIu64 " times\n", p, n, h);
        if (xe_2l_is_pending(&dom.si, p)) {
            fprintf(stderr, "FAIL: port %u still pending after the final drain\n", p);
            fail++;
        }
    }
    for (uint32_t v = 0; v < NR_VCPUS; v++)
        if (xe_vcpu_upcall_pending(&dom.si, v) || xe_vcpu_pending_sel(&dom.si, v)) {
            fprintf(stderr, "FAIL: vCPU %u left with its upcall flag or selector set\n", v);
            fail++;
        }
    printf("layout=%s sends=%" PRIu64 " newly=%" PRIu64 " handled=%" PRIu64 " doubled=%" PRIu64
           " lost=%" PRIu64 " upcalls=%" PRIu64 "\n",
           layout_name, atomic_load(&sends), tot_newly, tot_handled, doubled, lost,
           atomic_load(&upcalls));
    if (fail)
        return 1;
    puts("OK");
    return 0;
}
