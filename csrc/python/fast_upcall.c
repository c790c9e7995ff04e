/*
 * d.guest.do_upcall(vcpu, handler=None), as a builtin function.
 *
 * Written against CPython's C API rather than called through cffi (as fast_paths.c and
 * run_hooks.c are). An upcall returns a list, and a Python function that calls one cffi
 * function and wraps its answer in a list already costs 1.8x a bare cffi call (2.4x with
 * the argument checks) before the upcall does any work, so an upcall with one pending
 * port could never come near the cost of a bare call. A builtin takes its arguments as
 * a cffi function does and builds the list itself.
 *
 * It decides nothing: xe_2l_upcall_key() does the upcall (guest_2l.c); with a handler,
 * the scan calls of guest_2l.c one port at a time and the handler between them, in the
 * order of the checked method. Whatever it does not take (a handler that is not callable,
 * other keywords, an argument that is not a plain int in range, a domain with no 2-level
 * scans, a destroyed one) goes to the checked Python method, which the builtin holds. Not part of csrc/libxenevtchn.a: the static library needs no Python.
 *
 * The builtin holds (slow, state): `slow` is the checked method (so the guest and its
 * scans and out buffers live as long as the builtin does), `state` a capsule with the
 * domain's key base and vCPU count. The GIL stays held: the upcall is short, and the
 * list is built as the ports come.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "xenevtchn.h"
#include "fast_upcall.h"
#include "builtins.h"

struct fast_upcall {
    uint32_t base;             /* slot << XE_KEY_PORT_BITS */
    uint32_t nr_vcpus;
};

/* The capsule has no name: it sits in the builtin's own tuple, which nothing else can
 * reach or change, and a named capsule costs a strcmp on every call. */
#define CAPSULE_NAME NULL

static PyObject *ports_list(const uint32_t *out, uint32_t n)
{
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        PyObject *p = PyLong_FromUnsignedLong(out[i]);
        if (!p) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SetItem(list, i, p);             /* steals p */
    }
    return list;
}

/* More ports than one buffer: the first `cap` are in s->out; the upcall goes on. */
static PyObject *long_upcall(struct xe_scan *s)
{
    PyObject *all = ports_list(s->out, s->cap);
    int32_t n = all ? (int32_t)s->cap : -1;
    while (all && n == (int32_t)s->cap) {
        n = xe_2l_upcall(s);
        if (n <= 0)
            break;
        PyObject *more = ports_list(s->out, (uint32_t)n);
        if (!more || PyList_SetSlice(all, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, more) < 0)
            Py_CLEAR(all);
        Py_XDECREF(more);
    }
    if (!all || n < 0)
        xe_upcall_abort(s);   /* out of memory: the pass in progress goes on next time */
    if (all && n < 0) {
        Py_DECREF(all);
        return PyErr_Format(PyExc_RuntimeError, "upcall failed mid-way (%d)", (int)n);
    }
    return all;
}

