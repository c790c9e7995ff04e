/*
 * Multi-threaded stress test of the 2-level data path (spec xen-hypervisor.md §7.1, §8;
 * guest-side.md §1.3-§1.5, §1.7) on one shared_info, through the xe_ functions only.
 *
 *   - S sender threads: xe_2l_set_pending(vcpu 0, random port), stamping a global sequence
 *     number into last_send[port] *before* the call;
 *   - one masker thread: masks a small batch of random ports, waits a little, then unmasks
 *     them with xe_2l_unmask(vcpu 0) (the EVTCHNOP_unmask rule: re-raise a pending port);
 *   - one consumer thread, a Linux-style upcall: if upcall_pending: clear it, take the
 *     selector, scan the selected words for pending & ~mask ports; for each, clear its
 *     pending bit THEN count it as seen, stamping last_seen[port] (clear-before-handle).
 *
 * The run is cut into short rounds (0.5-5 ms): at the end of each, senders and masker park,
 * every port is unmasked, the consumer drains until quiescent and the main thread checks
 * for lost events (so an event lost in a round is not hidden by a later raise of another
 * port in the same word). At the very end the same drain is done once more.
 * Checks (any failure: message on stderr, exit 1):
 *   1. no lost event: for every port ever sent, last_seen > last_send, and no port is left
 *      pending once drained;
 *   2. exact accounting: per port, handled == number of set_pending calls that returned
 *      XE_SET_NEWLY (every 0->1 of a pending bit is one NEWLY, every 1->0 is one handling);
 *      total KICK results (set_pending + unmask) == upcalls the consumer took;
 *   3. quiescent end state: no pending or masked bit, selector 0, upcall_pending 0, the
 *      other vCPUs' vcpu_info untouched, nothing written outside sizeof(shared_info).
 *
 * Usage: stress_2l [seconds=3] [x86_64|x86_32] [seed=1] [senders=3]
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xenevtchn.h"
#include "stress_util.h"

#define PAGE 4096u
#define MAX_PORTS 4096u
#define MAX_SENDERS 16
#define GUARD 0xC3u
#define MASK_BATCH 8

static struct xe_shinfo si;
static unsigned char *region; /* guard page | shared_info page | guard page */
static unsigned char *page;
static uint32_t nr_ports, word_bits;
static size_t shinfo_size;

static _Atomic uint64_t seq;
static _Atomic uint64_t last_send[MAX_PORTS];
static _Atomic uint64_t last_seen[MAX_PORTS];
static _Atomic uint64_t sends[MAX_PORTS];
static _Atomic uint64_t newly[MAX_PORTS];
static _Atomic uint64_t seen[MAX_PORTS];

static _Atomic uint64_t kicks_send, kicks_unmask, upcalls, masks, unmasks;
static _Atomic int stop_senders, stop_masker, final_drain;
/* Rounds: the main thread pauses senders and masker, unmasks every port, waits for the
 * consumer to drain and checks for lost events; an event lost near the end of a round is
 * then not hidden by a later raise of another port of the same word. */
static _Atomic uint64_t drain_req, drain_done;

/* A quarter of the picks hit 8 hot ports straddling the first word boundary (races between
 * sender, masker and consumer on the very same bits), a quarter the first two words
 * (contention on a selector bit, coalescing), the rest every port of the layout. */
static uint32_t pick_port(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    switch (r & 3) {
    case 0:
        return word_bits - 4 + (uint32_t)((r >> 2) % 8);
    case 1:
        return (uint32_t)((r >> 2) % (2u * word_bits));
    default:
        return (uint32_t)((r >> 2) % nr_ports);
    }
}

struct sender_arg {
    uint64_t seed;
    uint64_t calls;
};

static void *sender(void *argp)
{
    struct sender_arg *arg = argp;
    uint64_t rng = arg->seed | 1;
    uint64_t n = 0;
    while (!atomic_load(&stop_senders)) {
        if (park_if_paused(&stop_senders))
            continue;
        uint32_t port = pick_port(&rng);
        uint64_t s = atomic_fetch_add(&seq, 1) + 1;
        store_max(&last_send[port], s);
        atomic_fetch_add(&sends[port], 1);
        int rc = xe_2l_set_pending(&si, 0, port);
        if (rc & ~(XE_SET_NEWLY | XE_SET_KICK)) {
            fprintf(stderr, "FAIL: xe_2l_set_pending returned unknown flags %d\n", rc);
            exit(1);
        }
        if ((rc & XE_SET_KICK) && !(rc & XE_SET_NEWLY)) {
            fprintf(stderr, "FAIL: set_pending returned KICK without NEWLY (port %u)\n", port);
            exit(1);
        }
        if (rc & XE_SET_NEWLY)
            atomic_fetch_add(&newly[port], 1);
        if (rc & XE_SET_KICK)
            atomic_fetch_add(&kicks_send, 1);
        if ((++n & 63) == 0)
            sched_yield();
    }
    arg->calls = n;
    return NULL;
}

