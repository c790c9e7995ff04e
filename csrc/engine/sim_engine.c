/*
 * The scenario engine in C: the model of xenevtchn/simulate.py, action for action.
 *
 * Each static function below is named after the method of simulate.py's Simulation that
 * it mirrors, and makes the same data-path calls, random draws and queue insertions in
 * the same order: the two engines are kept equal by tests/test_engine_differential.py.
 * Only the public xe_sim_* functions are exported; everything else is static.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim_engine.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF   /* uniform() must round as Python does: no fused a + b * c */
#endif

/* The model's costs (simulate.py), in simulated nanoseconds. */
#define SEND_NS 100
#define HANDLER_NS 400
#define UPCALL_LATENCY_LO 500
#define UPCALL_LATENCY_HI 3000
#define WAKE_LATENCY_NS 1000
#define NAPI_DELAY_LO 2000
#define NAPI_DELAY_HI 6000
#define LOCK_HOLD_MEAN_NS 10000
#define POLL_TIMEOUT_NS 50000
#define SPIN_RETRY_NS 1000
#define VIRQ_TIMER_NR 0
#define HOOK_RECORDS 64

#define NONE32 UINT32_MAX

/* ---- the random generator (xenevtchn/simrng.py) ------------------------------------- */

struct rng { uint64_t s[4]; };

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t rng_next(struct rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

static inline double rng_random(struct rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static inline uint64_t rng_below(struct rng *r, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)rng_next(r) * n) >> 64);
}

static inline int64_t rng_randint(struct rng *r, int64_t a, int64_t b)
{
    return a + (int64_t)rng_below(r, (uint64_t)(b - a + 1));
}

static inline double rng_uniform(struct rng *r, double a, double b)
{
    double u = rng_random(r);
    double span = b - a;
    double scaled = span * u;
    return a + scaled;
}

/* ---- the latency histogram (xenevtchn/latency.py) ------------------------------------ */

static inline uint32_t hist_index(uint64_t v)
{
    uint64_t w = v | 2047;
    uint32_t bits = 64 - (uint32_t)__builtin_clzll(w);
    uint32_t b = bits - 11;
    return ((b + 1) << 10) + (uint32_t)(v >> b) - 1024;
}

/* ---- tables ------------------------------------------------------------------------- */

enum ev_type {
    EV_TICK, EV_RUN_ON, EV_SEND_NOW, EV_DEVICE_FIRES, EV_UPCALL, EV_RESUME, EV_NOTHING
};

enum task { T_ISSUE, T_RELEASE, T_NAPI };

enum send_mode { DO_SEND, DO_PIRQ, DO_VIRQ };

/* One queued action: (t, seq) orders it, as simulate.py's heap entries. */
struct event {
    int64_t t;
    uint64_t seq;
    uint32_t a, b, c;
    uint8_t type, task, mode, _pad;
};

struct deferred { uint32_t task, a, b; };

struct port {
    struct xe_domain *d;
    int64_t raised_at;
    uint64_t tally[4];          /* sent, delivered, coalesced, masked */
    uint32_t dom, port, arg;
    uint8_t kind, handler;
};

struct vcpu {
    struct xe_scan *scan;
    struct xe_fifo_scan *fscan; /* its FIFO consumer (Linux's private heads), or NULL */
    int64_t upcall_at, busy_until;
    uint64_t upcalls, kicks, polls, woken;
    uint64_t lock_id;           /* the lock it waits for (0: none) */
    uint64_t timer_seq;         /* its armed poll timer (0: none) */
    uint32_t dom, id, timer, resched, kicker;
    uint32_t lock_holder, lock_ring;
    uint8_t has_upcall_at, in_upcall, lock_released, _pad;
    struct deferred *dq;        /* deferred tasks (a ring buffer) */
    uint32_t dq_head, dq_len, dq_cap;
    int64_t *timeline;          /* handler start times, when recorded */
    size_t tl_len, tl_cap;
};

struct dom {
    struct xe_domain *d;
    uint32_t first_vcpu, nr_vcpus;
    int32_t *port_index;        /* port number -> model port, -1 */
    uint32_t nr_index;
    uint64_t sent_from;
    int kernel;
};

struct inflight { int64_t done; uint64_t seq; uint32_t ring; int64_t issued; };

struct device {
    double service_lo, service_hi, think_lo, think_hi;
    int64_t busy_until;
    struct inflight *heap;
    uint32_t len, cap;
    uint32_t port, depth, pirq_port;
    int napi;
};

struct fifo64 { int64_t *buf; uint32_t head, len, cap; };

struct ring {
    struct fifo64 requests, responses;
    uint64_t completed;
    uint64_t notify_mark;
    uint32_t dev, guest, gv, front, back;
    uint8_t napi_busy;
};

struct timer { int64_t deadline; uint32_t domid, vcpu; uint64_t seq; uint32_t vidx; };

/* Tracing only: a port's label (JSON text) and the sends not yet taken (flow sources). */
struct tflow { int64_t t; uint32_t pid, tid; };
struct tport { char *label; uint32_t label_len; struct tflow *flows; size_t nflows, cap; };

struct xe_sim {
    struct rng rng;
    int64_t now, vt, period;
    double ipi_p, lock_p;
    uint64_t sent, limit, seq, hv_seq, lock_seq, notify_epoch;
    uint64_t consumed, requests_done, request_ns, actions;
    uint64_t lat_count, lat_sum, lat_max;
    struct event *q; size_t qlen, qcap;
    struct timer *tq; size_t tlen, tcap;
    struct dom *doms; uint32_t ndoms;
    struct vcpu *vcpus; uint32_t nvcpus;
    struct port *ports; uint32_t nports;
    struct device *devs; uint32_t ndevs;
    struct ring *rings; uint32_t nrings;
    int32_t *domid_index;       /* domid -> domain index, -1 */
    uint32_t *notify_list;      /* scratch of _on_device_irq */
    uint64_t *hist;
    uint32_t hooks[3 * HOOK_RECORDS];
    uint32_t *hook_recs; size_t hook_cap;
    int started, err, timeline;
    const char *errwhat;
    /* the trace (when tracing): JSON text waiting for the caller, flows, poll intervals */
    int tracing;
    char *tb; size_t tb_len, tb_cap, tb_flush;
    uint64_t tr_events, tr_flow;
    uint32_t tr_handled;        /* handler calls of the running do_upcall */
    struct tport *tports;       /* per model port */
    int64_t *blocked_since;     /* per vCPU: blocked in poll since (-1: not) */
};

/* ---- errors and growable buffers ---------------------------------------------------- */

static void fail(struct xe_sim *s, int err, const char *what)
{
    if (!s->err) {
        s->err = err < 0 ? err : -err;
        s->errwhat = what;
    }
}

/* buf grown to hold need items of size bytes (cap updated), or NULL (buf untouched). */
static void *grow_to(void *buf, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return buf;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *p = realloc(buf, n * size);
    if (p)
        *cap = n;
    return p;
}

static void fifo_push(struct xe_sim *s, struct fifo64 *f, int64_t v)
{
    if (f->len == f->cap) {
        size_t cap = f->cap ? (size_t)f->cap * 2 : 8;
        int64_t *p = malloc(cap * sizeof *p);
        if (!p) {
            fail(s, ENOMEM, "out of memory (ring queue)");
            return;
        }
        for (uint32_t k = 0; k < f->len; k++)
            p[k] = f->buf[(f->head + k) % f->cap];
        free(f->buf);
        f->buf = p;
        f->head = 0;
        f->cap = (uint32_t)cap;
    }
    f->buf[(f->head + f->len) % f->cap] = v;
    f->len++;
}

static int64_t fifo_pop(struct fifo64 *f)
{
    int64_t v = f->buf[f->head];
    f->head = (f->head + 1) % f->cap;
    f->len--;
    return v;
}

/* ---- the action queue: a 4-ary heap on (t, seq) ------------------------------------- */

