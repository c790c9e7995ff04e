/*
 * The per-event calls of a domain as builtin functions: d.send(port), d.guest.unmask(port),
 * d.guest.mask(port) and the EVTCHNOP_send / EVTCHNOP_unmask fast path of
 * d.event_channel_op(cmd, bytearray).
 *
 * Why builtins: a Python function around a cffi call costs the cffi call (the floor of any
 * cffi wrapper) plus a Python frame; a builtin's call costs a fraction of a cffi call and
 * it calls the C core directly. Each builtin decides nothing itself: the C core's key
 * calls (xe_send_key etc., csrc/evtchn.c) do the work and answer as the checked paths'
 * C calls do. Whatever a builtin does not take (an argument that is not a plain int in
 * the key's range, keywords, another command, a buffer that is not a bytearray, a port
 * or domain the key call refuses with its "not mine" answer) goes to the checked Python
 * method the builtin holds, which raises what it always raised. A refusal the key call
 * gives with an errno is raised here as EvtchnError(errno, what), as the Python wrappers
 * did.
 *
 * State: one object per builtin (a GC-tracked heap type) holding the domain's key base and
 * the Python objects it needs: the checked method (through which the domain, its guest
 * and its C structs live as long as the builtin does), the domain's _Slot (so its number
 * is not reused while the builtin lives: a stale builtin finds no domain in C, or its
 * own), commands.xen_sent, the hypervisor's hook runner (run_hooks.c) and EvtchnError.
 * The GIL stays held: every C call here is short and never waits on Python.
 *
 * After a send that reported XE_EV_HOOKS the owed hooks are called from C
 * (xe_py_run_owed): every owed hook runs, the first exception propagates. A send that
 * reached a Xen-attached peer (XE_EV_XEN) calls commands.xen_sent as before.
 *
 * Not part of csrc/libxenevtchn.a: the static library needs no Python.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "xenevtchn.h"
#include "fast_upcall.h"
#include "builtins.h"

enum {
    REF_SLOW,          /* the checked method */
    REF_SLOT,          /* the domain's _Slot */
    REF_ERROR,         /* EvtchnError */
    REF_RUNNER,        /* the hypervisor's hook runner */
    REF_DOMAIN,        /* send, event_channel_op: the Domain (xen_sent's first argument) */
    REF_XEN_SENT,      /* send, event_channel_op: commands.xen_sent */
    REF_SEND_CMD,      /* event_channel_op: EvtchnOp.send */
    REF_UNMASK_CMD,    /* event_channel_op: EvtchnOp.unmask */
    NR_REFS
};

struct fast_path {
    PyObject_HEAD
    uint32_t base;     /* slot << XE_KEY_PORT_BITS */
    int live;          /* 0 once the GC cleared the references: every call is refused */
    long send_cmd, unmask_cmd;
    PyObject *ref[NR_REFS];
};

#define PORT_SPAN (1L << XE_KEY_PORT_BITS)

static PyTypeObject *fast_path_type;

static int fp_traverse(PyObject *self, visitproc visit, void *arg)
{
    struct fast_path *fp = (struct fast_path *)self;
    for (int i = 0; i < NR_REFS; i++)
        Py_VISIT(fp->ref[i]);
    Py_VISIT((PyObject *)Py_TYPE(self));
    return 0;
}

static int fp_clear(PyObject *self)
{
    struct fast_path *fp = (struct fast_path *)self;
    fp->live = 0;
    for (int i = 0; i < NR_REFS; i++)
        Py_CLEAR(fp->ref[i]);
    return 0;
}

