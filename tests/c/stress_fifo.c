/*
 * Multi-threaded stress test of the FIFO data path (spec xen-hypervisor.md §9, §7.1, §10;
 * guest-side.md §1.10) on one domain with 2 vCPUs, through the public xe_ functions only.
 *
 * Setup: a domain in the FIFO ABI (xe_fifo_switch) with 8 event-array pages (8192 ports,
 * each page between guard pages), a control block per vCPU at an 8-aligned offset inside
 * its own page, ports 1..8191 bound as IPIs whose notify vCPU alternates (port & 1).
 *
 *   - S sender threads: xe_evtchn_send(random port), stamping a global sequence number into
 *     last_send[port] and counting the send *before* the call. With no pollers, the call
 *     reports XE_EV_HOOKS exactly when it kicked the port's notify vCPU (its upcall flag
 *     went 0 -> 1), so kicks are counted per vCPU;
 *   - one priority changer: writes chans[port].priority (0..15) at any time, as
 *     EVTCHNOP_set_priority may while events fly (a linked event stays where it is, the
 *     next link uses the new queue);
 *   - one masker: masks a batch of random ports in their event words (xe_fifo_mask), waits
 *     a little, then unmasks each with either the EVTCHNOP_unmask rule (xe_evtchn_unmask)
 *     or Linux's rule (xe_fifo_guest_unmask, then the hypercall when it returns 1);
 *   - one consumer per vCPU running Linux's upcall: if upcall_pending: clear it, then
 *     xe_fifo_scan_begin and xe_fifo_scan_next until -1, counting each returned port as
 *     handled (scan_next cleared its PENDING before returning it) and stamping
 *     last_seen[port] afterwards.
 *
 * The run is cut into short rounds (0.5-5 ms). At the end of each, senders, masker and
 * priority changer park (the masker with its batch unmasked), both consumers drain until
 * quiescent and the main thread checks the state; then every port is unmasked with the
 * EVTCHNOP_unmask rule, the consumers drain again and the state is checked again. Xen's
 * private tails are left as they are (possibly stale) and the next round runs on them.
 * Checks (any failure: message on stderr, exit 1):
 *   1. no lost event: at every quiescent point, every port sent since it was last handled
 *      has been handled again (last_seen > last_send), already before the unmask sweep
 *      (which must then raise nothing);
 *   2. every handling is explained: the port was sent at least once, it is handled on its
 *      notify vCPU only, and handled[port] <= sends[port] + hypercall unmasks[port]. (Not
 *      handled <= sends: an EVTCHNOP_unmask that saw PENDING can re-raise the event after
 *      the consumer handled it, a spurious but legal event, as in Xen; "excess" counts
 *      such handlings);
 *   3. exact kick accounting: per vCPU, the kicks reported by sends and unmasks equal the
 *      upcalls its consumer took, and xe_take_kicked shows exactly the vCPUs kicked since
 *      the previous quiescent point; no poller was ever woken;
 *   4. quiescent state: every event word is 0 (no PENDING, LINKED, MASKED, BUSY or LINK
 *      left), READY = 0 and every HEAD word 0 or a valid port in both control blocks, the
 *      consumers' private heads are 0, upcall_pending = 0, Xen's tails are 0 or valid ports
 *      and their locks free, each channel's last queue is (0, 0) or on its notify vCPU;
 *   5. nothing written elsewhere: guard pages around every event-array page and the
 *      shared_info page, the control-block pages outside the 72 bytes (and its reserved
 *      word), shared_info itself, the unused channels, vCPUs and domain fields.
 *
 * Usage: stress_fifo [seconds=3] [x86_64|x86_32] [seed=1] [senders=2]
 * (the layout is the shared_info's, which holds the upcall flags)
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
#define NR_PAGES 8u
#define NR_PORTS (NR_PAGES * XE_FIFO_WORDS_PER_PAGE)
#define NR_VCPUS 2u
#define NR_QUEUES XE_FIFO_MAX_QUEUES
#define MAX_SENDERS 16
#define GUARD 0xC3u
#define MASK_BATCH 8
#define DOMID 1
/* A drain or a park that takes this long is a hang (a lock never released, a consumer
 * looping), not a slow machine: report the state and fail instead of blocking forever. */
#define WATCHDOG_SECONDS 60.0

#define W_PENDING (UINT32_C(1) << XE_FIFO_PENDING)
#define W_MASKED (UINT32_C(1) << XE_FIFO_MASKED)
#define W_LINKED (UINT32_C(1) << XE_FIFO_LINKED)
#define W_BUSY (UINT32_C(1) << XE_FIFO_BUSY)

