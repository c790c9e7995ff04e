/*
 * Embedding the xenevtchn C core in a C simulator: no Python anywhere.
 *
 * Build the static library and this program (see csrc/Makefile):
 *     make -C csrc example
 * or by hand: compile every .c file of csrc/ with `cc -std=c11 -O2 -c`, put the objects
 * in a library with `ar rcs libxenevtchn.a ...`, then
 *     cc -std=c11 -Icsrc examples/embed.c libxenevtchn.a -o embed && ./embed
 *
 * The C core is the data plane: it raises, masks, scans and polls on a real shared_info
 * page, reading the port tables you give it. The control plane (which port is bound to
 * what) is yours: in Python, xenevtchn's Hypervisor writes these tables; in C you write
 * struct xe_chan records yourself, every field first and the state last.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xenevtchn.h"

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "embed.c:%d: check failed: %s\n", __LINE__, #cond);    \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

struct sim_domain {
    struct xe_domain d;
    struct shared_info *page;      /* Xen's x86_64 layout, as a guest maps it */
};

static struct xe_hv *hv;           /* domains by domid: an interdomain send finds its peer */

static void domain_init(struct sim_domain *sd, uint16_t domid, uint32_t vcpus)
{
    memset(sd, 0, sizeof *sd);
    sd->page = aligned_alloc(4096, 4096);                 /* the guest's shared_info frame */
    CHECK(sd->page != NULL);
    CHECK(xe_shinfo_init(&sd->d.si, sd->page, XE_LAYOUT_X86_64) == 0);
    xe_shinfo_reset(&sd->d.si);                           /* zeroed, every upcall masked */
    for (uint32_t v = 0; v < vcpus; v++)
        xe_vcpu_set_upcall_mask(&sd->d.si, v, 0);         /* the guest enables delivery */
    sd->d.chans = calloc(sd->d.si.nr_ports, sizeof(struct xe_chan));
    CHECK(sd->d.chans != NULL);
    sd->d.chans[0].state = XE_ECS_RESERVED;               /* port 0 is never used */
    sd->d.max_ports = sd->d.si.nr_ports;
    sd->d.valid_evtchns = 64;                             /* one bucket of ports */
    sd->d.nr_vcpus = vcpus;
    sd->d.domid = domid;
    sd->d.abi = XE_ABI_2L;
    sd->d.hv = hv;
    hv->domains[domid] = &sd->d;
}

static void bind(struct sim_domain *sd, uint32_t port, uint8_t state, uint16_t vcpu,
                 uint16_t remote_dom, uint32_t remote_port, uint32_t info)
{
    struct xe_chan *c = &sd->d.chans[port];
    c->notify_vcpu = vcpu;
    c->remote_dom = remote_dom;
    c->remote_port = remote_port;
    c->info = info;
    c->state = state;                                     /* last: the channel is live */
}

/* One Linux-style upcall on a vCPU: clear the flag, timer first, then the fair scan. */
static int upcall(struct sim_domain *sd, struct xe_scan *scan, uint32_t timer_port, uint32_t *out)
{
    int n = 0;
    do {
        xe_vcpu_set_upcall_pending(&sd->d.si, scan->vcpu, 0);
        if (timer_port) {
            int32_t t = xe_2l_take_timer(&sd->d, scan->vcpu, timer_port);
            if (t >= 0)
                out[n++] = (uint32_t)t;
        }
        xe_2l_scan_begin(&sd->d, scan);
        for (int32_t p; (p = xe_2l_scan_next(&sd->d, scan)) >= 0;)
            out[n++] = (uint32_t)p;                       /* pending already cleared */
        xe_2l_scan_end(scan);
    } while (xe_vcpu_upcall_pending(&sd->d.si, scan->vcpu));
    return n;
}

static void print_ports(const char *what, const uint32_t *ports, int n)
{
    printf("%s:", what);
    for (int i = 0; i < n; i++)
        printf(" %u", ports[i]);
    printf("\n");
}

