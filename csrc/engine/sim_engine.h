/*
 * The scenario engine of `xenevtchn simulate` in C (csrc/engine/sim_engine.c).
 *
 * Python builds the world through the control plane (domains, channels, bindings, the
 * guests' boot), then describes it here: one call per domain, vCPU, port, host device and
 * front/back ring. xe_sim_start queues the first actions; xe_sim_run then runs the event
 * loop on the data path of csrc/ (sends, raises, the guests' upcall scans, SCHEDOP_poll)
 * with no Python per event, for at most a bounded number of actions per call, so the
 * caller can look at signals between calls. The model, its costs and its random draws are
 * those of xenevtchn/simulate.py, so both engines give the same counts for the same
 * scenario and seed. Counters are read back with xe_sim_*_counts / xe_sim_hist.
 */
#ifndef XENEVTCHN_SIM_ENGINE_H
#define XENEVTCHN_SIM_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include "xenevtchn.h"

#ifdef __cplusplus
extern "C" {
#endif

struct xe_sim;

enum {
    /* Kinds of ports (the summary's by_kind rows, in this order). */
    XE_SIM_INTERDOMAIN = 0,
    XE_SIM_VIRQ = 1,
    XE_SIM_IPI = 2,
    XE_SIM_PIRQ = 3,

    /* What a port's handler does. */
    XE_SIM_ON_NOTHING = 0,     /* timer ticks, IPIs: taking the event is all */
    XE_SIM_ON_DEVICE = 1,      /* dom0's PIRQ handler of host device `arg` */
    XE_SIM_ON_FRONT = 2,       /* a frontend of ring `arg` */
    XE_SIM_ON_BACK = 3,        /* dom0's backend of ring `arg` */

    XE_SIM_LINUX = 0,          /* guest kernels */
    XE_SIM_MINIOS = 1,

    /* xe_sim_run results (>= 0). */
    XE_SIM_DONE = 0,           /* the event limit was reached or nothing is left to do */
    XE_SIM_MORE = 1,           /* the action budget of this call ran out: call again */
    XE_SIM_UNTIL = 2,          /* stopped at until_ns */

    /* Latency histogram: buckets of xenevtchn/latency.py (values below 2**63 ns). */
    XE_SIM_HIST_BUCKETS = 55296,

    /* xe_sim_totals: indices of its output words. */
    XE_SIM_T_SENT = 0,
    XE_SIM_T_NOW = 1,
    XE_SIM_T_VT = 2,
    XE_SIM_T_CONSUMED = 3,
    XE_SIM_T_REQUESTS = 4,
    XE_SIM_T_REQUEST_NS = 5,
    XE_SIM_T_LAT_COUNT = 6,
    XE_SIM_T_LAT_SUM = 7,
    XE_SIM_T_LAT_MAX = 8,
    XE_SIM_T_ACTIONS = 9,
    XE_SIM_T_QUEUED = 10,
    XE_SIM_T_HV_SEQ = 11,      /* the hypervisor's poll-timer sequence number */
    XE_SIM_T_WORDS = 12,

    XE_SIM_LABEL_MAX = 1 << 20 /* a port's trace label, as JSON text */
};

/* A world of ndoms domains, nvcpus vCPUs, nports model ports, ndevs host devices and
 * nrings front/back pairs; NULL if out of memory or a count is out of range. */
struct xe_sim *xe_sim_new(uint64_t seed, uint32_t ndoms, uint32_t nvcpus, uint32_t nports,
                          uint32_t ndevs, uint32_t nrings);
void xe_sim_free(struct xe_sim *s);

/* The scenario's rates: VIRQ_TIMER period (ns) and the two probabilities. */
int xe_sim_set_rates(struct xe_sim *s, int64_t timer_period_ns, double ipi_probability,
                     double lock_probability);
/* Domain i (creation order): its C struct, kernel (XE_SIM_LINUX/MINIOS), its vCPUs
 * first_vcpu .. first_vcpu + d->nr_vcpus - 1 in the vCPU table. */
int xe_sim_set_domain(struct xe_sim *s, uint32_t i, struct xe_domain *d, int kernel,
                      uint32_t first_vcpu);
/* vCPU i: domain index, its upcall scan (the guest's nesting count and Linux scan), and
 * the model ports of its VIRQ_TIMER, reschedule IPI and spinlock kicker. */
int xe_sim_set_vcpu(struct xe_sim *s, uint32_t i, uint32_t dom, uint32_t vcpu_id,
                    struct xe_scan *scan, uint32_t timer, uint32_t resched, uint32_t kicker);
/* vCPU i's FIFO consumer (the guest's xe_fifo_scan of that vCPU, whose private heads the
 * Python guest shares), used by its upcalls while its domain is on the FIFO ABI. */
int xe_sim_set_vcpu_fifo(struct xe_sim *s, uint32_t i, struct xe_fifo_scan *scan);
/* Model port i: domain index, port number, kind (XE_SIM_INTERDOMAIN...), handler
 * (XE_SIM_ON_...) and its argument. */
int xe_sim_set_port(struct xe_sim *s, uint32_t i, uint32_t dom, uint32_t port, int kind,
                    int handler, uint32_t arg);
/* Host device i: its PIRQ port (model port index), service and think ranges (us), depth,
 * NAPI frontends. */
int xe_sim_set_device(struct xe_sim *s, uint32_t i, uint32_t port, double service_lo,
                      double service_hi, double think_lo, double think_hi, uint32_t depth,
                      int napi);
/* Ring i: its device, guest domain index, the frontend's vCPU, front and back ports. */
int xe_sim_set_ring(struct xe_sim *s, uint32_t i, uint32_t dev, uint32_t guest, uint32_t gv,
                    uint32_t front, uint32_t back);
/* Check the tables and queue the first actions (timer ticks, each frontend's requests).
 * 0, or -EINVAL naming nothing (the Python wrapper checks what it hands over). */
int xe_sim_start(struct xe_sim *s);
/* Run until `limit` events have been sent in all, the queue is empty, or (until_ns >= 0)
 * the next action is later than until_ns, doing at most max_actions actions. Returns
 * XE_SIM_DONE / XE_SIM_MORE / XE_SIM_UNTIL, or -errno of a data-path call that failed
 * (the run cannot go on). */
int xe_sim_run(struct xe_sim *s, uint64_t limit, int64_t until_ns, uint64_t max_actions);

/* A kick (wake = 0) or a poll wake-up (wake = 1) of vCPU i that the control plane caused
 * between two runs (e.g. EVTCHNOP_expand_array raising deferred events): the model takes
 * it as it takes those of its own sends. 0, or -errno. */
int xe_sim_hook(struct xe_sim *s, uint32_t vi, int wake);

/* Read-back. */
void xe_sim_totals(const struct xe_sim *s, uint64_t *out);      /* XE_SIM_T_WORDS words */
int xe_sim_port_counts(const struct xe_sim *s, uint32_t i, uint64_t *out);   /* 4: sent,
                                                  delivered, coalesced, masked */
int xe_sim_vcpu_counts(const struct xe_sim *s, uint32_t i, uint64_t *out);   /* 4: upcalls,
                                                  kicks, polls, woken */
uint64_t xe_sim_dom_sent(const struct xe_sim *s, uint32_t i);
uint64_t xe_sim_ring_completed(const struct xe_sim *s, uint32_t i);
/* The latency histogram's buckets that were hit, ascending: bucket numbers (see
 * xenevtchn/latency.py) and counts, at most cap; returns how many. */
size_t xe_sim_hist(const struct xe_sim *s, uint32_t *index, uint64_t *count, size_t cap);
/* The armed poll timers (re-armed ones left out), four words each: deadline, domid,
 * vCPU, sequence number; at most cap; returns how many. */
size_t xe_sim_poll_timers(const struct xe_sim *s, uint64_t *out, size_t cap);
/* Before xe_sim_start: keep every handler's start time per vCPU (memory grows with
 * events; for plots). xe_sim_timeline copies vCPU i's times from index `from`, at most n;
 * returns how many. */
int xe_sim_record_timeline(struct xe_sim *s, int on);
size_t xe_sim_timeline(const struct xe_sim *s, uint32_t i, size_t from, int64_t *out, size_t n);
/* Traces (call xe_sim_trace_start before xe_sim_start). The engine writes Chrome
 * trace-event JSON itself (the events of simulate.py's TraceRecorder, byte for byte), each
 * event preceded by ",\n", into one buffer; xe_sim_run returns XE_SIM_MORE between two
 * actions once the buffer holds flush_bytes or more, so the caller writes it out
 * (xe_sim_trace_data) and empties it (xe_sim_trace_clear): memory stays flat in events.
 * xe_sim_trace_label gives model port i its label as a JSON string (quotes included, at
 * most XE_SIM_LABEL_MAX bytes). */
int xe_sim_trace_start(struct xe_sim *s, size_t flush_bytes);
int xe_sim_trace_label(struct xe_sim *s, uint32_t i, const char *json, size_t len);
const char *xe_sim_trace_data(const struct xe_sim *s, size_t *len, uint64_t *events);
void xe_sim_trace_clear(struct xe_sim *s);
/* The data-path call that failed, as text, after a negative xe_sim_run. */
const char *xe_sim_error(const struct xe_sim *s);

#ifdef __cplusplus
}
#endif

#endif