static void *masker(void *argp)
{
    uint64_t rng = *(uint64_t *)argp | 1;
    uint32_t batch[MASK_BATCH];
    while (!atomic_load(&stop_masker)) {
        if (park_if_paused(&stop_masker))
            continue;
        unsigned k = 1 + (unsigned)(rng_next(&rng) % MASK_BATCH);
        for (unsigned i = 0; i < k; i++) {
            batch[i] = pick_port(&rng);
            xe_2l_mask(&si, batch[i]);
            atomic_fetch_add(&masks, 1);
        }
        unsigned spin = (unsigned)(rng_next(&rng) % 256);
        for (volatile unsigned i = 0; i < spin; i++)
            ;
        if ((rng_next(&rng) & 15) == 0)
            sched_yield();
        for (unsigned i = 0; i < k; i++) {
            int rc = xe_2l_unmask(&si, 0, batch[i]);
            if (rc & ~XE_SET_KICK) {
                fprintf(stderr, "FAIL: xe_2l_unmask returned unexpected flags %d\n", rc);
                exit(1);
            }
            if (rc & XE_SET_KICK)
                atomic_fetch_add(&kicks_unmask, 1);
            atomic_fetch_add(&unmasks, 1);
        }
    }
    return NULL;
}

static void handle_word(uint32_t w)
{
    for (uint32_t b = 0; b < word_bits; b++) {
        uint32_t port = w * word_bits + b;
        if (!xe_2l_is_pending(&si, port) || xe_2l_is_masked(&si, port))
            continue;
        /* clear-before-handle: a re-raise from now on is a new event */
        xe_2l_clear_pending(&si, port);
        uint64_t t = atomic_fetch_add(&seq, 1) + 1;
        atomic_store(&last_seen[port], t);
        atomic_fetch_add(&seen[port], 1);
    }
}

static void *consumer(void *argp)
{
    (void)argp;
    for (;;) {
        int fin = atomic_load(&final_drain);
        uint64_t req = atomic_load(&drain_req);
        if (xe_vcpu_upcall_pending(&si, 0)) {
            xe_vcpu_set_upcall_pending(&si, 0, 0);
            atomic_fetch_add(&upcalls, 1);
            uint64_t sel = xe_2l_take_pending_sel(&si, 0);
            if (word_bits < 64 && (sel >> word_bits)) {
                fprintf(stderr, "FAIL: selector 0x%" PRIx64 " has bits past word %u\n", sel,
                        word_bits - 1);
                exit(1);
            }
            while (sel) {
                uint32_t w = (uint32_t)__builtin_ctzll(sel);
                sel &= sel - 1;
                handle_word(w);
            }
            continue;
        }
        /* fin / req were read before upcall_pending was seen clear: every raise happened
         * before they were set, and its upcall has been consumed and handled above. */
        if (req != atomic_load(&drain_done))
            atomic_store(&drain_done, req);
        if (fin)
            break;
        sched_yield();
    }
    return NULL;
}

static void unmask_all(void)
{
    for (uint32_t p = 0; p < nr_ports; p++) {
        int rc = xe_2l_unmask(&si, 0, p);
        if (rc & XE_SET_KICK)
            atomic_fetch_add(&kicks_unmask, 1);
    }
}

/* At a quiescent point (senders and masker parked, all unmasked, consumer drained): ports
 * sent since they were last handled, or still pending. */