static struct xe_hv hv;
static struct xe_domain dom;
static struct xe_fifo fifo;
static struct xe_chan *chans;          /* XE_FIFO_NR_CHANNELS entries */
static unsigned char *shregion;        /* guard page | shared_info page | guard page */
static unsigned char *shsnap;          /* the shared_info region as set up */
static size_t shinfo_size;
static unsigned char *evregion;        /* guard | page 0 | guard | page 1 | ... | guard */
static uint32_t *evpage[NR_PAGES];
static unsigned char *cbregion;        /* guard | cb page 0 | guard | cb page 1 | guard */
static unsigned char *cbpage[NR_VCPUS];
static uint32_t cboff[NR_VCPUS];
static uint32_t *cb[NR_VCPUS];

static _Atomic uint64_t seq;
static _Atomic uint64_t last_send[NR_PORTS];
static _Atomic uint64_t last_seen[NR_PORTS];
static _Atomic uint64_t sends[NR_PORTS];
static _Atomic uint64_t handled[NR_PORTS];
static _Atomic uint64_t hunmasks[NR_PORTS];   /* EVTCHNOP_unmask calls (each may re-raise) */

static _Atomic uint64_t kicks_send[NR_VCPUS], kicks_unmask[NR_VCPUS], upcalls[NR_VCPUS];
static _Atomic uint64_t masks, unmasks, guest_local, prio_changes;
static uint64_t queue_moves;          /* ports whose last queue changed between two rounds */
static uint8_t prev_lastq[NR_PORTS];
static _Atomic int stop_senders, stop_others, final_drain;
static _Atomic uint64_t drain_req, drain_done[NR_VCPUS];
/* Published by each consumer with drain_done: its private heads and local READY. */
static _Atomic uint32_t priv_head[NR_VCPUS][NR_QUEUES];
static _Atomic uint32_t priv_ready[NR_VCPUS];

static void die(const char *msg)
{
    fprintf(stderr, "FAIL: %s\n", msg);
    exit(1);
}

static uint32_t notify_of(uint32_t port)
{
    return port & 1;
}

static uint32_t load_word(uint32_t port)
{
    uint32_t *w = xe_fifo_word(&dom, port);
    return w ? __atomic_load_n(w, __ATOMIC_SEQ_CST) : 0xFFFFFFFFu;
}

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A quarter of the picks hit 8 hot ports straddling the first page boundary (sender,
 * masker, priority changer and consumer on the very same words and queues), a quarter the
 * ports 1..63 (long chains on few queues), the rest every port 1..8191. */
static uint32_t pick_port(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    switch (r & 3) {
    case 0:
        return XE_FIFO_WORDS_PER_PAGE - 4 + (uint32_t)((r >> 2) % 8);
    case 1:
        return 1 + (uint32_t)((r >> 2) % 63);
    default:
        return 1 + (uint32_t)((r >> 2) % (NR_PORTS - 1));
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
        int rc = xe_evtchn_send(&dom, port);
        if (rc != 0 && rc != XE_EV_HOOKS) {
            fprintf(stderr, "FAIL: xe_evtchn_send(%u) returned %d\n", port, rc);
            exit(1);
        }
        if (rc == XE_EV_HOOKS)
            atomic_fetch_add(&kicks_send[notify_of(port)], 1);
        if ((++n & 63) == 0)
            sched_yield();
    }
    arg->calls = n;
    return NULL;
}

/* EVTCHNOP_unmask on `port`, counted before the call (it may re-raise a pending event). */
static void hyper_unmask(uint32_t port)
{
    atomic_fetch_add(&hunmasks[port], 1);
    int rc = xe_evtchn_unmask(&dom, port);
    if (rc != 0 && rc != XE_EV_HOOKS) {
        fprintf(stderr, "FAIL: xe_evtchn_unmask(%u) returned %d\n", port, rc);
        exit(1);
    }
    if (rc == XE_EV_HOOKS)
        atomic_fetch_add(&kicks_unmask[notify_of(port)], 1);
}