static inline int ev_less(const struct event *a, const struct event *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void at(struct xe_sim *s, int64_t t, uint8_t type, uint32_t a, uint32_t b, uint32_t c,
               uint8_t task, uint8_t mode)
{
    struct event e = { .t = t, .seq = ++s->seq, .a = a, .b = b, .c = c, .type = type,
                       .task = task, .mode = mode };
    if (s->qlen == s->qcap) {
        void *p = grow_to(s->q, &s->qcap, s->qlen + 1, sizeof *s->q);
        if (!p) {
            fail(s, ENOMEM, "out of memory (action queue)");
            return;
        }
        s->q = p;
    }
    size_t i = s->qlen++;
    while (i) {
        size_t parent = (i - 1) / 4;
        if (!ev_less(&e, &s->q[parent]))
            break;
        s->q[i] = s->q[parent];
        i = parent;
    }
    s->q[i] = e;
}

static struct event pop(struct xe_sim *s)
{
    struct event top = s->q[0];
    size_t n = --s->qlen;
    if (n) {
        struct event last = s->q[n];
        size_t i = 0;
        for (;;) {
            size_t c = 4 * i + 1;
            if (c >= n)
                break;
            size_t end = c + 4 < n ? c + 4 : n, best = c;
            for (size_t j = c + 1; j < end; j++)
                if (ev_less(&s->q[j], &s->q[best]))
                    best = j;
            if (!ev_less(&s->q[best], &last))
                break;
            s->q[i] = s->q[best];
            i = best;
        }
        s->q[i] = last;
    }
    return top;
}

/* A host device's requests in service: a binary heap on (done, seq). */
static inline int in_less(const struct inflight *a, const struct inflight *b)
{
    return a->done < b->done || (a->done == b->done && a->seq < b->seq);
}

static void inflight_push(struct xe_sim *s, struct device *dev, struct inflight x)
{
    if (dev->len == dev->cap) {
        size_t cap = dev->cap;
        void *p = grow_to(dev->heap, &cap, (size_t)dev->len + 1, sizeof *dev->heap);
        if (!p) {
            fail(s, ENOMEM, "out of memory (device queue)");
            return;
        }
        dev->heap = p;
        dev->cap = (uint32_t)cap;
    }
    uint32_t i = dev->len++;
    while (i) {
        uint32_t parent = (i - 1) / 2;
        if (!in_less(&x, &dev->heap[parent]))
            break;
        dev->heap[i] = dev->heap[parent];
        i = parent;
    }
    dev->heap[i] = x;
}

static struct inflight inflight_pop(struct device *dev)
{
    struct inflight top = dev->heap[0];
    uint32_t n = --dev->len;
    if (n) {
        struct inflight last = dev->heap[n];
        uint32_t i = 0;
        for (;;) {
            uint32_t c = 2 * i + 1;
            if (c >= n)
                break;
            if (c + 1 < n && in_less(&dev->heap[c + 1], &dev->heap[c]))
                c++;
            if (!in_less(&dev->heap[c], &last))
                break;
            dev->heap[i] = dev->heap[c];
            i = c;
        }
        dev->heap[i] = last;
    }
    return top;
}

/* The hypervisor's poll timers: a binary heap on (deadline, domid, vcpu, seq). */
static inline int tm_less(const struct timer *a, const struct timer *b)
{
    if (a->deadline != b->deadline)
        return a->deadline < b->deadline;
    if (a->domid != b->domid)
        return a->domid < b->domid;
    if (a->vcpu != b->vcpu)
        return a->vcpu < b->vcpu;
    return a->seq < b->seq;
}

static void timer_push(struct xe_sim *s, struct timer x)
{
    if (s->tlen == s->tcap) {
        void *p = grow_to(s->tq, &s->tcap, s->tlen + 1, sizeof *s->tq);
        if (!p) {
            fail(s, ENOMEM, "out of memory (poll timers)");
            return;
        }
        s->tq = p;
    }
    size_t i = s->tlen++;
    while (i) {
        size_t parent = (i - 1) / 2;
        if (!tm_less(&x, &s->tq[parent]))
            break;
        s->tq[i] = s->tq[parent];
        i = parent;
    }
    s->tq[i] = x;
}

static struct timer timer_pop(struct xe_sim *s)
{
    struct timer top = s->tq[0];
    size_t n = --s->tlen;
    if (n) {
        struct timer last = s->tq[n];
        size_t i = 0;
        for (;;) {
            size_t c = 2 * i + 1;
            if (c >= n)
                break;
            if (c + 1 < n && tm_less(&s->tq[c + 1], &s->tq[c]))
                c++;
            if (!tm_less(&s->tq[c], &last))
                break;
            s->tq[i] = s->tq[c];
            i = c;
        }
        s->tq[i] = last;
    }
    return top;
}

/* ---- the trace: Chrome trace-event JSON, as xenevtchn/trace.py writes it ------------- */

#define XEN_TRACE_PID (0x7FF2u + 1u)   /* trace.py: pid_of(XEN_PID) */
#define TIMER_TID_BASE 100u              /* simulate.py: a vCPU's timer track, 100 + index */
#define PUT(p, lit) (memcpy((p), (lit), sizeof(lit) - 1), (p) + sizeof(lit) - 1)

static const char DIGIT_PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static char *put_u64(char *p, uint64_t v)
{
    uint32_t n = 1;
    for (uint64_t p10 = 10; n < 20 && v >= p10; p10 *= 10)
        n++;
    char *q = p + n;
    while (v >= 100) {
        uint32_t r = (uint32_t)(v % 100);
        v /= 100;
        q -= 2;
        q[0] = DIGIT_PAIRS[2 * r];
        q[1] = DIGIT_PAIRS[2 * r + 1];
    }
    if (v >= 10) {
        q[-2] = DIGIT_PAIRS[2 * v];
        q[-1] = DIGIT_PAIRS[2 * v + 1];
    } else {
        q[-1] = (char)('0' + v);
    }
    return p + n;
}

/* ns as microseconds with at most three decimals and at least one (1500 -> 1.5). */
static char *put_us(char *p, int64_t ns)
{
    uint64_t v = (uint64_t)ns;
    if (ns < 0) {
        *p++ = '-';
        v = 0 - v;
    }
    uint32_t r = (uint32_t)(v % 1000);
    p = put_u64(p, v / 1000);
    *p++ = '.';
    *p++ = (char)('0' + r / 100);
    if (r % 100) {
        *p++ = (char)('0' + r / 10 % 10);
        if (r % 10)
            *p++ = (char)('0' + r % 10);
    }
    return p;
}

/* Room for need more bytes at the end of the trace buffer, or NULL (out of memory). */
static char *tr_room(struct xe_sim *s, size_t need)
{
    if (s->tb_cap - s->tb_len < need) {
        void *p = grow_to(s->tb, &s->tb_cap, s->tb_len + need, 1);
        if (!p) {
            fail(s, ENOMEM, "out of memory (trace buffer)");
            return NULL;
        }
        s->tb = p;
    }
    return s->tb + s->tb_len;
}

static void tr_done(struct xe_sim *s, char *end)
{
    s->tb_len = (size_t)(end - s->tb);
    s->tr_events++;
}

static uint32_t dom_pid(const struct xe_sim *s, uint32_t di)
{
    return s->doms[di].d->domid + 1;
}

/* The head of an X event up to its dur: name is JSON text, cat a plain word. */
static char *tr_x(char *p, const char *name, size_t nlen, const char *cat, uint32_t pid,
                  uint32_t tid, int64_t t0, int64_t t1)
{
    p = PUT(p, ",\n{\"ph\":\"X\",\"name\":");
    memcpy(p, name, nlen);
    p += nlen;
    p = PUT(p, ",\"cat\":\"");
    size_t clen = strlen(cat);
    memcpy(p, cat, clen);
    p += clen;
    p = PUT(p, "\",\"pid\":");
    p = put_u64(p, pid);
    p = PUT(p, ",\"tid\":");
    p = put_u64(p, tid);
    p = PUT(p, ",\"ts\":");
    p = put_us(p, t0);
    p = PUT(p, ",\"dur\":");
    return put_us(p, t1 - t0);
}

/* An X event whose name is `prefix N suffix` and that has no args. */
static void tr_x_num(struct xe_sim *s, const char *prefix, uint64_t n, const char *suffix,
                     const char *cat, uint32_t pid, uint32_t tid, int64_t t0, int64_t t1)
{
    char name[96], *q = name;
    *q++ = '"';
    size_t k = strlen(prefix);
    memcpy(q, prefix, k);
    q = put_u64(q + k, n);
    k = strlen(suffix);
    memcpy(q, suffix, k);
    q += k;
    *q++ = '"';
    char *p = tr_room(s, 256);
    if (!p)
        return;
    p = tr_x(p, name, (size_t)(q - name), cat, pid, tid, t0, t1);
    *p++ = '}';
    tr_done(s, p);
}

/* An i (instant, thread-scoped) event; name is `prefix N` or `prefix` when n < 0. */
static void tr_instant(struct xe_sim *s, const char *prefix, int64_t n, const char *cat,
                       uint32_t pid, uint32_t tid, int64_t t)
{
    char *p = tr_room(s, 256);
    if (!p)
        return;
    p = PUT(p, ",\n{\"ph\":\"i\",\"s\":\"t\",\"name\":\"");
    size_t k = strlen(prefix);
    memcpy(p, prefix, k);
    p += k;
    if (n >= 0) {
        *p++ = ' ';
        p = put_u64(p, (uint64_t)n);
    }
    p = PUT(p, "\",\"cat\":\"");
    k = strlen(cat);
    memcpy(p, cat, k);
    p += k;
    p = PUT(p, "\",\"pid\":");
    p = put_u64(p, pid);
    p = PUT(p, ",\"tid\":");
    p = put_u64(p, tid);
    p = PUT(p, ",\"ts\":");
    p = put_us(p, t);
    *p++ = '}';
    tr_done(s, p);
}

/* One flow arrow (s then f) from each send not yet taken at port pi to (pid, tid, t). */
static void tr_flows(struct xe_sim *s, uint32_t pi, uint32_t pid, uint32_t tid, int64_t t)
{
    struct tport *tp = &s->tports[pi];
    for (size_t k = 0; k < tp->nflows && !s->err; k++) {
        const struct tflow *f = &tp->flows[k];
        char *p = tr_room(s, 320);
        if (!p)
            break;
        uint64_t id = ++s->tr_flow;
        p = PUT(p, ",\n{\"ph\":\"s\",\"name\":\"event\",\"cat\":\"flow\",\"id\":");
        p = put_u64(p, id);
        p = PUT(p, ",\"pid\":");
        p = put_u64(p, f->pid);
        p = PUT(p, ",\"tid\":");
        p = put_u64(p, f->tid);
        p = PUT(p, ",\"ts\":");
        p = put_us(p, f->t);
        *p++ = '}';
        tr_done(s, p);
        p = PUT(p, ",\n{\"ph\":\"f\",\"bp\":\"e\",\"name\":\"event\",\"cat\":\"flow\",\"id\":");
        p = put_u64(p, id);
        p = PUT(p, ",\"pid\":");
        p = put_u64(p, pid);
        p = PUT(p, ",\"tid\":");
        p = put_u64(p, tid);
        p = PUT(p, ",\"ts\":");
        p = put_us(p, t);
        *p++ = '}';
        tr_done(s, p);
    }
    tp->nflows = 0;
}

static const char *const SEND_NAME[4] = {
    "\"send interdomain\"", "\"send virq\"", "\"send ipi\"", "\"send pirq\""
};

/* Simulation._send_now's slice: the send on the sender's track, and a flow source. */
static void tr_send(struct xe_sim *s, uint32_t target, uint8_t mode, uint32_t sender, int64_t t,
                    int was_pending, int was_masked)
{
    const struct port *p = &s->ports[target];
    struct tport *tp = &s->tports[target];
    uint32_t pid, tid;
    if (mode == DO_SEND) {
        pid = dom_pid(s, s->vcpus[sender].dom);
        tid = s->vcpus[sender].id;
    } else if (mode == DO_PIRQ) {
        pid = XEN_TRACE_PID;
        tid = p->arg + 1;   /* simulate.py: a host device's track is 1 + its index */
    } else {
        pid = XEN_TRACE_PID;
        tid = TIMER_TID_BASE + sender;
    }
    char *o = tr_room(s, 320 + tp->label_len);
    if (!o)
        return;
    const char *name = SEND_NAME[p->kind & 3];
    o = tr_x(o, name, strlen(name), "send", pid, tid, t, t + SEND_NS);
    o = PUT(o, ",\"args\":{\"to\":\"d");
    o = put_u64(o, p->d->domid);
    *o++ = ':';
    o = put_u64(o, p->port);
    o = PUT(o, "\",\"port\":");
    memcpy(o, tp->label, tp->label_len);
    o += tp->label_len;
    if (was_pending)
        o = PUT(o, ",\"result\":\"coalesced\"}}");
    else if (was_masked)
        o = PUT(o, ",\"result\":\"masked\"}}");
    else
        o = PUT(o, ",\"result\":\"raised\"}}");
    tr_done(s, o);
    if (tp->nflows == tp->cap) {
        void *f = grow_to(tp->flows, &tp->cap, tp->nflows + 1, sizeof *tp->flows);
        if (!f) {
            fail(s, ENOMEM, "out of memory (trace flows)");
            return;
        }
        tp->flows = f;
    }
    tp->flows[tp->nflows++] = (struct tflow){ .t = t, .pid = pid, .tid = tid };
}

/* ---- the model ------------------------------------------------------------------------ */

static void send(struct xe_sim *s, uint32_t target, uint8_t mode, uint32_t sender, uint32_t lport);
static void run_task(struct xe_sim *s, uint32_t task, uint32_t a, uint32_t b);
static void wait_lock(struct xe_sim *s, uint32_t vi);

static inline struct xe_domain *vdom(struct xe_sim *s, const struct vcpu *vs)
{
    return s->doms[vs->dom].d;
}

/* Whether the domain uses the FIFO ABI now (EVTCHNOP_init_control switched it). */
static inline int is_fifo(struct xe_domain *d)
{
    return __atomic_load_n(&d->abi, __ATOMIC_ACQUIRE) == XE_ABI_FIFO;
}

/* The port's pending and mask bits, as the model reads them before a send: the 2-level
 * bitmaps of shared_info, or a FIFO domain's event word. */
static int port_pending(struct xe_domain *d, uint32_t port)
{
    if (is_fifo(d))
        return xe_evtchn_is_pending(d, port);
    return port < d->si.nr_ports && xe_2l_is_pending(&d->si, port);
}

static int port_masked(struct xe_domain *d, uint32_t port)
{
    if (is_fifo(d))
        return xe_evtchn_is_masked(d, port);
    return port >= d->si.nr_ports || xe_2l_is_masked(&d->si, port);
}

static inline int64_t us(struct xe_sim *s, double lo, double hi)
{
    return (int64_t)(rng_uniform(&s->rng, lo, hi) * 1000.0);
}

static void schedule_upcall(struct xe_sim *s, uint32_t vi, int64_t t)
{
    struct vcpu *vs = &s->vcpus[vi];
    if (!vs->has_upcall_at) {
        vs->upcall_at = t > vs->busy_until ? t : vs->busy_until;
        vs->has_upcall_at = 1;
        at(s, vs->upcall_at, EV_UPCALL, vi, 0, 0, 0, 0);
    }
}

/* Simulation._on_kick */
static void on_kick(struct xe_sim *s, uint32_t vi)
{
    struct vcpu *vs = &s->vcpus[vi];
    vs->kicks++;
    if (s->tracing)
        tr_instant(s, "kick", -1, "kick", dom_pid(s, vs->dom), vs->id, s->vt);
    if (!vs->in_upcall)
        schedule_upcall(s, vi, s->vt + rng_randint(&s->rng, UPCALL_LATENCY_LO, UPCALL_LATENCY_HI));
}

/* Simulation._on_wake */
static void on_wake(struct xe_sim *s, uint32_t vi)
{
    struct vcpu *vs = &s->vcpus[vi];
    vs->woken++;
    if (s->tracing && s->blocked_since[vi] >= 0) {
        tr_x_num(s, "poll kicker port ", s->ports[vs->kicker].port, "", "poll",
                 dom_pid(s, vs->dom), vs->id, s->blocked_since[vi], s->vt);
        s->blocked_since[vi] = -1;
    }
    at(s, s->vt + WAKE_LATENCY_NS, EV_RESUME, vi, 0, 0, 0, 0);
}

/* Hypervisor._after: the kicks and wake-ups the data path recorded, domain by domain in
 * creation order; per domain each kicked vCPU (with its own wake-up right after), then
 * the other wake-ups, in vCPU order. */
static void after(struct xe_sim *s, int flags)
{
    if (!flags)
        return;
    struct xe_hv *hv = s->doms[0].d->hv;
    size_t n = xe_hv_take_hooks(hv, s->hooks, HOOK_RECORDS);
    if (!n)
        return;
    size_t nrec = 0;
    for (;;) {
        void *p = grow_to(s->hook_recs, &s->hook_cap, 3 * (nrec + n), sizeof *s->hook_recs);
        if (!p) {
            fail(s, ENOMEM, "out of memory (hooks)");
            return;
        }
        s->hook_recs = p;
        memcpy(s->hook_recs + 3 * nrec, s->hooks, 3 * n * sizeof *s->hooks);
        nrec += n;
        if (n != HOOK_RECORDS)
            break;
        n = xe_hv_take_hooks(hv, s->hooks, HOOK_RECORDS);
    }
    /* Merge records of one domain, then order by creation (insertion sort: few). */
    uint32_t *r = s->hook_recs;
    size_t m = 0;
    for (size_t k = 0; k < nrec; k++) {
        uint32_t domid = r[3 * k];
        if (domid >= XE_NR_DOMIDS || s->domid_index[domid] < 0)
            continue;
        uint32_t di = (uint32_t)s->domid_index[domid];
        size_t j = 0;
        while (j < m && r[3 * j] != di)
            j++;
        if (j == m) {
            r[3 * m] = di;
            r[3 * m + 1] = r[3 * k + 1];
            r[3 * m + 2] = r[3 * k + 2];
            m++;
        } else {
            r[3 * j + 1] |= r[3 * k + 1];
            r[3 * j + 2] |= r[3 * k + 2];
        }
    }
    for (size_t k = 1; k < m; k++) {
        uint32_t a = r[3 * k], b = r[3 * k + 1], c = r[3 * k + 2];
        size_t j = k;
        while (j && r[3 * (j - 1)] > a) {
            r[3 * j] = r[3 * (j - 1)];
            r[3 * j + 1] = r[3 * (j - 1) + 1];
            r[3 * j + 2] = r[3 * (j - 1) + 2];
            j--;
        }
        r[3 * j] = a;
        r[3 * j + 1] = b;
        r[3 * j + 2] = c;
    }
    for (size_t k = 0; k < m; k++) {
        const struct dom *dm = &s->doms[r[3 * k]];
        uint32_t kicked = r[3 * k + 1], woken = r[3 * k + 2];
        while (kicked) {
            uint32_t v = (uint32_t)__builtin_ctz(kicked);
            kicked &= kicked - 1;
            if (v >= dm->nr_vcpus)
                continue;
            on_kick(s, dm->first_vcpu + v);
            if (woken >> v & 1) {
                on_wake(s, dm->first_vcpu + v);
                woken &= ~(UINT32_C(1) << v);
            }
        }
        while (woken) {
            uint32_t v = (uint32_t)__builtin_ctz(woken);
            woken &= woken - 1;
            if (v < dm->nr_vcpus)
                on_wake(s, dm->first_vcpu + v);
        }
    }
}

/* Hypervisor._fire_timers */
static void fire_timers(struct xe_sim *s)
{
    while (s->tlen && s->tq[0].deadline <= s->now) {
        struct timer t = timer_pop(s);
        struct vcpu *vs = &s->vcpus[t.vidx];
        if (vs->timer_seq != t.seq)
            continue;   /* re-armed since */
        vs->timer_seq = 0;
        after(s, xe_poll_wake(vdom(s, vs), vs->id));
    }
}

static void advance(struct xe_sim *s, int64_t ns)
{
    s->now += ns;
    fire_timers(s);
}

/* Simulation._deliver: the handler of do_upcall. */
static void deliver(struct xe_sim *s, uint32_t vi, int32_t port);

/* The guest's do_upcall(vcpu, handler): Linux (VIRQ_TIMER first, then the scan from the
 * fairness cursor) or Mini-OS, inside the vCPU's nesting count. */
static void do_upcall(struct xe_sim *s, uint32_t vi)
{
    struct vcpu *vs = &s->vcpus[vi];
    const struct dom *dm = &s->doms[vs->dom];
    struct xe_domain *d = dm->d;
    struct xe_scan *count = vs->scan;
    if (xe_upcall_enter(count))
        return;
    for (;;) {
        xe_upcall_pass_begin(count);
        xe_vcpu_set_upcall_pending(&d->si, vs->id, 0);
        int32_t port;
        if (is_fifo(d)) {   /* Linux's FIFO handle_events: by priority, one event at a time */
            if (!vs->fscan) {
                fail(s, ENOSYS, "a FIFO domain's vCPU has no FIFO consumer");
                xe_upcall_abort(count);
                return;
            }
            xe_fifo_scan_begin(d, vs->fscan);
            while (!s->err && (port = xe_fifo_scan_next(d, vs->fscan)) >= 0)
                deliver(s, vi, port);
            if (s->err)
                xe_fifo_scan_abort(d, vs->fscan);
        } else if (dm->kernel == XE_SIM_LINUX) {
            uint32_t timer = s->ports[vs->timer].port;
            if (timer) {
                port = xe_2l_take_timer(d, vs->id, timer);
                if (port >= 0)
                    deliver(s, vi, port);
            }
            xe_2l_scan_begin(d, count);
            while (!s->err && (port = xe_2l_scan_next(d, count)) >= 0)
                deliver(s, vi, port);
            xe_2l_scan_end(count);
        } else {
            xe_minios_scan_begin(d, count);
            while (!s->err && (port = xe_minios_scan_next(d, count)) >= 0)
                deliver(s, vi, port);
        }
        if (s->err) {
            xe_upcall_abort(count);
            return;
        }
        if (xe_upcall_leave(count, &d->si))
            return;
    }
}

/* Simulation._upcall */
static void upcall(struct xe_sim *s, uint32_t vi)
{
    struct vcpu *vs = &s->vcpus[vi];
    if (s->vt < vs->busy_until) {   /* finishing a hypercall: the upcall comes after */
        vs->upcall_at = vs->busy_until;
        at(s, vs->busy_until, EV_UPCALL, vi, 0, 0, 0, 0);
        return;
    }
    int64_t t = s->vt;
    vs->has_upcall_at = 0;
    vs->in_upcall = 1;
    s->tr_handled = 0;
    do_upcall(s, vi);
    vs->in_upcall = 0;
    vs->upcalls++;
    vs->busy_until = s->vt;
    if (s->tracing) {
        char *p = tr_room(s, 256);
        if (!p)
            return;
        p = tr_x(p, "\"upcall\"", 8, "upcall", dom_pid(s, vs->dom), vs->id, t,
                 s->vt > t + SEND_NS ? s->vt : t + SEND_NS);
        p = PUT(p, ",\"args\":{\"ports\":");
        p = put_u64(p, s->tr_handled);
        p = PUT(p, "}}");
        tr_done(s, p);
    }
}

/* Simulation._guest_set_flag */
static void guest_set_flag(struct xe_sim *s, uint32_t vi)
{
    struct vcpu *vs = &s->vcpus[vi];
    const struct xe_shinfo *si = &vdom(s, vs)->si;
    if (xe_vcpu_upcall_pending(si, vs->id) && !xe_vcpu_upcall_mask(si, vs->id) && !vs->in_upcall)
        schedule_upcall(s, vi, s->vt);
}

/* Simulation._run_on */
static void run_on(struct xe_sim *s, uint32_t vi, uint32_t task, uint32_t a, uint32_t b)
{
    struct vcpu *vs = &s->vcpus[vi];
    if (vs->lock_id) {
        if (vs->dq_len == vs->dq_cap) {
            size_t cap = vs->dq_cap ? (size_t)vs->dq_cap * 2 : 4;
            struct deferred *p = malloc(cap * sizeof *p);
            if (!p) {
                fail(s, ENOMEM, "out of memory (deferred tasks)");
                return;
            }
            for (uint32_t k = 0; k < vs->dq_len; k++)
                p[k] = vs->dq[(vs->dq_head + k) % vs->dq_cap];
            free(vs->dq);
            vs->dq = p;
            vs->dq_head = 0;
            vs->dq_cap = (uint32_t)cap;
        }
        vs->dq[(vs->dq_head + vs->dq_len) % vs->dq_cap] = (struct deferred){ task, a, b };
        vs->dq_len++;
        return;
    }
    if (s->vt < vs->busy_until) {
        at(s, vs->busy_until, EV_RUN_ON, vi, a, b, (uint8_t)task, 0);
        return;
    }
    run_task(s, task, a, b);
    if (s->vt > vs->busy_until)
        vs->busy_until = s->vt;
}

static void send_port(struct xe_sim *s, uint32_t vi, uint32_t lport, uint32_t target)
{
    send(s, target, DO_SEND, vi, lport);
}

/* Simulation._maybe_ipi */
static void maybe_ipi(struct xe_sim *s, uint32_t vi)
{
    struct vcpu *vs = &s->vcpus[vi];
    const struct dom *dm = &s->doms[vs->dom];
    uint32_t nv = dm->nr_vcpus;
    if (nv > 1 && rng_random(&s->rng) < s->ipi_p) {
        uint32_t other = (vs->id + 1 + (uint32_t)rng_below(&s->rng, nv - 1)) % nv;
        uint32_t target = s->vcpus[dm->first_vcpu + other].resched;
        send_port(s, vi, s->ports[target].port, target);
    }
}

/* Simulation._issue_now */
static void issue_now(struct xe_sim *s, uint32_t ri)
{
    struct ring *r = &s->rings[ri];
    fifo_push(s, &r->requests, s->vt);
    send_port(s, r->gv, s->ports[r->front].port, r->back);
}

/* Simulation._contend: the lock is held by another vCPU of the domain that waits for no
 * lock itself; 0 when there is none (the lock is free). */
static int contend(struct xe_sim *s, uint32_t vi, uint32_t ri)
{
    struct vcpu *vs = &s->vcpus[vi];
    const struct dom *dm = &s->doms[vs->dom];
    uint32_t nothers = 0;
    for (uint32_t k = 0; k < dm->nr_vcpus; k++) {
        const struct vcpu *o = &s->vcpus[dm->first_vcpu + k];
        if (o->id != vs->id && !o->lock_id)
            nothers++;
    }
    if (!nothers)
        return 0;
    uint64_t pick = rng_below(&s->rng, nothers);
    uint32_t holder = NONE32;
    for (uint32_t k = 0; k < dm->nr_vcpus; k++) {
        const struct vcpu *o = &s->vcpus[dm->first_vcpu + k];
        if (o->id != vs->id && !o->lock_id && pick-- == 0) {
            holder = dm->first_vcpu + k;
            break;
        }
    }
    vs->lock_id = ++s->lock_seq;
    vs->lock_released = 0;
    vs->lock_holder = holder;
    vs->lock_ring = ri;
    int64_t hold = (int64_t)(-log(1.0 - rng_random(&s->rng)) / (1.0 / LOCK_HOLD_MEAN_NS)) + 1;
    at(s, s->vt + hold, EV_RUN_ON, holder, vi, (uint32_t)vs->lock_id, T_RELEASE, 0);
    wait_lock(s, vi);
    return 1;
}

/* Simulation._issue */
static void issue(struct xe_sim *s, uint32_t ri)
{
    uint32_t vi = s->rings[ri].gv;
    const struct dom *dm = &s->doms[s->vcpus[vi].dom];
    if (dm->nr_vcpus > 1 && rng_random(&s->rng) < s->lock_p)
        if (contend(s, vi, ri))
            return;
    issue_now(s, ri);
}

/* Simulation._complete */
static void complete(struct xe_sim *s, uint32_t vi, uint32_t ri)
{
    struct ring *r = &s->rings[ri];
    const struct device *dev = &s->devs[r->dev];
    uint32_t n = r->responses.len;
    while (r->responses.len) {
        int64_t issued = fifo_pop(&r->responses);
        s->requests_done++;
        s->request_ns += (uint64_t)(s->vt - issued);
        at(s, s->vt + us(s, dev->think_lo, dev->think_hi), EV_RUN_ON, r->gv, ri, 0, T_ISSUE, 0);
    }
    r->completed += n;
    if (n)
        maybe_ipi(s, vi);
}

/* The guest's unmask of a port: Linux's local unmask on the port's notify vCPU, or
 * Mini-OS's on vCPU 0 (a libxenevtchn handle's port is re-fired into its queue). */
static void guest_unmask(struct xe_sim *s, uint32_t di, uint32_t port)
{
    const struct dom *dm = &s->doms[di];
    struct xe_domain *d = dm->d;
    uint32_t v = 0;
    if (port < __atomic_load_n(&d->valid_evtchns, __ATOMIC_ACQUIRE)) {
        struct xe_chan *c = &d->chans[port];
        if (__atomic_load_n(&c->user, __ATOMIC_ACQUIRE)) {
            xe_user_unmask(d, port);
            return;
        }
        if (dm->kernel == XE_SIM_LINUX)
            v = __atomic_load_n(&c->notify_vcpu, __ATOMIC_RELAXED);
    }
    if (is_fifo(d)) {   /* clear MASKED locally, or EVTCHNOP_unmask for a pending event */
        if (xe_fifo_guest_unmask(d, port)) {
            int rc = xe_evtchn_unmask(d, port);
            after(s, rc < 0 ? 0 : rc);   /* Linux ignores the hypercall's answer */
        }
        return;
    }
    xe_2l_guest_unmask(&d->si, v, port);
}

/* Simulation._napi */
static void napi(struct xe_sim *s, uint32_t ri)
{
    struct ring *r = &s->rings[ri];
    uint32_t vi = r->gv;
    complete(s, vi, ri);
    r->napi_busy = 0;
    guest_unmask(s, r->guest, s->ports[r->front].port);
    if (s->tracing)
        tr_instant(s, "unmask port", s->ports[r->front].port, "mask", dom_pid(s, r->guest),
                   s->vcpus[vi].id, s->vt);
    const struct dom *dm = &s->doms[r->guest];
    for (uint32_t k = 0; k < dm->nr_vcpus; k++)
        guest_set_flag(s, dm->first_vcpu + k);
}

/* Simulation._on_back */
static void on_back(struct xe_sim *s, uint32_t vi, uint32_t ri)
{
    struct ring *r = &s->rings[ri];
    struct device *dev = &s->devs[r->dev];
    while (r->requests.len) {
        int64_t issued = fifo_pop(&r->requests);
        int64_t done = s->vt + us(s, dev->service_lo, dev->service_hi);
        struct inflight x = { .done = done, .seq = ++s->seq, .ring = ri, .issued = issued };
        inflight_push(s, dev, x);
        at(s, done, EV_DEVICE_FIRES, r->dev, 0, 0, 0, 0);
    }
    maybe_ipi(s, vi);
}

/* Simulation._device_fires */
static void device_fires(struct xe_sim *s, uint32_t di)
{
    struct device *dev = &s->devs[di];
    if (s->vt < dev->busy_until) {   /* the line is being raised already: just after */
        at(s, dev->busy_until, EV_DEVICE_FIRES, di, 0, 0, 0, 0);
        return;
    }
    send(s, dev->port, DO_PIRQ, NONE32, 0);
    dev->busy_until = s->vt;
}

/* Simulation._on_device_irq: complete finished requests, notify each frontend once. */
static void on_device_irq(struct xe_sim *s, uint32_t vi, uint32_t di)
{
    struct device *dev = &s->devs[di];
    uint64_t epoch = ++s->notify_epoch;
    uint32_t n = 0;
    while (dev->len && dev->heap[0].done <= s->vt) {
        struct inflight x = inflight_pop(dev);
        struct ring *r = &s->rings[x.ring];
        fifo_push(s, &r->responses, x.issued);
        if (r->notify_mark != epoch) {
            r->notify_mark = epoch;
            s->notify_list[n++] = x.ring;
        }
    }
    for (uint32_t k = 0; k < n; k++) {
        const struct ring *r = &s->rings[s->notify_list[k]];
        send_port(s, vi, s->ports[r->back].port, r->front);
    }
    if (n)
        maybe_ipi(s, vi);
}

/* Simulation._on_front */
static void on_front(struct xe_sim *s, uint32_t vi, uint32_t ri)
{
    struct ring *r = &s->rings[ri];
    if (s->devs[r->dev].napi) {
        if (!r->napi_busy) {   /* mask the port and poll the ring a little later */
            r->napi_busy = 1;
            struct xe_domain *d = s->doms[r->guest].d;
            uint32_t port = s->ports[r->front].port;
            if (is_fifo(d))
                xe_fifo_mask(d, port);
            else if (port < d->si.nr_ports)
                xe_2l_mask(&d->si, port);
            if (s->tracing)
                tr_instant(s, "mask port", port, "mask", dom_pid(s, r->guest), s->vcpus[vi].id,
                           s->vt);
            at(s, s->vt + rng_randint(&s->rng, NAPI_DELAY_LO, NAPI_DELAY_HI), EV_RUN_ON, vi, ri, 0,
               T_NAPI, 0);
        }
    } else {
        complete(s, vi, ri);
    }
}

static void deliver(struct xe_sim *s, uint32_t vi, int32_t port)
{
    const struct dom *dm = &s->doms[s->vcpus[vi].dom];
    if ((uint32_t)port >= dm->nr_index || dm->port_index[port] < 0) {
        fail(s, ENOENT, "an upcall handled a port the model does not know");
        return;
    }
    uint32_t pi = (uint32_t)dm->port_index[port];
    struct port *p = &s->ports[pi];
    int64_t start = s->vt;
    s->tr_handled++;
    s->vt = start + HANDLER_NS;
    p->tally[1]++;
    if (start < p->raised_at) {
        fail(s, EINVAL, "an event was handled before it was raised");
        return;
    }
    if (s->timeline) {
        struct vcpu *vs = &s->vcpus[vi];
        if (vs->tl_len == vs->tl_cap) {
            void *tl = grow_to(vs->timeline, &vs->tl_cap, vs->tl_len + 1, sizeof *vs->timeline);
            if (!tl) {
                fail(s, ENOMEM, "out of memory (timeline)");
                return;
            }
            vs->timeline = tl;
        }
        vs->timeline[vs->tl_len++] = start;
    }
    uint64_t lat = (uint64_t)(start - p->raised_at);
    s->hist[hist_index(lat)]++;
    s->lat_count++;
    s->lat_sum += lat;
    if (lat > s->lat_max)
        s->lat_max = lat;
    switch (p->handler) {
    case XE_SIM_ON_DEVICE:
        on_device_irq(s, vi, p->arg);
        break;
    case XE_SIM_ON_FRONT:
        on_front(s, vi, p->arg);
        break;
    case XE_SIM_ON_BACK:
        on_back(s, vi, p->arg);
        break;
    default:
        break;
    }
    if (s->tracing && !s->err) {
        const struct tport *tp = &s->tports[pi];
        uint32_t pid = dom_pid(s, s->vcpus[vi].dom), tid = s->vcpus[vi].id;
        char *o = tr_room(s, 256 + tp->label_len);
        if (!o)
            return;
        o = tr_x(o, tp->label, tp->label_len, "handler", pid, tid, start, s->vt);
        o = PUT(o, ",\"args\":{\"port\":");
        o = put_u64(o, (uint32_t)port);
        o = PUT(o, "}}");
        tr_done(s, o);
        tr_flows(s, pi, pid, tid, start);
    }
}

/* Simulation._send_now: raise one event, counting what the port showed before. */
static void send_now(struct xe_sim *s, uint32_t target, uint8_t mode, uint32_t sender,
                     uint32_t lport)
{
    if (s->sent >= s->limit)
        return;   /* the run is over: the model stops generating events */
    struct port *p = &s->ports[target];
    struct xe_domain *d = p->d;
    int was_pending = port_pending(d, p->port);
    int was_masked = port_masked(d, p->port);
    int64_t t = s->vt;
    s->vt = t + SEND_NS;
    int rc;
    if (mode == DO_SEND) {
        rc = xe_evtchn_send(vdom(s, &s->vcpus[sender]), lport);
        if (rc < 0) {
            fail(s, rc, "EVTCHNOP_send failed");
            return;
        }
    } else if (mode == DO_PIRQ) {
        rc = xe_evtchn_raise(d, p->port);
    } else {
        rc = xe_evtchn_set_pending(d, s->vcpus[sender].id, p->port);
    }
    after(s, rc);
    s->sent++;
    p->tally[0]++;
    if (mode == DO_SEND)
        s->doms[s->vcpus[sender].dom].sent_from++;
    if (was_pending) {
        p->tally[2]++;
    } else {
        p->raised_at = t;
        if (was_masked)
            p->tally[3]++;
    }
    if (s->tracing)
        tr_send(s, target, mode, sender, t, was_pending, was_masked);
}

/* Simulation._send: a handler runs ahead of the clock; its sends wait for it. */
static void send(struct xe_sim *s, uint32_t target, uint8_t mode, uint32_t sender, uint32_t lport)
{
    int64_t t = s->vt;
    if (t > s->now) {
        s->vt = t + SEND_NS;
        at(s, t, EV_SEND_NOW, target, sender, lport, 0, mode);
    } else {
        send_now(s, target, mode, sender, lport);
    }
}

/* Simulation._consume_kick */
static void consume_kick(struct xe_sim *s, uint32_t vi)
{
    const struct vcpu *vs = &s->vcpus[vi];
    const struct port *k = &s->ports[vs->kicker];
    struct xe_domain *d = k->d;
    if (!port_pending(d, k->port))
        return;
    if (is_fifo(d))
        xe_evtchn_clear_pending(d, k->port);
    else
        xe_2l_clear_pending(&d->si, k->port);
    s->consumed++;
    if (s->tracing) {
        uint32_t pid = dom_pid(s, vs->dom);
        tr_x_num(s, "kicked (port ", k->port, ")", "poll", pid, vs->id, s->vt, s->vt + SEND_NS);
        tr_flows(s, vs->kicker, pid, vs->id, s->vt);
    }
}

/* Domain.sched_poll([port], timeout, vcpu): 1 if it returns at once, 0 once it blocks. */
static int sched_poll(struct xe_sim *s, uint32_t vi, uint32_t port, int64_t timeout)
{
    struct vcpu *vs = &s->vcpus[vi];
    struct xe_domain *d = vdom(s, vs);
    if (xe_vcpu_polling(d, vs->id)) {
        fail(s, EBUSY, "SCHEDOP_poll: the vCPU is already blocked in poll");
        return 1;
    }
    xe_poll_begin(d, vs->id);
    if (xe_vcpu_upcall_pending(&d->si, vs->id) && !xe_vcpu_upcall_mask(&d->si, vs->id)) {
        xe_poll_cancel(d, vs->id);
        return 1;
    }
    if (port >= __atomic_load_n(&d->valid_evtchns, __ATOMIC_ACQUIRE) ||
        d->chans[port].state <= XE_ECS_RESERVED || d->chans[port].xen_consumer) {
        xe_poll_cancel(d, vs->id);
        fail(s, EINVAL, "SCHEDOP_poll: the kicker port is not usable");
        return 1;
    }
    if (xe_evtchn_is_pending(d, port)) {
        xe_poll_cancel(d, vs->id);
        return 1;
    }
    xe_poll_set_port(d, vs->id, (int32_t)port);
    if (timeout) {
        vs->timer_seq = ++s->hv_seq;
        struct timer t = { .deadline = timeout, .domid = d->domid, .vcpu = vs->id,
                           .seq = vs->timer_seq, .vidx = vi };
        timer_push(s, t);
        fire_timers(s);
    }
    return 0;
}

/* Simulation._wait */
static void wait_lock(struct xe_sim *s, uint32_t vi)
{
    struct vcpu *vs = &s->vcpus[vi];
    consume_kick(s, vi);   /* Linux clears the kicker before it checks the lock again */
    vs->polls++;
    int blocked = !sched_poll(s, vi, s->ports[vs->kicker].port, s->vt + POLL_TIMEOUT_NS);
    if (s->err)
        return;
    if (blocked && xe_vcpu_polling(vdom(s, vs), vs->id)) {
        if (s->tracing)
            s->blocked_since[vi] = s->vt;
        at(s, s->vt + POLL_TIMEOUT_NS, EV_NOTHING, 0, 0, 0, 0, 0);
    } else if (!blocked) {   /* an event is due on this vCPU: take it, then spin again */
        guest_set_flag(s, vi);
        at(s, s->vt + SPIN_RETRY_NS, EV_RESUME, vi, 0, 0, 0, 0);
    }
}

/* Simulation._release */
static void release(struct xe_sim *s, uint32_t waiter, uint32_t lock_id)
{
    struct vcpu *w = &s->vcpus[waiter];
    if (w->lock_id == lock_id) {
        w->lock_released = 1;
        send_port(s, w->lock_holder, s->ports[w->kicker].port, w->kicker);
    }
}

/* Simulation._resume: after a wake-up or a spin, the lock is ours, or wait again. */
static void resume(struct xe_sim *s, uint32_t vi)
{
    struct vcpu *vs = &s->vcpus[vi];
    if (!vs->lock_id || xe_vcpu_polling(vdom(s, vs), vs->id))
        return;
    if (s->vt < vs->busy_until) {   /* an upcall is running on this vCPU: after it */
        at(s, vs->busy_until, EV_RESUME, vi, 0, 0, 0, 0);
        return;
    }
    if (!vs->lock_released) {
        wait_lock(s, vi);
        return;
    }
    consume_kick(s, vi);
    vs->lock_id = 0;
    issue_now(s, vs->lock_ring);
    while (vs->dq_len && !vs->lock_id && !s->err) {
        struct deferred t = vs->dq[vs->dq_head];
        vs->dq_head = (vs->dq_head + 1) % vs->dq_cap;
        vs->dq_len--;
        run_task(s, t.task, t.a, t.b);
    }
    if (s->vt > vs->busy_until)
        vs->busy_until = s->vt;
}

static void run_task(struct xe_sim *s, uint32_t task, uint32_t a, uint32_t b)
{
    switch (task) {
    case T_ISSUE:
        issue(s, a);
        break;
    case T_RELEASE:
        release(s, a, b);
        break;
    default:
        napi(s, a);
        break;
    }
}

/* Simulation._tick */
static void tick(struct xe_sim *s, uint32_t vi)
{
    int64_t t = s->vt;
    send(s, s->vcpus[vi].timer, DO_VIRQ, vi, 0);
    at(s, t + s->period, EV_TICK, vi, 0, 0, 0, 0);
}

static void dispatch(struct xe_sim *s, const struct event *e)
{
    switch (e->type) {
    case EV_TICK:
        tick(s, e->a);
        break;
    case EV_RUN_ON:
        run_on(s, e->a, e->task, e->b, e->c);
        break;
    case EV_SEND_NOW:
        send_now(s, e->a, e->mode, e->b, e->c);
        break;
    case EV_DEVICE_FIRES:
        device_fires(s, e->a);
        break;
    case EV_UPCALL:
        upcall(s, e->a);
        break;
    case EV_RESUME:
        resume(s, e->a);
        break;
    default:
        break;   /* EV_NOTHING: the clock stops at a poll deadline */
    }
}

/* ---- the public functions --------------------------------------------------------- */

struct xe_sim *xe_sim_new(uint64_t seed, uint32_t ndoms, uint32_t nvcpus, uint32_t nports,
                          uint32_t ndevs, uint32_t nrings)
{
    if (!ndoms || ndoms > XE_NR_DOMIDS || !nvcpus || nvcpus > ndoms * XE_MAX_VCPUS ||
        nports > (UINT32_C(1) << 30) || nrings > (UINT32_C(1) << 30) || ndevs > 4096)
        return NULL;
    struct xe_sim *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    for (int k = 0; k < 4; k++)
        s->rng.s[k] = splitmix64(&seed);
    s->ndoms = ndoms;
    s->nvcpus = nvcpus;
    s->nports = nports;
    s->ndevs = ndevs;
    s->nrings = nrings;
    s->doms = calloc(ndoms, sizeof *s->doms);
    s->vcpus = calloc(nvcpus, sizeof *s->vcpus);
    s->ports = calloc(nports ? nports : 1, sizeof *s->ports);
    s->devs = calloc(ndevs ? ndevs : 1, sizeof *s->devs);
    s->rings = calloc(nrings ? nrings : 1, sizeof *s->rings);
    s->notify_list = calloc(nrings ? nrings : 1, sizeof *s->notify_list);
    s->domid_index = malloc(XE_NR_DOMIDS * sizeof *s->domid_index);
    s->hist = calloc(XE_SIM_HIST_BUCKETS, sizeof *s->hist);
    if (!s->doms || !s->vcpus || !s->ports || !s->devs || !s->rings || !s->notify_list ||
        !s->domid_index || !s->hist) {
        xe_sim_free(s);
        return NULL;
    }
    for (uint32_t k = 0; k < XE_NR_DOMIDS; k++)
        s->domid_index[k] = -1;
    for (uint32_t k = 0; k < nvcpus; k++) {
        s->vcpus[k].dom = NONE32;
        s->vcpus[k].timer = s->vcpus[k].resched = s->vcpus[k].kicker = NONE32;
    }
    for (uint32_t k = 0; k < nports; k++)
        s->ports[k].dom = NONE32;
    for (uint32_t k = 0; k < nrings; k++)
        s->rings[k].dev = NONE32;
    for (uint32_t k = 0; k < ndevs; k++)
        s->devs[k].port = NONE32;
    return s;
}

void xe_sim_free(struct xe_sim *s)
{
    if (!s)
        return;
    if (s->doms)
        for (uint32_t k = 0; k < s->ndoms; k++)
            free(s->doms[k].port_index);
    if (s->vcpus)
        for (uint32_t k = 0; k < s->nvcpus; k++) {
            free(s->vcpus[k].dq);
            free(s->vcpus[k].timeline);
        }
    if (s->devs)
        for (uint32_t k = 0; k < s->ndevs; k++)
            free(s->devs[k].heap);
    if (s->rings)
        for (uint32_t k = 0; k < s->nrings; k++) {
            free(s->rings[k].requests.buf);
            free(s->rings[k].responses.buf);
        }
    free(s->doms);
    free(s->vcpus);
    free(s->ports);
    free(s->devs);
    free(s->rings);
    free(s->notify_list);
    free(s->domid_index);
    free(s->hist);
    free(s->q);
    free(s->tq);
    free(s->hook_recs);
    if (s->tports)
        for (uint32_t k = 0; k < s->nports; k++) {
            free(s->tports[k].label);
            free(s->tports[k].flows);
        }
    free(s->tports);
    free(s->blocked_since);
    free(s->tb);
    free(s);
}

int xe_sim_set_rates(struct xe_sim *s, int64_t timer_period_ns, double ipi_probability,
                     double lock_probability)
{
    if (s->started || timer_period_ns < 1 || !(ipi_probability >= 0.0 && ipi_probability <= 1.0) ||
        !(lock_probability >= 0.0 && lock_probability <= 1.0))
        return -EINVAL;
    s->period = timer_period_ns;
    s->ipi_p = ipi_probability;
    s->lock_p = lock_probability;
    return 0;
}

int xe_sim_set_domain(struct xe_sim *s, uint32_t i, struct xe_domain *d, int kernel,
                      uint32_t first_vcpu)
{
    if (s->started || i >= s->ndoms || !d || !d->hv || d->domid >= XE_NR_DOMIDS ||
        (kernel != XE_SIM_LINUX && kernel != XE_SIM_MINIOS) || d->nr_vcpus < 1 ||
        d->nr_vcpus > XE_MAX_VCPUS || first_vcpu > s->nvcpus ||
        d->nr_vcpus > s->nvcpus - first_vcpu || s->domid_index[d->domid] >= 0)
        return -EINVAL;
    if (i && d->hv != s->doms[0].d->hv)
        return -EINVAL;
    s->doms[i].d = d;
    s->doms[i].kernel = kernel;
    s->doms[i].first_vcpu = first_vcpu;
    s->doms[i].nr_vcpus = d->nr_vcpus;
    s->domid_index[d->domid] = (int32_t)i;
    return 0;
}

int xe_sim_set_vcpu(struct xe_sim *s, uint32_t i, uint32_t dom, uint32_t vcpu_id,
                    struct xe_scan *scan, uint32_t timer, uint32_t resched, uint32_t kicker)
{
    if (s->started || i >= s->nvcpus || dom >= s->ndoms || !s->doms[dom].d || !scan ||
        vcpu_id >= s->doms[dom].nr_vcpus || i != s->doms[dom].first_vcpu + vcpu_id ||
        scan->vcpu != vcpu_id || timer >= s->nports || resched >= s->nports ||
        kicker >= s->nports)
        return -EINVAL;
    struct vcpu *vs = &s->vcpus[i];
    vs->dom = dom;
    vs->id = vcpu_id;
    vs->scan = scan;
    vs->timer = timer;
    vs->resched = resched;
    vs->kicker = kicker;
    return 0;
}

int xe_sim_set_vcpu_fifo(struct xe_sim *s, uint32_t i, struct xe_fifo_scan *scan)
{
    if (s->started || i >= s->nvcpus || s->vcpus[i].dom == NONE32 || !scan ||
        scan->vcpu != s->vcpus[i].id)
        return -EINVAL;
    s->vcpus[i].fscan = scan;
    return 0;
}

int xe_sim_set_port(struct xe_sim *s, uint32_t i, uint32_t dom, uint32_t port, int kind,
                    int handler, uint32_t arg)
{
    if (s->started || i >= s->nports || dom >= s->ndoms || !s->doms[dom].d ||
        port == 0 || port >= (is_fifo(s->doms[dom].d) ? (uint32_t)XE_FIFO_NR_CHANNELS :
                              s->doms[dom].d->si.nr_ports) || kind < XE_SIM_INTERDOMAIN ||
        kind > XE_SIM_PIRQ || handler < XE_SIM_ON_NOTHING || handler > XE_SIM_ON_BACK)
        return -EINVAL;
    if ((handler == XE_SIM_ON_DEVICE && arg >= s->ndevs) ||
        ((handler == XE_SIM_ON_FRONT || handler == XE_SIM_ON_BACK) && arg >= s->nrings))
        return -EINVAL;
    struct port *p = &s->ports[i];
    p->d = s->doms[dom].d;
    p->dom = dom;
    p->port = port;
    p->kind = (uint8_t)kind;
    p->handler = (uint8_t)handler;
    p->arg = arg;
    return 0;
}

int xe_sim_set_device(struct xe_sim *s, uint32_t i, uint32_t port, double service_lo,
                      double service_hi, double think_lo, double think_hi, uint32_t depth,
                      int napi_on)
{
    if (s->started || i >= s->ndevs || port >= s->nports || depth < 1 || depth > 1024 ||
        !(service_lo > 0.0 && service_lo <= service_hi && service_hi <= 1e9) ||
        !(think_lo > 0.0 && think_lo <= think_hi && think_hi <= 1e9))
        return -EINVAL;
    struct device *dev = &s->devs[i];
    dev->port = port;
    dev->service_lo = service_lo;
    dev->service_hi = service_hi;
    dev->think_lo = think_lo;
    dev->think_hi = think_hi;
    dev->depth = depth;
    dev->napi = napi_on != 0;
    return 0;
}

int xe_sim_set_ring(struct xe_sim *s, uint32_t i, uint32_t dev, uint32_t guest, uint32_t gv,
                    uint32_t front, uint32_t back)
{
    if (s->started || i >= s->nrings || dev >= s->ndevs || guest >= s->ndoms ||
        gv >= s->nvcpus || front >= s->nports || back >= s->nports)
        return -EINVAL;
    struct ring *r = &s->rings[i];
    r->dev = dev;
    r->guest = guest;
    r->gv = gv;
    r->front = front;
    r->back = back;
    return 0;
}

int xe_sim_start(struct xe_sim *s)
{
    if (s->started || s->period < 1)
        return -EINVAL;
    for (uint32_t k = 0; k < s->ndoms; k++)
        if (!s->doms[k].d)
            return -EINVAL;
    for (uint32_t k = 0; k < s->nports; k++) {
        struct port *p = &s->ports[k];
        if (p->dom == NONE32)
            return -EINVAL;
        struct dom *dm = &s->doms[p->dom];
        if (p->port >= dm->nr_index) {
            size_t n = p->port + 1;
            int32_t *idx = realloc(dm->port_index, n * sizeof *idx);
            if (!idx)
                return -ENOMEM;
            for (size_t j = dm->nr_index; j < n; j++)
                idx[j] = -1;
            dm->port_index = idx;
            dm->nr_index = (uint32_t)n;
        }
        if (dm->port_index[p->port] >= 0)
            return -EEXIST;
        dm->port_index[p->port] = (int32_t)k;
    }
    for (uint32_t k = 0; k < s->nvcpus; k++) {
        const struct vcpu *vs = &s->vcpus[k];
        if (vs->dom == NONE32 || s->ports[vs->timer].dom != vs->dom ||
            s->ports[vs->resched].dom != vs->dom || s->ports[vs->kicker].dom != vs->dom)
            return -EINVAL;
    }
    for (uint32_t k = 0; k < s->ndevs; k++)
        if (s->devs[k].port == NONE32 || s->ports[s->devs[k].port].dom != 0)
            return -EINVAL;
    for (uint32_t k = 0; k < s->nrings; k++) {
        const struct ring *r = &s->rings[k];
        if (r->dev == NONE32 || s->vcpus[r->gv].dom != r->guest ||
            s->ports[r->front].dom != r->guest || s->ports[r->back].dom != 0)
            return -EINVAL;
    }
    if (s->tracing)
        for (uint32_t k = 0; k < s->nports; k++)
            if (!s->tports[k].label)
                return -EINVAL;
    s->started = 1;
    /* First actions: timer ticks staggered over a period, then each frontend's requests. */
    for (uint32_t k = 0; k < s->nvcpus; k++)
        at(s, (int64_t)rng_below(&s->rng, (uint64_t)s->period), EV_TICK, k, 0, 0, 0, 0);
    for (uint32_t k = 0; k < s->nrings; k++) {
        const struct device *dev = &s->devs[s->rings[k].dev];
        for (uint32_t j = 0; j < dev->depth; j++)
            at(s, us(s, dev->think_lo, dev->think_hi), EV_RUN_ON, s->rings[k].gv, k, 0, T_ISSUE, 0);
    }
    return s->err;
}

int xe_sim_hook(struct xe_sim *s, uint32_t vi, int wake)
{
    if (!s->started || vi >= s->nvcpus)
        return -EINVAL;
    if (s->err)
        return s->err;
    if (wake)
        on_wake(s, vi);
    else
        on_kick(s, vi);
    return s->err;
}

int xe_sim_run(struct xe_sim *s, uint64_t limit, int64_t until_ns, uint64_t max_actions)
{
    if (!s->started)
        return -EINVAL;
    if (s->err)
        return s->err;
    s->limit = limit;
    uint64_t n = 0;
    while (s->qlen && s->sent < s->limit) {
        if (n >= max_actions)
            return XE_SIM_MORE;
        if (until_ns >= 0 && s->q[0].t > until_ns) {
            if (until_ns <= s->now)
                return XE_SIM_UNTIL;
            s->vt = until_ns;
            advance(s, until_ns - s->now);
            if (s->err)
                return s->err;
            continue;   /* the poll timers may have queued earlier actions */
        }
        struct event e = pop(s);
        if (e.t > s->now) {
            s->vt = e.t;
            advance(s, e.t - s->now);
        }
        s->vt = e.t;
        dispatch(s, &e);
        n++;
        s->actions++;
        if (s->err)
            return s->err;
        if (s->tb_len >= s->tb_flush && s->tracing && s->sent < s->limit)
            return XE_SIM_MORE;   /* the caller writes the trace out, then calls again */
    }
    return XE_SIM_DONE;
}

void xe_sim_totals(const struct xe_sim *s, uint64_t *out)
{
    out[XE_SIM_T_SENT] = s->sent;
    out[XE_SIM_T_NOW] = (uint64_t)s->now;
    out[XE_SIM_T_VT] = (uint64_t)s->vt;
    out[XE_SIM_T_CONSUMED] = s->consumed;
    out[XE_SIM_T_REQUESTS] = s->requests_done;
    out[XE_SIM_T_REQUEST_NS] = s->request_ns;
    out[XE_SIM_T_LAT_COUNT] = s->lat_count;
    out[XE_SIM_T_LAT_SUM] = s->lat_sum;
    out[XE_SIM_T_LAT_MAX] = s->lat_max;
    out[XE_SIM_T_ACTIONS] = s->actions;
    out[XE_SIM_T_QUEUED] = s->qlen;
    out[XE_SIM_T_HV_SEQ] = s->hv_seq;
}

size_t xe_sim_poll_timers(const struct xe_sim *s, uint64_t *out, size_t cap)
{
    size_t n = 0;
    for (size_t k = 0; k < s->tlen && n < cap; k++) {
        const struct timer *t = &s->tq[k];
        if (s->vcpus[t->vidx].timer_seq != t->seq)
            continue;
        out[4 * n] = (uint64_t)t->deadline;
        out[4 * n + 1] = t->domid;
        out[4 * n + 2] = t->vcpu;
        out[4 * n + 3] = t->seq;
        n++;
    }
    return n;
}

int xe_sim_port_counts(const struct xe_sim *s, uint32_t i, uint64_t *out)
{
    if (i >= s->nports)
        return -EINVAL;
    memcpy(out, s->ports[i].tally, sizeof s->ports[i].tally);
    return 0;
}

int xe_sim_vcpu_counts(const struct xe_sim *s, uint32_t i, uint64_t *out)
{
    if (i >= s->nvcpus)
        return -EINVAL;
    const struct vcpu *vs = &s->vcpus[i];
    out[0] = vs->upcalls;
    out[1] = vs->kicks;
    out[2] = vs->polls;
    out[3] = vs->woken;
    return 0;
}

uint64_t xe_sim_dom_sent(const struct xe_sim *s, uint32_t i)
{
    return i < s->ndoms ? s->doms[i].sent_from : 0;
}

uint64_t xe_sim_ring_completed(const struct xe_sim *s, uint32_t i)
{
    return i < s->nrings ? s->rings[i].completed : 0;
}

size_t xe_sim_hist(const struct xe_sim *s, uint32_t *index, uint64_t *count, size_t cap)
{
    size_t n = 0;
    for (uint32_t k = 0; k < XE_SIM_HIST_BUCKETS && n < cap; k++)
        if (s->hist[k]) {
            index[n] = k;
            count[n++] = s->hist[k];
        }
    return n;
}

int xe_sim_record_timeline(struct xe_sim *s, int on)
{
    if (s->started)
        return -EINVAL;
    s->timeline = on != 0;
    return 0;
}

size_t xe_sim_timeline(const struct xe_sim *s, uint32_t i, size_t from, int64_t *out, size_t n)
{
    if (i >= s->nvcpus || from >= s->vcpus[i].tl_len)
        return 0;
    size_t have = s->vcpus[i].tl_len - from;
    if (n > have)
        n = have;
    memcpy(out, s->vcpus[i].timeline + from, n * sizeof *out);
    return n;
}

const char *xe_sim_error(const struct xe_sim *s)
{
    return s->errwhat ? s->errwhat : "";
}

int xe_sim_trace_start(struct xe_sim *s, size_t flush_bytes)
{
    if (s->started || s->tracing || flush_bytes < 1 || flush_bytes > (SIZE_MAX >> 2))
        return -EINVAL;
    s->tports = calloc(s->nports ? s->nports : 1, sizeof *s->tports);
    s->blocked_since = malloc(s->nvcpus * sizeof *s->blocked_since);
    size_t cap = 0;
    s->tb = grow_to(NULL, &cap, flush_bytes + 4096, 1);
    if (!s->tports || !s->blocked_since || !s->tb) {
        free(s->tports);
        free(s->blocked_since);
        free(s->tb);
        s->tports = NULL;
        s->blocked_since = NULL;
        s->tb = NULL;
        return -ENOMEM;
    }
    s->tb_cap = cap;
    s->tb_flush = flush_bytes;
    for (uint32_t k = 0; k < s->nvcpus; k++)
        s->blocked_since[k] = -1;
    s->tracing = 1;
    return 0;
}

int xe_sim_trace_label(struct xe_sim *s, uint32_t i, const char *json, size_t len)
{
    if (!s->tracing || s->started || i >= s->nports || !json || len < 2 ||
        len > XE_SIM_LABEL_MAX || json[0] != '"' || json[len - 1] != '"')
        return -EINVAL;
    for (size_t k = 0; k < len; k++)
        if ((unsigned char)json[k] < 0x20 || (unsigned char)json[k] > 0x7e)
            return -EINVAL;   /* JSON text with every control and non-ASCII byte escaped */
    char *copy = malloc(len);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, json, len);
    free(s->tports[i].label);
    s->tports[i].label = copy;
    s->tports[i].label_len = (uint32_t)len;
    return 0;
}

const char *xe_sim_trace_data(const struct xe_sim *s, size_t *len, uint64_t *events)
{
    *len = s->tb_len;
    *events = s->tr_events;
    return s->tb ? s->tb : "";
}

void xe_sim_trace_clear(struct xe_sim *s)
{
    s->tb_len = 0;
    s->tr_events = 0;
}
