/*
 * Hypervisor._after's hook runner, as a builtin: take the kicks and wake-ups the C core
 * recorded and call every hook owed for them.
 *
 * Why C: between taking the records (xe_hv_take_hooks) and calling the last hook owed,
 * no Python bytecode of ours may run. CPython runs a signal handler between bytecodes,
 * and an exception it raises there (KeyboardInterrupt, an alarm) would unwind past the
 * records already taken: those vCPUs would never be kicked, and since their upcall flag
 * stays set, never kicked again. Here the only Python code that runs in that span is
 * `plan` (which turns records into calls and changes nothing, so it is simply called
 * again if it raises) and the hooks themselves. Whatever any of them raises, every owed
 * hook is called; the first exception is raised at the end.
 *
 * run_hooks(hv_address, plan) -> None
 *   hv_address: the address of the struct xe_hv (an int);
 *   plan(records): records is a tuple of ints, three per domain (domid, kicked bits,
 *   woken bits) in the order C took them; returns a list [fn, arg, fn, arg, ...] of the
 *   calls to make, in order.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "xenevtchn.h"
#include "fast_upcall.h"

#define BATCH 64                  /* records per xe_hv_take_hooks call */
#define PLAN_TRIES 64             /* a plan interrupted this often in a row gives up */

/* Keep the first exception raised (*type etc. NULL: none yet); drop any later one. */
static void keep_first(PyObject **type, PyObject **value, PyObject **tb)
{
    if (*type) {
        PyErr_Clear();
        return;
    }
    PyErr_Fetch(type, value, tb);
}

/* Every record C holds, as a tuple; NULL with an exception set (out of memory: the
 * records taken so far are lost, as any allocation failure loses the work in hand). */
static PyObject *take_records(struct xe_hv *hv)
{
    uint32_t batch[3 * BATCH];
    PyObject *list = NULL;
    size_t n;
    do {
        n = xe_hv_take_hooks(hv, batch, BATCH);
        if (!n)
            break;
        if (!list && !(list = PyList_New(0)))
            return NULL;
        for (size_t i = 0; i < 3 * n; i++) {
            PyObject *x = PyLong_FromUnsignedLong(batch[i]);
            if (!x || PyList_Append(list, x) < 0) {
                Py_XDECREF(x);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(x);
        }
    } while (n == BATCH);
    if (!list)
        return PyTuple_New(0);
    PyObject *t = PyList_AsTuple(list);
    Py_DECREF(list);
    return t;
}

static PyObject *run_hooks(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *addr, *plan;
    if (!PyArg_ParseTuple(args, "OO", &addr, &plan))
        return NULL;
    struct xe_hv *hv = PyLong_AsVoidPtr(addr);
    if (!hv) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "run_hooks: null hypervisor address");
        return NULL;
    }
    PyObject *records = take_records(hv);
    if (!records)
        return NULL;
    if (PyTuple_Size(records) == 0) {
        Py_DECREF(records);
        Py_RETURN_NONE;
    }
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    PyObject *calls = NULL;
    for (int tries = 0; tries < PLAN_TRIES && !calls; tries++) {
        calls = PyObject_CallFunctionObjArgs(plan, records, NULL);
        if (calls && !PyList_Check(calls)) {
            Py_CLEAR(calls);
            PyErr_SetString(PyExc_TypeError, "run_hooks: plan must return a list");
        }
        if (!calls)
            keep_first(&et, &ev, &etb);
    }
    Py_DECREF(records);
    if (calls) {
        Py_ssize_t n = PyList_Size(calls);
        for (Py_ssize_t i = 0; i + 1 < n; i += 2) {
            PyObject *fn = PyList_GetItem(calls, i), *arg = PyList_GetItem(calls, i + 1);
            if (!fn || !arg) {                     /* the list shrank under us */
                keep_first(&et, &ev, &etb);
                break;
            }
            Py_INCREF(fn);
            Py_INCREF(arg);
            PyObject *r = PyObject_CallFunctionObjArgs(fn, arg, NULL);
            Py_DECREF(fn);
            Py_DECREF(arg);
            if (r)
                Py_DECREF(r);
            else
                keep_first(&et, &ev, &etb);
        }
        Py_DECREF(calls);
    }
    if (et) {
        PyErr_Restore(et, ev, etb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef run_hooks_def = {
    "run_hooks", run_hooks, METH_VARARGS,
    "run_hooks(hv_address, plan)\n--\n\n"
    "Take the hypervisor's recorded kicks and wake-ups and call every hook owed for them\n"
    "(plan(records) -> [fn, arg, ...]); the first exception is raised after all ran."};

int xe_py_install_run_hooks(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = -1;
    PyObject *mod = PyImport_ImportModule("xenevtchn._core");
    if (mod) {
        PyObject *fn = PyCFunction_NewEx(&run_hooks_def, NULL, NULL);
        if (fn)
            rc = PyObject_SetAttrString(mod, "run_hooks", fn);
        Py_XDECREF(fn);
        Py_DECREF(mod);
    }
    if (rc < 0)
        PyErr_Clear();
    PyGILState_Release(g);
    return rc;
}