static void *masker(void *argp)
{
    uint64_t rng = *(uint64_t *)argp | 1;
    uint32_t batch[MASK_BATCH];
    while (!atomic_load(&stop_others)) {
        if (park_if_paused(&stop_others))
            continue;
        unsigned k = 1 + (unsigned)(rng_next(&rng) % MASK_BATCH);
        for (unsigned i = 0; i < k; i++) {
            batch[i] = pick_port(&rng);
            xe_fifo_mask(&dom, batch[i]);
            atomic_fetch_add(&masks, 1);
        }
        unsigned spin = (unsigned)(rng_next(&rng) % 256);
        for (volatile unsigned i = 0; i < spin; i++)
            ;
        if ((rng_next(&rng) & 15) == 0)
            sched_yield();
        for (unsigned i = 0; i < k; i++) {
            if (rng_next(&rng) & 1) {
                hyper_unmask(batch[i]);
            } else {
                /* Linux: clear MASKED locally unless PENDING; then Xen must link it. */
                int rc = xe_fifo_guest_unmask(&dom, batch[i]);
                if (rc == 0) {
                    atomic_fetch_add(&guest_local, 1);
                } else if (rc == 1) {
                    hyper_unmask(batch[i]);
                } else {
                    fprintf(stderr, "FAIL: xe_fifo_guest_unmask(%u) returned %d\n", batch[i], rc);
                    exit(1);
                }
            }
            atomic_fetch_add(&unmasks, 1);
        }
    }
    return NULL;
}

static void *prio_changer(void *argp)
{
    uint64_t rng = *(uint64_t *)argp | 1;
    uint64_t n = 0;
    while (!atomic_load(&stop_others)) {
        if (park_if_paused(&stop_others))
            continue;
        uint32_t port = pick_port(&rng);
        uint8_t prio = (uint8_t)(rng_next(&rng) % NR_QUEUES);
        __atomic_store_n(&chans[port].priority, prio, __ATOMIC_RELAXED);
        atomic_fetch_add(&prio_changes, 1);
        unsigned spin = (unsigned)(rng_next(&rng) % 64);
        for (volatile unsigned i = 0; i < spin; i++)
            ;
        if ((++n & 15) == 0)
            sched_yield();
    }
    return NULL;
}

static void handle(uint32_t v, int32_t p)
{
    if (p <= 0 || (uint32_t)p >= NR_PORTS) {
        fprintf(stderr, "FAIL: vCPU %u: xe_fifo_scan_next returned port %d\n", v, p);
        exit(1);
    }
    uint32_t port = (uint32_t)p;
    if (notify_of(port) != v) {
        fprintf(stderr, "FAIL: port %u (notify vCPU %u) handled on vCPU %u\n", port,
                notify_of(port), v);
        exit(1);
    }
    uint64_t n = atomic_fetch_add(&handled[port], 1) + 1;
    /* Every PENDING 0 -> 1 came from a send or an EVTCHNOP_unmask counted before it. */
    uint64_t ns = atomic_load(&sends[port]), nu = atomic_load(&hunmasks[port]);
    if (ns == 0 || n > ns + nu) {
        fprintf(stderr,
                "FAIL: port %u handled %" PRIu64 " times but only %" PRIu64 " sends and %" PRIu64
                " unmask hypercalls\n",
                port, n, ns, nu);
        exit(1);
    }
    atomic_store(&last_seen[port], atomic_fetch_add(&seq, 1) + 1);
}

static void *consumer(void *argp)
{
    uint32_t v = (uint32_t)(uintptr_t)argp;
    struct xe_fifo_scan scan;
    memset(&scan, 0, sizeof scan);
    scan.vcpu = v;
    for (;;) {
        int fin = atomic_load(&final_drain);
        uint64_t req = atomic_load(&drain_req);
        if (xe_vcpu_upcall_pending(&dom.si, v)) {
            xe_vcpu_set_upcall_pending(&dom.si, v, 0);
            atomic_fetch_add(&upcalls[v], 1);
            xe_fifo_scan_begin(&dom, &scan);
            int32_t port;
            while ((port = xe_fifo_scan_next(&dom, &scan)) >= 0)
                handle(v, port);
            continue;
        }
        /* fin / req were read before upcall_pending was seen clear: every raise happened
         * before they were set, and its upcall has been taken and drained above. */
        if (req != atomic_load(&drain_done[v])) {
            for (uint32_t q = 0; q < NR_QUEUES; q++)
                atomic_store(&priv_head[v][q], scan.head[q]);
            atomic_store(&priv_ready[v], scan.ready);
            atomic_store(&drain_done[v], req);
        }
        if (fin)
            break;
        sched_yield();
    }
    return NULL;
}

/* EVTCHNOP_unmask on every port at a quiescent point (not counted in hunmasks: every word
 * is clear then, so it cannot raise anything). */
static void unmask_sweep(void)
{
    for (uint32_t p = 1; p < NR_PORTS; p++) {
        int rc = xe_evtchn_unmask(&dom, p);
        if (rc != 0 && rc != XE_EV_HOOKS) {
            fprintf(stderr, "FAIL: xe_evtchn_unmask(%u) returned %d\n", p, rc);
            exit(1);
        }
        if (rc == XE_EV_HOOKS)
            atomic_fetch_add(&kicks_unmask[notify_of(p)], 1);
    }
}