static void fp_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    fp_clear(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot fp_slots[] = {
    {Py_tp_traverse, (void *)fp_traverse},
    {Py_tp_clear, (void *)fp_clear},
    {Py_tp_dealloc, (void *)fp_dealloc},
    {Py_tp_doc, (void *)"The state of one fast-path builtin of a domain."},
    {0, NULL},
};

static PyType_Spec fp_spec = {
    "xenevtchn._core.FastPathState", sizeof(struct fast_path), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, fp_slots,
};

/* ---- helpers -------------------------------------------------------------------------- */

/* The port of a plain int in 0..PORT_SPAN-1, or -1 (anything else: the checked path). */
static long key_port(PyObject *o)
{
    if (!PyLong_CheckExact(o))
        return -1;
    int overflow = 0;
    long p = PyLong_AsLongAndOverflow(o, &overflow);
    return overflow || p < 0 || p >= PORT_SPAN ? -1 : p;
}

static PyObject *torn_down(void)
{
    PyErr_SetString(PyExc_RuntimeError, "this fast path was torn down by the garbage collector");
    return NULL;
}

/* EvtchnError(err, what) raised; always NULL. */
static PyObject *raise_errno(struct fast_path *fp, int err, const char *what)
{
    PyObject *exc = PyObject_CallFunction(fp->ref[REF_ERROR], "is", err, what);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* The checked method with the call's own arguments (keywords included). */
PyObject *xe_py_call_slow(PyObject *slow, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_Size(kwnames) : 0;
    PyObject *tuple = PyTuple_New(nargs), *kw = NULL, *r = NULL;
    if (!tuple)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(tuple, i, args[i]);
    }
    if (nkw) {
        kw = PyDict_New();
        for (Py_ssize_t i = 0; kw && i < nkw; i++)
            if (PyDict_SetItem(kw, PyTuple_GetItem(kwnames, i), args[nargs + i]) < 0)
                Py_CLEAR(kw);
        if (!kw)
            goto out;
    }
    r = PyObject_Call(slow, tuple, kw);
out:
    Py_DECREF(tuple);
    Py_XDECREF(kw);
    return r;
}

/* What follows a send (or unmask) that returned flags > 0: Xen's consumers when a peer
 * was Xen's (they run the owed hooks too), else the owed hooks. 0, or -1 with the first
 * exception set. */
static int after_send(struct fast_path *fp, uint32_t port, int rc, int may_be_xen)
{
    if (may_be_xen && (rc & XE_EV_XEN)) {
        PyObject *ports = Py_BuildValue("(k)", (unsigned long)port);
        PyObject *flags = ports ? PyLong_FromLong(rc) : NULL;
        PyObject *r = flags ? PyObject_CallFunctionObjArgs(fp->ref[REF_XEN_SENT],
                                                           fp->ref[REF_DOMAIN], ports, flags,
                                                           NULL)
                            : NULL;
        Py_XDECREF(ports);
        Py_XDECREF(flags);
        if (!r)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    return xe_py_run_owed(fp->ref[REF_RUNNER]);
}

/* ---- d.send(port) ------------------------------------------------------------------- */

static PyObject *fast_send(PyObject *self, PyObject *port)
{
    struct fast_path *fp = (struct fast_path *)self;
    if (!fp->live)
        return torn_down();
    long p = key_port(port);
    if (p < 0)
        return PyObject_CallFunctionObjArgs(fp->ref[REF_SLOW], port, NULL);
    int rc = xe_send_key(fp->base + (uint32_t)p);
    if (rc == 0)
        Py_RETURN_NONE;
    if (rc < 0)
        return raise_errno(fp, -rc, "send");
    if (after_send(fp, (uint32_t)p, rc, 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef send_def = {
    "send", fast_send, METH_O,
    "send($self, port, /)\n--\n\n"
    "Notify the other end of ``port`` (interdomain), or this domain (IPI)."};

/* ---- d.event_channel_op(cmd, arg) --------------------------------------------------- */

/* EvtchnOp.send / .unmask on a bytearray of at least 4 bytes, a port in the key's range:
 * the C call, then the owed hooks, whose EvtchnError is the answer (-errno) as on the
 * general path. Anything else: the general path. */
static PyObject *fast_event_channel_op(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                       PyObject *kwnames)
{
    struct fast_path *fp = (struct fast_path *)self;
    if (!fp->live)
        return torn_down();
    if (kwnames || nargs != 2 || !PyByteArray_CheckExact(args[1]))
        goto general;
    PyObject *cmd = args[0];
    int is_send;
    if (cmd == fp->ref[REF_SEND_CMD]) {
        is_send = 1;
    } else if (cmd == fp->ref[REF_UNMASK_CMD]) {
        is_send = 0;
    } else if (PyLong_CheckExact(cmd)) {
        int overflow = 0;
        long c = PyLong_AsLongAndOverflow(cmd, &overflow);
        if (overflow || (c != fp->send_cmd && c != fp->unmask_cmd))
            goto general;
        is_send = c == fp->send_cmd;
    } else {
        goto general;
    }
    if (PyByteArray_Size(args[1]) < 4)
        goto general;                       /* -EFAULT is the general path's answer */
    uint32_t port;
    memcpy(&port, PyByteArray_AsString(args[1]), sizeof port);
    if (port >= PORT_SPAN)
        goto general;
    int rc = is_send ? xe_send_key(fp->base + port) : xe_unmask_key(fp->base + port);
    if (rc <= 0)
        return PyLong_FromLong(rc);
    if (after_send(fp, port, rc, is_send) < 0) {
        if (!PyErr_ExceptionMatches(fp->ref[REF_ERROR]))
            return NULL;
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        PyObject *e = ev ? PyObject_GetAttrString(ev, "errno") : NULL;
        long err = e ? PyLong_AsLong(e) : -1;
        Py_XDECREF(e);
        if (err < 0 || PyErr_Occurred()) {   /* no errno to answer with: raise it after all */
            PyErr_Clear();
            PyErr_Restore(et, ev, etb);
            return NULL;
        }
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        return PyLong_FromLong(-err);
    }
    return PyLong_FromLong(0);
general:
    return xe_py_call_slow(fp->ref[REF_SLOW], args, nargs, kwnames);
}

static PyMethodDef event_channel_op_def = {
    "event_channel_op", (PyCFunction)(void (*)(void))fast_event_channel_op,
    METH_FASTCALL | METH_KEYWORDS,
    "event_channel_op($self, cmd, arg, /)\n--\n\n"
    "HYPERVISOR_event_channel_op(cmd, arg): 0 or -errno; outputs in arg."};

/* ---- d.guest.unmask(port, vcpu=None) and d.guest.mask(port) ------------------------- */

static PyObject *fast_unmask(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    struct fast_path *fp = (struct fast_path *)self;
    if (!fp->live)
        return torn_down();
    if (!kwnames && (nargs == 1 || (nargs == 2 && args[1] == Py_None))) {
        long p = key_port(args[0]);
        if (p >= 0 && xe_linux_unmask_key(fp->base + (uint32_t)p) >= 0)
            Py_RETURN_NONE;
    }
    return xe_py_call_slow(fp->ref[REF_SLOW], args, nargs, kwnames);
}

static PyMethodDef unmask_def = {
    "unmask", (PyCFunction)(void (*)(void))fast_unmask, METH_FASTCALL | METH_KEYWORDS,
    "unmask($self, port, vcpu=None)\n--\n\n"
    "Unmask as Linux does on ``vcpu`` (default: the port's own notify vCPU)."};

static PyObject *fast_mask(PyObject *self, PyObject *port)
{
    struct fast_path *fp = (struct fast_path *)self;
    if (!fp->live)
        return torn_down();
    long p = key_port(port);
    if (p >= 0 && xe_2l_mask_key(fp->base + (uint32_t)p) == 0)
        Py_RETURN_NONE;
    return PyObject_CallFunctionObjArgs(fp->ref[REF_SLOW], port, NULL);
}

static PyMethodDef mask_def = {
    "mask", fast_mask, METH_O,
    "mask($self, port, /)\n--\n\n"
    "Set the port's mask bit (the guest's own write; FIFO: the word's MASKED)."};

/* ---- the factory ---------------------------------------------------------------------- */

static const struct {
    const char *kind;
    PyMethodDef *def;
    int nrefs;                 /* references the factory takes (after kind and key_base) */
} KINDS[] = {
    {"send", &send_def, REF_XEN_SENT + 1},
    {"event_channel_op", &event_channel_op_def, REF_UNMASK_CMD + 1},
    {"unmask", &unmask_def, REF_RUNNER + 1},
    {"mask", &mask_def, REF_RUNNER + 1},
};

/* make_fast_path(kind, key_base, slow, slot, error, runner[, domain, xen_sent[, send_cmd,
 * unmask_cmd]]) -> the builtin. */
static PyObject *make_fast_path(PyObject *module, PyObject *args)
{
    (void)module;
    Py_ssize_t n = PyTuple_Size(args);
    if (n < 2)
        return PyErr_Format(PyExc_TypeError, "make_fast_path(kind, key_base, slow, ...)");
    PyObject *kind = PyTuple_GetItem(args, 0);
    size_t k = 0;
    while (k < sizeof KINDS / sizeof KINDS[0] &&
           !(PyUnicode_Check(kind) && PyUnicode_CompareWithASCIIString(kind, KINDS[k].kind) == 0))
        k++;
    if (k == sizeof KINDS / sizeof KINDS[0])
        return PyErr_Format(PyExc_ValueError, "unknown fast path %R", kind);
    if (n != 2 + KINDS[k].nrefs)
        return PyErr_Format(PyExc_TypeError, "make_fast_path(%R, ...) takes %d arguments, not %zd",
                            kind, 2 + KINDS[k].nrefs, n);
    unsigned long base = PyLong_AsUnsignedLong(PyTuple_GetItem(args, 1));
    if (PyErr_Occurred())
        return NULL;
    if (base % (1ul << XE_KEY_PORT_BITS) || base >> XE_KEY_PORT_BITS >= XE_NR_SLOTS ||
        base == 0)
        return PyErr_Format(PyExc_ValueError, "bad key base %lu", base);
    if (!PyCallable_Check(PyTuple_GetItem(args, 2 + REF_SLOW)) ||
        !PyCallable_Check(PyTuple_GetItem(args, 2 + REF_ERROR)))
        return PyErr_Format(PyExc_TypeError, "slow and error must be callable");
    if (!PyCFunction_Check(PyTuple_GetItem(args, 2 + REF_RUNNER)))
        return PyErr_Format(PyExc_TypeError, "runner must be a hook runner (make_hook_runner)");
    long send_cmd = -1, unmask_cmd = -1;
    if (KINDS[k].nrefs > REF_SEND_CMD) {
        send_cmd = PyLong_AsLong(PyTuple_GetItem(args, 2 + REF_SEND_CMD));
        unmask_cmd = PyLong_AsLong(PyTuple_GetItem(args, 2 + REF_UNMASK_CMD));
        if (PyErr_Occurred())
            return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(fast_path_type, Py_tp_alloc);
    struct fast_path *fp = (struct fast_path *)alloc(fast_path_type, 0);
    if (!fp)
        return NULL;
    fp->base = (uint32_t)base;
    fp->send_cmd = send_cmd;
    fp->unmask_cmd = unmask_cmd;
    for (int i = 0; i < KINDS[k].nrefs; i++) {
        fp->ref[i] = PyTuple_GetItem(args, 2 + i);
        Py_INCREF(fp->ref[i]);
    }
    fp->live = 1;
    PyObject *fn = PyCFunction_NewEx(KINDS[k].def, (PyObject *)fp, NULL);
    Py_DECREF(fp);
    return fn;
}

int xe_py_add_functions(PyMethodDef *defs)
{
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = -1;
    PyObject *mod = PyImport_ImportModule("xenevtchn._core");
    if (mod) {
        rc = 0;
        for (PyMethodDef *def = defs; rc == 0 && def->ml_name; def++) {
            PyObject *fn = PyCFunction_NewEx(def, NULL, NULL);
            rc = fn ? PyObject_SetAttrString(mod, def->ml_name, fn) : -1;
            Py_XDECREF(fn);
        }
        Py_DECREF(mod);
    }
    if (rc < 0)
        PyErr_Clear();
    PyGILState_Release(g);
    return rc;
}

static PyMethodDef functions[] = {
    {"make_fast_path", make_fast_path, METH_VARARGS,
     "make_fast_path(kind, key_base, slow, slot, error, runner, ...)\n--\n\n"
     "A builtin fast path of a domain: kind is 'send' (+ domain, xen_sent),\n"
     "'event_channel_op' (+ domain, xen_sent, send_cmd, unmask_cmd), 'unmask' or 'mask'."},
    {NULL, NULL, 0, NULL},
};

int xe_py_install_fast_paths(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    if (!fast_path_type)
        fast_path_type = (PyTypeObject *)PyType_FromSpec(&fp_spec);
    if (!fast_path_type)
        PyErr_Clear();
    PyGILState_Release(g);
    return fast_path_type ? xe_py_add_functions(functions) : -1;
}