/* One port taken: into the list, then the handler; -1 if either raised. */
static int handle_port(PyObject *handled, PyObject *handler, int32_t port)
{
    PyObject *p = PyLong_FromLong(port);
    if (!p || PyList_Append(handled, p) < 0) {
        Py_XDECREF(p);
        return -1;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(handler, p, NULL);
    Py_DECREF(p);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* LinuxGuest.do_upcall(vcpu, handler) of a 2-level domain, whole, as the checked method
 * does it: each pass clears the upcall flag, takes the VIRQ_TIMER port first, then scans
 * one port at a time (clear before handle); passes repeat while the flag was set again or
 * another upcall of the vCPU came in (the handler's own do_upcall returns [] at once).
 * A handler's exception ends the upcall (the nesting count is given back) and
 * propagates; the ports not yet taken stay pending. The domain is the one the scan named
 * when the upcall began, as for the checked method, even if a handler destroys it. */
static PyObject *handler_upcall(struct xe_scan *s, PyObject *handler)
{
    struct xe_domain *d = s->d;
    const struct xe_shinfo *si = &d->si;
    uint32_t v = s->vcpu, owner = 0;
    PyObject *handled = PyList_New(0);
    if (!handled)
        return NULL;
    if (xe_upcall_enter_owned(s, &owner))
        return handled;                 /* the upcall running on this vCPU takes them */
    Py_INCREF(handler);                 /* a handler may drop the caller's reference */
    for (;;) {
        xe_upcall_pass_begin(s);
        xe_vcpu_set_upcall_pending(si, v, 0);
        if (s->timer) {
            int32_t port = xe_2l_take_timer(d, v, s->timer);
            if (port >= 0 && handle_port(handled, handler, port) < 0)
                goto fail;
        }
        xe_2l_scan_begin(d, s);
        int32_t port;
        while ((port = xe_2l_scan_next(d, s)) >= 0)
            if (handle_port(handled, handler, port) < 0)
                goto fail;
        xe_2l_scan_end(s);
        if (xe_upcall_leave_owned(s, si, &owner))
            break;
    }
    Py_DECREF(handler);
    return handled;
fail:
    xe_upcall_abort_owned(s, &owner);
    Py_DECREF(handler);
    Py_DECREF(handled);
    return NULL;
}

static PyObject *do_upcall(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *slow = PyTuple_GetItem(self, 0);
    const struct fast_upcall *st = PyCapsule_GetPointer(PyTuple_GetItem(self, 1), CAPSULE_NAME);
    if (!slow || !st)
        return NULL;
    long v = 0;
    PyObject *vcpu = nargs >= 1 ? args[0] : NULL, *handler = nargs >= 2 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_Size(kwnames) : 0;
    if (nargs > 2)
        goto slow_path;
    for (Py_ssize_t i = 0; i < nkw; i++) {            /* vcpu= and handler=, once each */
        PyObject *name = PyTuple_GetItem(kwnames, i);
        if (!vcpu && PyUnicode_CompareWithASCIIString(name, "vcpu") == 0)
            vcpu = args[nargs + i];
        else if (!handler && PyUnicode_CompareWithASCIIString(name, "handler") == 0)
            handler = args[nargs + i];
        else
            goto slow_path;
    }
    if (handler == Py_None)
        handler = NULL;
    if (handler && !PyCallable_Check(handler))
        goto slow_path;
    if (vcpu) {
        int overflow = 0;
        if (!PyLong_CheckExact(vcpu))
            goto slow_path;
        v = PyLong_AsLongAndOverflow(vcpu, &overflow);
        if (overflow || v < 0 || (unsigned long)v >= st->nr_vcpus)
            goto slow_path;
    }
    uint32_t key = st->base + (uint32_t)v;
    if (handler) {
        struct xe_scan *s = xe_2l_key_scan(key);
        if (!s || !s->d || s->d->abi != XE_ABI_2L)
            goto slow_path;
        return handler_upcall(s, handler);
    }
    int32_t r = xe_2l_upcall_key(key);
    if (r == 0)
        return PyList_New(0);
    if (r > 0 && r < XE_UPCALL_MANY) {
        PyObject *list = PyList_New(1), *p = PyLong_FromLong(r);
        if (!list || !p) {
            Py_XDECREF(list);
            Py_XDECREF(p);
            return NULL;
        }
        PyList_SetItem(list, 0, p);
        return list;
    }
    if (r >= XE_UPCALL_MANY) {
        struct xe_scan *s = xe_2l_key_scan(key);
        uint32_t n = (uint32_t)(r - XE_UPCALL_MANY);
        if (!s)
            return PyErr_Format(PyExc_RuntimeError, "upcall state vanished");
        return n < s->cap ? ports_list(s->out, n) : long_upcall(s);
    }
slow_path:
    return xe_py_call_slow(slow, args, nargs, kwnames);
}

static PyMethodDef do_upcall_def = {
    "do_upcall", (PyCFunction)(void (*)(void))do_upcall, METH_FASTCALL | METH_KEYWORDS,
    "do_upcall($self, /, vcpu=0, handler=None)\n--\n\n"
    "Run the event upcall on ``vcpu``; returns the ports handled, in order."};

static void free_state(PyObject *capsule)
{
    PyMem_Free(PyCapsule_GetPointer(capsule, CAPSULE_NAME));
}

/* make_fast_upcall(slow, key_base, nr_vcpus) -> the builtin. */
static PyObject *make_fast_upcall(PyObject *module, PyObject *args)
{
    PyObject *slow;
    unsigned long base, nv;
    (void)module; /* a module-level function: the module itself is not needed */
    if (!PyArg_ParseTuple(args, "Okk", &slow, &base, &nv))
        return NULL;
    if (!PyCallable_Check(slow))
        return PyErr_Format(PyExc_TypeError, "slow must be callable");
    if (base % (1ul << XE_KEY_PORT_BITS) || base >> XE_KEY_PORT_BITS >= XE_NR_SLOTS ||
        nv == 0 || nv > XE_MAX_VIRT_CPUS)
        return PyErr_Format(PyExc_ValueError, "bad key base %lu or vCPU count %lu", base, nv);
    struct fast_upcall *st = PyMem_Malloc(sizeof *st);
    if (!st)
        return PyErr_NoMemory();
    st->base = (uint32_t)base;
    st->nr_vcpus = (uint32_t)nv;
    PyObject *capsule = PyCapsule_New(st, CAPSULE_NAME, free_state);
    if (!capsule) {
        PyMem_Free(st);
        return NULL;
    }
    PyObject *self = PyTuple_Pack(2, slow, capsule);
    Py_DECREF(capsule);
    if (!self)
        return NULL;
    PyObject *fn = PyCFunction_NewEx(&do_upcall_def, self, NULL);
    Py_DECREF(self);
    return fn;
}

static PyMethodDef functions[] = {
    {"make_fast_upcall", make_fast_upcall, METH_VARARGS,
     "make_fast_upcall(slow, key_base, nr_vcpus)\n--\n\n"
     "The builtin do_upcall of a Linux 2-level guest whose domain has that key base."},
    {NULL, NULL, 0, NULL},
};

int xe_py_install_fast_upcall(void)
{
    return xe_py_add_functions(functions);
}