static void dump_state(void)
{
    for (uint32_t v = 0; v < NR_VCPUS; v++) {
        fprintf(stderr, "vCPU %u: upcall_pending=%u READY=0x%x heads:", v,
                xe_vcpu_upcall_pending(&dom.si, v), __atomic_load_n(&cb[v][0], __ATOMIC_SEQ_CST));
        for (uint32_t q = 0; q < NR_QUEUES; q++)
            fprintf(stderr, " %u", __atomic_load_n(&cb[v][2 + q], __ATOMIC_SEQ_CST));
        fprintf(stderr, "\n  tails:");
        for (uint32_t q = 0; q < NR_QUEUES; q++)
            fprintf(stderr, " %u", __atomic_load_n(&fifo.vcpu[v].queue[q].tail, __ATOMIC_SEQ_CST));
        fprintf(stderr, "\n  locks:");
        for (uint32_t q = 0; q < NR_QUEUES; q++)
            fprintf(stderr, " %u", __atomic_load_n(&fifo.vcpu[v].queue[q].lock, __ATOMIC_SEQ_CST));
        fprintf(stderr, "\n");
    }
    unsigned shown = 0;
    for (uint32_t p = 0; p < NR_PORTS && shown < 20; p++) {
        uint32_t w = load_word(p);
        if (w) {
            fprintf(stderr, "  word[%u]=0x%08x\n", p, w);
            shown++;
        }
    }
}

/* Wait until *ip == iwant and up[v] == uwant for every vCPU (each when given); a hang is
 * reported with the queue state instead of blocking forever. */
static void wait_for(_Atomic int *ip, int iwant, _Atomic uint64_t *up, uint64_t uwant,
                     const char *what)
{
    double t0 = now_seconds();
    for (;;) {
        int done = ip ? atomic_load(ip) == iwant : 1;
        if (up) {
            for (uint32_t v = 0; v < NR_VCPUS; v++)
                done = done && atomic_load(&up[v]) == uwant;
        }
        if (done)
            return;
        if (now_seconds() - t0 > WATCHDOG_SECONDS) {
            fprintf(stderr, "FAIL: hang: %s did not finish in %.0f s\n", what, WATCHDOG_SECONDS);
            dump_state();
            exit(1);
        }
        sched_yield();
    }
}

/* Ask both consumers to finish what has been raised so far, and wait until they have. */
static void drain(void)
{
    uint64_t r = atomic_fetch_add(&drain_req, 1) + 1;
    wait_for(NULL, 0, drain_done, r, "draining the consumers");
}

static void describe_port(const char *what, uint64_t round, uint32_t p)
{
    uint32_t v = notify_of(p);
    uint32_t prio = __atomic_load_n(&chans[p].priority, __ATOMIC_SEQ_CST);
    fprintf(stderr,
            "%s (round %" PRIu64 "): port %u word=0x%08x vcpu=%u prio=%u lastq=(%u,%u) sent=%" PRIu64
            " handled=%" PRIu64 " last sent #%" PRIu64 " last handled #%" PRIu64
            " READY=0x%x head=%u tail=%u upcall_pending=%u\n",
            what, round, p, load_word(p), v, prio,
            __atomic_load_n(&chans[p].last_vcpu, __ATOMIC_SEQ_CST),
            __atomic_load_n(&chans[p].last_priority, __ATOMIC_SEQ_CST), atomic_load(&sends[p]),
            atomic_load(&handled[p]), atomic_load(&last_send[p]), atomic_load(&last_seen[p]),
            __atomic_load_n(&cb[v][0], __ATOMIC_SEQ_CST),
            __atomic_load_n(&cb[v][2 + prio], __ATOMIC_SEQ_CST), fifo.vcpu[v].queue[prio].tail,
            xe_vcpu_upcall_pending(&dom.si, v));
}

/* At a quiescent point (senders, masker and priority changer parked, every port unmasked,
 * both consumers drained): returns the number of lost events; other failures go to *fail. */
static uint64_t prev_kicks[NR_VCPUS];