int main(void)
{
    static struct sim_domain dom0, guest;
    struct xe_scan scan[2] = {{.vcpu = 0}, {.vcpu = 1}};
    uint32_t handled[64];
    int n, rc;

    hv = calloc(1, sizeof *hv);
    CHECK(hv != NULL);
    domain_init(&dom0, 0, 1);
    domain_init(&guest, 1, 2);

    /* A split-driver channel dom0:1 <-> d1:1, an IPI d1:2 -> vCPU1, VIRQ_TIMER d1:3 on vCPU0. */
    bind(&dom0, 1, XE_ECS_INTERDOMAIN, 0, 1, 1, 0);
    bind(&guest, 1, XE_ECS_INTERDOMAIN, 0, 0, 1, 0);
    bind(&guest, 2, XE_ECS_IPI, 1, 0, 0, 0);
    bind(&guest, 3, XE_ECS_VIRQ, 0, 0, 0, 0 /* VIRQ_TIMER */);
    printf("shared_info is %zu bytes; d1 has ports 1 (interdomain), 2 (ipi), 3 (virq)\n",
           xe_shinfo_size(XE_LAYOUT_X86_64));

    /* dom0's backend notifies the guest: the guest's vCPU0 is kicked. */
    rc = xe_evtchn_send(&dom0.d, 1);
    CHECK(rc == XE_EV_HOOKS);
    uint32_t kicked = xe_take_kicked(&guest.d);
    printf("send dom0:1 -> d1:1: kicked vCPUs %#x, upcall_pending %u\n", kicked,
           guest.page->vcpu_info[0].evtchn_upcall_pending);
    CHECK(kicked == 1 && guest.page->vcpu_info[0].evtchn_upcall_pending == 1);
    rc = xe_evtchn_send(&dom0.d, 1);                       /* still pending: coalesced */
    CHECK(rc == 0 && xe_take_kicked(&guest.d) == 0);
    printf("second send coalesced (no kick)\n");

    /* An IPI to vCPU1 and a timer tick on vCPU0 (raised from the hypervisor side). */
    CHECK(xe_evtchn_send(&guest.d, 2) == XE_EV_HOOKS);
    CHECK(xe_evtchn_raise(&guest.d, 3) == 0);              /* vCPU0's flag is already up */
    printf("kicked after IPI and timer: %#x\n", xe_take_kicked(&guest.d));

    n = upcall(&guest, &scan[0], 3, handled);
    print_ports("d1 vCPU0 upcall handled", handled, n);   /* the timer first, then port 1 */
    CHECK(n == 2 && handled[0] == 3 && handled[1] == 1);
    n = upcall(&guest, &scan[1], 0, handled);
    print_ports("d1 vCPU1 upcall handled", handled, n);
    CHECK(n == 1 && handled[0] == 2);

    /* Masked: the event stays pending with no upcall; unmasking (the hypercall) re-raises it. */
    xe_2l_mask(&guest.d.si, 1);
    CHECK(xe_evtchn_send(&dom0.d, 1) == 0);
    printf("masked send: pending %d, masked %d, upcall_pending %u\n", xe_evtchn_is_pending(&guest.d, 1),
           xe_evtchn_is_masked(&guest.d, 1), guest.page->vcpu_info[0].evtchn_upcall_pending);
    CHECK(xe_evtchn_is_pending(&guest.d, 1) && !guest.page->vcpu_info[0].evtchn_upcall_pending);
    CHECK(xe_evtchn_unmask(&guest.d, 1) == XE_EV_HOOKS && xe_take_kicked(&guest.d) == 1);
    n = upcall(&guest, &scan[0], 3, handled);
    print_ports("after unmask, d1 vCPU0 handled", handled, n);
    CHECK(n == 1 && handled[0] == 1);

    /* SCHEDOP_poll: vCPU1 blocks on port 2; the IPI wakes it. */
    xe_poll_begin(&guest.d, 1);
    xe_poll_set_port(&guest.d, 1, 2);
    CHECK(xe_vcpu_polling(&guest.d, 1));
    xe_2l_mask(&guest.d.si, 2);                            /* polled ports may be masked */
    CHECK(xe_evtchn_send(&guest.d, 2) == XE_EV_HOOKS);
    uint32_t woken = xe_take_woken(&guest.d);
    printf("poll on d1:2 woken: vCPUs %#x, still polling %d\n", woken, xe_vcpu_polling(&guest.d, 1));
    CHECK(woken == 2 && !xe_vcpu_polling(&guest.d, 1));
    xe_evtchn_clear_pending(&guest.d, 2);

    /* A batch: 1000 notifications in one call raise one event. */
    uint32_t batch[1000];
    for (int i = 0; i < 1000; i++)
        batch[i] = 1;
    size_t failed_at;
    rc = xe_evtchn_send_many(&dom0.d, batch, 1000, &failed_at);
    CHECK(rc == XE_EV_HOOKS && failed_at == 1000);
    n = upcall(&guest, &scan[0], 3, handled);
    print_ports("1000 sends in a batch, handled", handled, n);
    CHECK(n == 1 && handled[0] == 1);

    printf("ok\n");
    free(guest.d.chans);
    free(dom0.d.chans);
    free(guest.page);
    free(dom0.page);
    free(hv);
    return 0;
}