static uint64_t count_lost(uint64_t round)
{
    uint64_t lost = 0;
    for (uint32_t p = 0; p < nr_ports; p++) {
        uint64_t ls = atomic_load(&last_send[p]), lh = atomic_load(&last_seen[p]);
        int pend = xe_2l_is_pending(&si, p);
        if ((atomic_load(&sends[p]) && lh <= ls) || pend) {
            if (lost < 20)
                fprintf(stderr,
                        "LOST EVENT (round %" PRIu64 "): port %u last sent at #%" PRIu64
                        ", last handled at #%" PRIu64 " (pending=%d masked=%d sel=0x%" PRIx64
                        " upcall_pending=%u)\n",
                        round, p, ls, lh, pend, xe_2l_is_masked(&si, p),
                        xe_vcpu_pending_sel(&si, 0), xe_vcpu_upcall_pending(&si, 0));
            lost++;
        }
    }
    return lost;
}

static int check_bytes(const unsigned char *p, size_t n, unsigned char want, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != want) {
            fprintf(stderr, "FAIL: %s: byte %zu is 0x%02x, expected 0x%02x\n", what, i, p[i], want);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 3.0;
    const char *layout_name = argc > 2 ? argv[2] : "x86_64";
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 1;
    int nsend = argc > 4 ? atoi(argv[4]) : 3;
    int layout = stress_layout(layout_name);

    if (layout < 0) {
        fprintf(stderr, "usage: %s [seconds] [x86_64|x86_32] [seed] [senders]\n", argv[0]);
        return 2;
    }
    if (!(seconds > 0) || nsend < 1 || nsend > MAX_SENDERS) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    region = aligned_alloc(PAGE, 3 * PAGE);
    if (!region) {
        perror("aligned_alloc");
        return 2;
    }
    memset(region, GUARD, 3 * PAGE);
    page = region + PAGE;
    if (xe_shinfo_init(&si, page, layout) != 0) {
        fprintf(stderr, "FAIL: xe_shinfo_init refused an aligned page\n");
        return 1;
    }
    shinfo_size = xe_shinfo_size(layout);
    word_bits = si.word_bits;
    nr_ports = si.nr_ports;
    if (word_bits != (layout == XE_LAYOUT_X86_64 ? 64u : 32u) || nr_ports != word_bits * word_bits ||
        shinfo_size != (layout == XE_LAYOUT_X86_64 ? 3136u : 2344u)) {
        fprintf(stderr, "FAIL: geometry word_bits=%u nr_ports=%u size=%zu\n", word_bits, nr_ports,
                shinfo_size);
        return 1;
    }
    xe_shinfo_reset(&si);
    xe_vcpu_set_upcall_mask(&si, 0, 0);

    pthread_t ts[MAX_SENDERS], tm, tc;
    struct sender_arg sargs[MAX_SENDERS];
    uint64_t mseed = seed * 0x9E3779B97F4A7C15ULL + 7;
    if (pthread_create(&tc, NULL, consumer, NULL) || pthread_create(&tm, NULL, masker, &mseed)) {
        fprintf(stderr, "pthread_create failed\n");
        return 2;
    }
    for (int i = 0; i < nsend; i++) {
        sargs[i].seed = seed * 0x100000001B3ULL + (uint64_t)i * 0xD1B54A32D192ED03ULL + 1;
        sargs[i].calls = 0;
        if (pthread_create(&ts[i], NULL, sender, &sargs[i])) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    }

    /* Rounds of 0.5-5 ms: run, pause, unmask all, drain, check. */
    uint64_t mrng = seed * 0xA0761D6478BD642FULL + 3;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t rounds = 0, round_lost = 0;
    for (;;) {
        struct timespec d = {0, 500 * 1000 + (long)(rng_next(&mrng) % (4500 * 1000))};
        while (nanosleep(&d, &d) == -1 && errno == EINTR)
            ;
        atomic_store(&paused, 1);
        while (atomic_load(&parked) != nsend + 1)
            sched_yield();
        unmask_all();
        uint64_t r = ++rounds;
        atomic_store(&drain_req, r);
        while (atomic_load(&drain_done) != r)
            sched_yield();
        round_lost = count_lost(r);
        clock_gettime(CLOCK_MONOTONIC, &now);
        double elapsed = (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
        if (round_lost || elapsed >= seconds)
            break;
        atomic_store(&paused, 0);
    }

    atomic_store(&stop_senders, 1);
    atomic_store(&stop_masker, 1);
    for (int i = 0; i < nsend; i++)
        pthread_join(ts[i], NULL);
    pthread_join(tm, NULL);
    /* remove every mask; pending ports whose edge was swallowed are re-raised now */
    unmask_all();
    atomic_store(&final_drain, 1);
    pthread_join(tc, NULL);

    /* ---- checks ---- */
    int fail = 0;
    /* lost = sent since last handled, or still pending, after the final drain */
    uint64_t lost = round_lost ? 0 : count_lost(rounds + 1);
    uint64_t tot_send = 0, tot_newly = 0, tot_seen = 0, ports_sent = 0;
    for (uint32_t p = 0; p < nr_ports; p++) {
        uint64_t ns = atomic_load(&sends[p]), nn = atomic_load(&newly[p]), nh = atomic_load(&seen[p]);
        tot_send += ns;
        tot_newly += nn;
        tot_seen += nh;
        if (ns)
            ports_sent++;
        if (nn != nh) {
            if (fail < 20)
                fprintf(stderr,
                        "FAIL: port %u: %" PRIu64 " set_pending returned NEWLY but %" PRIu64
                        " handlings\n",
                        p, nn, nh);
            fail++;
        }
        if (nn > ns) {
            fprintf(stderr, "FAIL: port %u: more NEWLY (%" PRIu64 ") than sends (%" PRIu64 ")\n", p,
                    nn, ns);
            fail++;
        }
        if (xe_2l_is_masked(&si, p)) {
            if (fail < 20)
                fprintf(stderr, "FAIL: port %u still masked after unmasking everything\n", p);
            fail++;
        }
    }
    uint64_t kicks = atomic_load(&kicks_send) + atomic_load(&kicks_unmask);
    if (kicks != atomic_load(&upcalls)) {
        fprintf(stderr, "FAIL: %" PRIu64 " KICK results but the consumer took %" PRIu64 " upcalls\n",
                kicks, atomic_load(&upcalls));
        fail++;
    }
    if (xe_vcpu_upcall_pending(&si, 0) || xe_2l_take_pending_sel(&si, 0)) {
        fprintf(stderr, "FAIL: vCPU 0 not quiescent at the end\n");
        fail++;
    }
    for (uint32_t v = 1; v < 32; v++) {
        const unsigned char *vi = page + 64 * v;
        for (unsigned i = 0; i < 64; i++) {
            if (vi[i] != (i == 1 ? 1 : 0)) {
                fprintf(stderr, "FAIL: vcpu_info[%u] byte %u is 0x%02x\n", v, i, vi[i]);
                fail++;
                break;
            }
        }
    }
    fail += check_bytes(region, PAGE, GUARD, "guard page before shared_info");
    fail += check_bytes(page + shinfo_size, PAGE - shinfo_size, GUARD, "bytes past sizeof(shared_info)");
    fail += check_bytes(region + 2 * PAGE, PAGE, GUARD, "guard page after shared_info");

    uint64_t calls = 0;
    for (int i = 0; i < nsend; i++)
        calls += sargs[i].calls;
    printf("layout=%s seconds=%.2f rounds=%" PRIu64 " senders=%d sends=%" PRIu64 " ports_sent=%" PRIu64
           " newly=%" PRIu64 " seen=%" PRIu64 " kicks_send=%" PRIu64 " kicks_unmask=%" PRIu64
           " upcalls=%" PRIu64 " masks=%" PRIu64 " unmasks=%" PRIu64 " lost=%" PRIu64 "\n",
           layout_name, seconds, rounds, nsend, tot_send, ports_sent, tot_newly, tot_seen,
           atomic_load(&kicks_send), atomic_load(&kicks_unmask), atomic_load(&upcalls),
           atomic_load(&masks), atomic_load(&unmasks), lost);
    if (calls != tot_send) {
        fprintf(stderr, "FAIL: bookkeeping: %" PRIu64 " calls vs %" PRIu64 " sends\n", calls, tot_send);
        fail++;
    }
    if (tot_send == 0 || tot_seen == 0 || atomic_load(&upcalls) == 0) {
        fprintf(stderr, "FAIL: the run did nothing (no sends, handlings or upcalls)\n");
        fail++;
    }
    if (round_lost) {
        fprintf(stderr, "FAIL: %" PRIu64 " events lost at the end of round %" PRIu64 "\n",
                round_lost, rounds);
        lost = round_lost;
    }
    if (lost || fail) {
        fprintf(stderr, "FAILED: %" PRIu64 " lost events, %d other failures\n", lost, fail);
        return 1;
    }
    printf("OK\n");
    free(region);
    return 0;
}