static uint64_t check_quiescent(uint64_t round, const char *when, int *fail)
{
    uint64_t lost = 0;
    char label[96];
    for (uint32_t p = 1; p < NR_PORTS; p++) {
        uint64_t ls = atomic_load(&last_send[p]), lh = atomic_load(&last_seen[p]);
        if (atomic_load(&sends[p]) && lh <= ls) {
            if (lost < 20) {
                snprintf(label, sizeof label, "LOST EVENT (%s)", when);
                describe_port(label, round, p);
            }
            lost++;
        }
    }
    for (uint32_t p = 0; p < NR_PORTS; p++) {
        uint32_t w = load_word(p);
        if (w != 0) {
            if (*fail < 20) {
                snprintf(label, sizeof label, "FAIL: event word not clear (%s)", when);
                describe_port(label, round, p);
            }
            (*fail)++;
        }
        if (p == 0)
            continue;
        uint32_t lv = __atomic_load_n(&chans[p].last_vcpu, __ATOMIC_SEQ_CST);
        uint32_t lp = __atomic_load_n(&chans[p].last_priority, __ATOMIC_SEQ_CST);
        if ((uint8_t)(lv << 4 | lp) != prev_lastq[p]) {
            queue_moves++;
            prev_lastq[p] = (uint8_t)(lv << 4 | lp);
        }
        if ((lv != 0 && lv != notify_of(p)) || lp >= NR_QUEUES) {
            if (*fail < 20)
                describe_port("FAIL: last queue not on the notify vCPU", round, p);
            (*fail)++;
        }
        if (chans[p].state != XE_ECS_IPI || chans[p].notify_vcpu != notify_of(p) ||
            chans[p].xen_consumer || chans[p].fifo_pending || chans[p].user) {
            if (*fail < 20)
                describe_port("FAIL: channel fields changed", round, p);
            (*fail)++;
        }
    }
    uint32_t want_kicked = 0;
    for (uint32_t v = 0; v < NR_VCPUS; v++) {
        uint32_t ready = __atomic_load_n(&cb[v][0], __ATOMIC_SEQ_CST);
        uint32_t rsvd = __atomic_load_n(&cb[v][1], __ATOMIC_SEQ_CST);
        if (ready || rsvd || atomic_load(&priv_ready[v])) {
            fprintf(stderr, "FAIL (round %" PRIu64 "): vCPU %u READY=0x%x reserved=0x%x local ready=0x%x\n",
                    round, v, ready, rsvd, atomic_load(&priv_ready[v]));
            (*fail)++;
        }
        if (xe_vcpu_upcall_pending(&dom.si, v)) {
            fprintf(stderr, "FAIL (round %" PRIu64 "): vCPU %u upcall_pending left set\n", round, v);
            (*fail)++;
        }
        for (uint32_t q = 0; q < NR_QUEUES; q++) {
            uint32_t head = __atomic_load_n(&cb[v][2 + q], __ATOMIC_SEQ_CST);
            uint32_t ph = atomic_load(&priv_head[v][q]);
            uint32_t tail = fifo.vcpu[v].queue[q].tail;
            uint32_t lock = __atomic_load_n(&fifo.vcpu[v].queue[q].lock, __ATOMIC_SEQ_CST);
            if (head >= NR_PORTS || (head && notify_of(head) != v) || ph || tail >= NR_PORTS ||
                (tail && notify_of(tail) != v) || lock) {
                fprintf(stderr,
                        "FAIL (round %" PRIu64 "): vCPU %u queue %u: HEAD=%u private head=%u tail=%u lock=%u\n",
                        round, v, q, head, ph, tail, lock);
                (*fail)++;
            }
        }
        uint64_t k = atomic_load(&kicks_send[v]) + atomic_load(&kicks_unmask[v]);
        if (k != atomic_load(&upcalls[v])) {
            fprintf(stderr,
                    "FAIL (round %" PRIu64 "): vCPU %u: %" PRIu64 " kicks reported but %" PRIu64
                    " upcalls taken\n",
                    round, v, k, atomic_load(&upcalls[v]));
            (*fail)++;
        }
        if (k != prev_kicks[v])
            want_kicked |= UINT32_C(1) << v;
        prev_kicks[v] = k;
    }
    uint32_t kicked = xe_take_kicked(&dom), woken = xe_take_woken(&dom);
    if (kicked != want_kicked || woken || dom.poll_mask) {
        fprintf(stderr,
                "FAIL (round %" PRIu64 "): kicked=0x%x (expected 0x%x) woken=0x%x poll_mask=0x%x\n",
                round, kicked, want_kicked, woken, dom.poll_mask);
        (*fail)++;
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

static int check_zero(const void *p, size_t n, const char *what)
{
    return check_bytes(p, n, 0, what);
}

static void *alloc_pages(size_t n)
{
    unsigned char *r = aligned_alloc(PAGE, n * PAGE);
    if (!r) {
        perror("aligned_alloc");
        exit(2);
    }
    memset(r, GUARD, n * PAGE);
    return r;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 3.0;
    const char *layout_name = argc > 2 ? argv[2] : "x86_64";
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 1;
    int nsend = argc > 4 ? atoi(argv[4]) : 2;
    int layout = stress_layout(layout_name);

    if (layout < 0) {
        fprintf(stderr, "usage: %s [seconds] [x86_64|x86_32] [seed] [senders]\n", argv[0]);
        return 2;
    }
    if (!(seconds > 0) || nsend < 1 || nsend > MAX_SENDERS) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    /* shared_info: only the vCPUs' upcall flags are used by the FIFO ABI */
    shregion = alloc_pages(3);
    if (xe_shinfo_init(&dom.si, shregion + PAGE, layout) != 0)
        die("xe_shinfo_init refused an aligned page");
    shinfo_size = xe_shinfo_size(layout);
    xe_shinfo_reset(&dom.si);
    for (uint32_t v = 0; v < NR_VCPUS; v++)
        xe_vcpu_set_upcall_mask(&dom.si, v, 0);
    shsnap = malloc(3 * PAGE);
    if (!shsnap)
        die("malloc");
    memcpy(shsnap, shregion, 3 * PAGE);

    /* the port table: every port but 0 an IPI, notify vCPUs alternating */
    chans = calloc(XE_FIFO_NR_CHANNELS, sizeof *chans);
    if (!chans)
        die("calloc");
    for (uint32_t p = 1; p < NR_PORTS; p++) {
        chans[p].state = XE_ECS_IPI;
        chans[p].notify_vcpu = (uint16_t)notify_of(p);
        chans[p].priority = XE_FIFO_PRIORITY_DEFAULT;
    }
    hv.domains[DOMID] = &dom;
    dom.hv = &hv;
    dom.domid = DOMID;
    dom.chans = chans;
    dom.max_ports = XE_FIFO_NR_CHANNELS;
    dom.valid_evtchns = NR_PORTS;
    dom.nr_vcpus = NR_VCPUS;

    /* control blocks: vCPU 0 at the last possible offset, vCPU 1 at a seeded one */
    cbregion = alloc_pages(2 * NR_VCPUS + 1);
    uint64_t srng = seed * 0x9E3779B97F4A7C15ULL + 11;
    for (uint32_t v = 0; v < NR_VCPUS; v++) {
        cbpage[v] = cbregion + (2 * v + 1) * PAGE;
        cboff[v] = v == 0 ? PAGE - XE_FIFO_CB_SIZE : 8 * (uint32_t)(rng_next(&srng) % 504);
        memset(cbpage[v] + cboff[v], 0, XE_FIFO_CB_SIZE);
        cb[v] = (uint32_t *)(cbpage[v] + cboff[v]);
        fifo.vcpu[v].control_block = cb[v];
    }
    xe_fifo_switch(&dom, &fifo);
    if (dom.abi != XE_ABI_FIFO || dom.fifo != &fifo)
        die("xe_fifo_switch did not switch the domain");

    /* the event array: 8 pages, each between guard pages */
    evregion = alloc_pages(2 * NR_PAGES + 1);
    for (uint32_t i = 0; i < NR_PAGES; i++) {
        evpage[i] = (uint32_t *)(evregion + (2 * i + 1) * PAGE);
        memset(evpage[i], 0, PAGE);
        int first = xe_fifo_add_page(&dom, evpage[i]);
        if (first != (int)(i * XE_FIFO_WORDS_PER_PAGE)) {
            fprintf(stderr, "FAIL: xe_fifo_add_page returned %d for page %u\n", first, i);
            return 1;
        }
        if (xe_fifo_raise_deferred(&dom, (uint32_t)first, (uint32_t)first + XE_FIFO_WORDS_PER_PAGE))
            die("xe_fifo_raise_deferred raised something with nothing deferred");
    }
    if (fifo.num_evtchns != NR_PORTS)
        die("num_evtchns after adding the pages");
    for (uint32_t p = 0; p < NR_PORTS; p++) {
        if (xe_fifo_word(&dom, p) != evpage[p / XE_FIFO_WORDS_PER_PAGE] + p % XE_FIFO_WORDS_PER_PAGE)
            die("xe_fifo_word maps a port to the wrong word");
    }
    if (xe_fifo_word(&dom, NR_PORTS) != NULL)
        die("xe_fifo_word gives a word past num_evtchns");

    pthread_t ts[MAX_SENDERS], tm, tp, tc[NR_VCPUS];
    struct sender_arg sargs[MAX_SENDERS];
    uint64_t mseed = seed * 0x9E3779B97F4A7C15ULL + 7;
    uint64_t pseed = seed * 0xBF58476D1CE4E5B9ULL + 5;
    for (uint32_t v = 0; v < NR_VCPUS; v++) {
        if (pthread_create(&tc[v], NULL, consumer, (void *)(uintptr_t)v)) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    }
    if (pthread_create(&tm, NULL, masker, &mseed) || pthread_create(&tp, NULL, prio_changer, &pseed)) {
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
    double t0 = now_seconds();
    uint64_t rounds = 0, round_lost = 0;
    int fail = 0;
    for (;;) {
        struct timespec d = {0, 500 * 1000 + (long)(rng_next(&mrng) % (4500 * 1000))};
        while (nanosleep(&d, &d) == -1 && errno == EINTR)
            ;
        atomic_store(&paused, 1);
        wait_for(&parked, nsend + 2, NULL, 0, "parking the senders, masker and priority changer");
        uint64_t r = ++rounds;
        /* The masker parks with its batch unmasked, so nothing is masked now: every event
         * still pending must be linked where its consumer finds it. Check that first, so an
         * event left pending but unlinked is caught before the sweep would relink it. */
        drain();
        round_lost = check_quiescent(r, "before the unmask sweep", &fail);
        if (round_lost || fail)
            break;
        /* Then the EVTCHNOP_unmask rule on every port: with every word clear it must raise
         * nothing (so it is not counted as a possible re-raise), and the next round runs
         * on whatever tails Xen keeps. */
        uint64_t k0 = atomic_load(&kicks_unmask[0]) + atomic_load(&kicks_unmask[1]);
        unmask_sweep();
        drain();
        round_lost = check_quiescent(r, "after the unmask sweep", &fail);
        if (atomic_load(&kicks_unmask[0]) + atomic_load(&kicks_unmask[1]) != k0) {
            fprintf(stderr, "FAIL (round %" PRIu64 "): the unmask sweep kicked a vCPU with nothing pending\n", r);
            fail++;
        }
        if (round_lost || fail || now_seconds() - t0 >= seconds)
            break;
        atomic_store(&paused, 0);
    }

    atomic_store(&stop_senders, 1);
    atomic_store(&stop_others, 1);
    for (int i = 0; i < nsend; i++)
        pthread_join(ts[i], NULL);
    pthread_join(tm, NULL);
    pthread_join(tp, NULL);
    atomic_store(&final_drain, 1);
    for (uint32_t v = 0; v < NR_VCPUS; v++)
        pthread_join(tc[v], NULL);

    /* ---- checks ---- */
    uint64_t lost = round_lost;
    uint64_t tot_send = 0, tot_handled = 0, tot_hunmask = 0, excess = 0, ports_sent = 0;
    for (uint32_t p = 1; p < NR_PORTS; p++) {
        uint64_t ns = atomic_load(&sends[p]), nh = atomic_load(&handled[p]);
        uint64_t nu = atomic_load(&hunmasks[p]);
        tot_send += ns;
        tot_handled += nh;
        tot_hunmask += nu;
        if (ns)
            ports_sent++;
        if (nh > ns)
            excess += nh - ns;
        if (nh > ns + nu || (nh && !ns)) {
            if (fail < 20)
                fprintf(stderr,
                        "FAIL: port %u: %" PRIu64 " handlings, %" PRIu64 " sends, %" PRIu64
                        " unmask hypercalls\n",
                        p, nh, ns, nu);
            fail++;
        }
    }
    if (atomic_load(&sends[0]) || atomic_load(&handled[0]))
        fail += 1;
    /* nothing written outside the pages, the control blocks and the fields the data path owns */
    fail += check_bytes(shregion, PAGE, GUARD, "guard page before shared_info");
    fail += check_bytes(shregion + 2 * PAGE, PAGE, GUARD, "guard page after shared_info");
    if (memcmp(shregion + PAGE, shsnap + PAGE, PAGE)) {
        for (size_t i = 0; i < PAGE; i++) {
            if (shregion[PAGE + i] != shsnap[PAGE + i]) {
                fprintf(stderr, "FAIL: shared_info byte %zu is 0x%02x, was 0x%02x (size %zu)\n", i,
                        shregion[PAGE + i], shsnap[PAGE + i], shinfo_size);
                break;
            }
        }
        fail++;
    }
    for (uint32_t i = 0; i <= NR_PAGES; i++)
        fail += check_bytes(evregion + 2 * i * PAGE, PAGE, GUARD, "guard page around the event array");
    for (uint32_t v = 0; v < NR_VCPUS; v++) {
        fail += check_bytes(cbregion + 2 * v * PAGE, PAGE, GUARD, "guard page around a control block");
        fail += check_bytes(cbpage[v], cboff[v], GUARD, "control-block page before the block");
        fail += check_bytes(cbpage[v] + cboff[v] + XE_FIFO_CB_SIZE, PAGE - cboff[v] - XE_FIFO_CB_SIZE,
                            GUARD, "control-block page after the block");
        if (fifo.vcpu[v].control_block != cb[v]) {
            fprintf(stderr, "FAIL: vCPU %u's control block pointer changed\n", v);
            fail++;
        }
    }
    fail += check_bytes(cbregion + 2 * NR_VCPUS * PAGE, PAGE, GUARD, "guard page after the control blocks");
    fail += check_zero(&fifo.vcpu[NR_VCPUS], sizeof fifo.vcpu - NR_VCPUS * sizeof fifo.vcpu[0],
                       "FIFO state of vCPUs that do not exist");
    fail += check_zero(&fifo.pages[NR_PAGES], sizeof fifo.pages - NR_PAGES * sizeof fifo.pages[0],
                       "event-array page slots not added");
    fail += check_zero(&chans[0], sizeof chans[0], "channel 0");
    fail += check_zero(&chans[NR_PORTS], (XE_FIFO_NR_CHANNELS - NR_PORTS) * sizeof chans[0],
                       "channels past valid_evtchns");
    for (uint32_t i = 0; i < NR_PAGES; i++) {
        if (fifo.pages[i] != evpage[i]) {
            fprintf(stderr, "FAIL: event-array page slot %u changed\n", i);
            fail++;
        }
    }
    if (fifo.num_evtchns != NR_PORTS || dom.max_ports != XE_FIFO_NR_CHANNELS ||
        dom.valid_evtchns != NR_PORTS || dom.nr_vcpus != NR_VCPUS || dom.abi != XE_ABI_FIFO ||
        dom.fifo != &fifo || dom.dying || dom.poll_mask || dom.kicked || dom.woken ||
        dom.chans != chans || dom.hv != &hv || hv.domains[DOMID] != &dom) {
        fprintf(stderr, "FAIL: domain fields changed\n");
        fail++;
    }
    fail += check_zero(dom.poll_evtchn, sizeof dom.poll_evtchn, "poll_evtchn");

    uint64_t calls = 0;
    for (int i = 0; i < nsend; i++)
        calls += sargs[i].calls;
    uint64_t ks = 0, ku = 0, up = 0;
    for (uint32_t v = 0; v < NR_VCPUS; v++) {
        ks += atomic_load(&kicks_send[v]);
        ku += atomic_load(&kicks_unmask[v]);
        up += atomic_load(&upcalls[v]);
    }
    printf("layout=%s seconds=%.2f rounds=%" PRIu64 " senders=%d sends=%" PRIu64 " ports_sent=%" PRIu64
           " handled=%" PRIu64 " excess=%" PRIu64 " kicks_send=%" PRIu64 " kicks_unmask=%" PRIu64
           " upcalls=%" PRIu64 " upcalls_v0=%" PRIu64 " upcalls_v1=%" PRIu64 " masks=%" PRIu64
           " unmasks=%" PRIu64 " guest_local=%" PRIu64 " unmask_hypercalls=%" PRIu64
           " prio_changes=%" PRIu64 " queue_moves=%" PRIu64
           " lost=%" PRIu64 "\n",
           layout_name, seconds, rounds, nsend, tot_send, ports_sent, tot_handled, excess, ks, ku,
           up, atomic_load(&upcalls[0]), atomic_load(&upcalls[1]), atomic_load(&masks),
           atomic_load(&unmasks), atomic_load(&guest_local), tot_hunmask,
           atomic_load(&prio_changes), queue_moves, lost);
    if (calls != tot_send) {
        fprintf(stderr, "FAIL: bookkeeping: %" PRIu64 " calls vs %" PRIu64 " sends\n", calls, tot_send);
        fail++;
    }
    if (tot_send == 0 || tot_handled == 0 || atomic_load(&upcalls[0]) == 0 ||
        atomic_load(&upcalls[1]) == 0 || atomic_load(&masks) == 0 || atomic_load(&prio_changes) == 0) {
        fprintf(stderr, "FAIL: the run did nothing (no sends, handlings, upcalls, masks or priority changes)\n");
        fail++;
    }
    if (lost)
        fprintf(stderr, "FAIL: %" PRIu64 " events lost at the end of round %" PRIu64 "\n", lost, rounds);
    if (lost || fail) {
        fprintf(stderr, "FAILED: %" PRIu64 " lost events, %d other failures\n", lost, fail);
        return 1;
    }
    printf("OK\n");
    free(shsnap);
    free(shregion);
    free(cbregion);
    free(evregion);
    free(chans);
    return 0;
}
