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
#include "builtins.h"

#define BATCH 64                  /* records per xe_hv_take_hooks call */
#define RECORD_WORDS 3            /* (domid, kicked bits, woken bits) */
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

/* Every record C holds, as a tuple, after the `n` records already in `first`; NULL with an
 * exception set (out of memory: the records taken so far are lost, as any allocation
 * failure loses the work in hand). */
static PyObject *take_records(struct xe_hv *hv, const uint32_t *first, size_t n)
{
    uint32_t batch[RECORD_WORDS * BATCH];
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    const uint32_t *rec = first;
    if (!rec) {
        n = xe_hv_take_hooks(hv, batch, BATCH);
        rec = batch;
    }
    for (;;) {
        for (size_t i = 0; i < RECORD_WORDS * n; i++) {
            PyObject *x = PyLong_FromUnsignedLong(rec[i]);
            if (!x || PyList_Append(list, x) < 0) {
                Py_XDECREF(x);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(x);
        }
        if (n < BATCH)
            break;
        n = xe_hv_take_hooks(hv, batch, BATCH);
        rec = batch;
    }
    PyObject *t = PyList_AsTuple(list);
    Py_DECREF(list);
    return t;
}

/* Call plan(records) (again if it raises: it changes nothing) and then every call of the
 * list it returns; 0, or -1 with the first exception set once every call was made. */
static int run_plan(PyObject *records, PyObject *plan)
{
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
        return -1;
    }
    return 0;
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
    PyObject *records = take_records(hv, NULL, 0);
    if (!records)
        return NULL;
    int rc = PyTuple_Size(records) ? run_plan(records, plan) : 0;
    Py_DECREF(records);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- the hook runner of a hypervisor ---------------------------------------------------
 *
 * make_hook_runner(hv_address, plan, table, vcpus) -> runner; runner() runs the owed hooks.
 *   table: a list, one entry per hook kind C dispatches (KINDS below): the tuple of
 *     callables of that kind, in call order (the single hook, then the listeners); the
 *     hypervisor replaces the entries when hooks change.
 *   vcpus: a dict domid -> the domain's tuple of Vcpu objects, for every domain whose
 *     hooks C may call itself; a record of any other domain goes to plan.
 *
 * The usual case, records that all name one domain of `vcpus`, is dispatched here with
 * no Python code of ours; anything else (several domains, whose order plan knows) goes
 * to plan exactly as run_hooks does. Either way no bytecode of ours runs between taking
 * the records and calling the last hook owed.
 */

/* The hook kinds dispatched here, in table order; each is called as fn(vcpu) for every
 * vCPU bit set in its column of a record (column 0 is the domid). A vCPU's hooks run
 * together, the kinds in this order, vCPUs ascending by the first kind's bits; then the
 * bits of the later kinds left over, kind by kind (a kick ends the vCPU's poll before
 * other pollers are checked: its wake follows its kick, then the other wakes). A new kind
 * whose hooks take a Vcpu is one more row and one more table entry; a kind whose hooks
 * take other arguments (an HVM domain's interrupts) is planned in Python: its domains are
 * left out of `vcpus`. */
static const struct hook_kind {
    const char *name;
    unsigned column;
} KINDS[] = {
    {"kick", 1},
    {"wake", 2},
};
#define NR_KINDS (sizeof KINDS / sizeof KINDS[0])
_Static_assert(NR_KINDS + 1 == RECORD_WORDS, "one record column per hook kind");

/* Call every fn of `fns` with `arg`; the first exception is kept. */
static void call_all(PyObject *fns, PyObject *arg, PyObject **et, PyObject **ev, PyObject **etb)
{
    Py_ssize_t n = PyTuple_Size(fns);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fn = PyTuple_GetItem(fns, i);
        PyObject *r = fn ? PyObject_CallFunctionObjArgs(fn, arg, NULL) : NULL;
        if (r)
            Py_DECREF(r);
        else
            keep_first(et, ev, etb);
    }
}

/* The calls owed for one domain's merged bits, made in KINDS order (see above). */
static int dispatch_domain(PyObject *vcpus, PyObject *const fns[], uint32_t bits[])
{
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    Py_ssize_t nv = PyTuple_Size(vcpus);
    for (size_t k = 0; k < NR_KINDS; k++) {
        while (bits[k]) {
            unsigned v = (unsigned)__builtin_ctz(bits[k]);
            PyObject *vcpu = (Py_ssize_t)v < nv ? PyTuple_GetItem(vcpus, v) : NULL;
            for (size_t j = k; j < NR_KINDS; j++) {
                if (!(bits[j] >> v & 1))
                    continue;
                bits[j] &= ~(UINT32_C(1) << v);
                if (vcpu && PyTuple_Size(fns[j]))
                    call_all(fns[j], vcpu, &et, &ev, &etb);
                if (k != 0)
                    break;                 /* a later kind's leftovers: one kind a visit */
            }
        }
    }
    if (et) {
        PyErr_Restore(et, ev, etb);
        return -1;
    }
    return 0;
}

/* st: the runner's state, (hv_address, plan, table, vcpus). */
static int run_owed(PyObject *st)
{
    struct xe_hv *hv = PyLong_AsVoidPtr(PyTuple_GetItem(st, 0));
    if (!hv) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "hook runner: no hypervisor");
        return -1;
    }
    uint32_t rec[RECORD_WORDS * BATCH];
    size_t n = xe_hv_take_hooks(hv, rec, BATCH);
    if (!n)
        return 0;
    int general = n == BATCH;
    uint32_t bits[NR_KINDS] = {0};
    for (size_t i = 0; i < n && !general; i++) {
        general = rec[RECORD_WORDS * i] != rec[0];
        for (size_t k = 0; k < NR_KINDS; k++)
            bits[k] |= rec[RECORD_WORDS * i + KINDS[k].column];
    }
    PyObject *table = PyTuple_GetItem(st, 2), *map = PyTuple_GetItem(st, 3);
    PyObject *fns[NR_KINDS] = {NULL};
    PyObject *vcpus = NULL, *key = NULL;
    int rc = -1, any = 0;
    if (!table || !map || !PyList_Check(table) || PyList_Size(table) != (Py_ssize_t)NR_KINDS) {
        general = 1;                       /* not ours to read: plan decides */
    } else {
        for (size_t k = 0; k < NR_KINDS; k++) {
            fns[k] = PyList_GetItem(table, (Py_ssize_t)k);
            if (!fns[k] || !PyTuple_Check(fns[k])) {
                PyErr_Clear();
                general = 1;
                fns[k] = NULL;
                continue;
            }
            Py_INCREF(fns[k]);              /* a hook may change the table meanwhile */
            any |= PyTuple_Size(fns[k]) != 0;
        }
    }
    if (!general) {
        key = PyLong_FromUnsignedLong(rec[0]);
        if (!key)
            goto out;
        vcpus = PyDict_GetItemWithError(map, key);   /* borrowed */
        if (vcpus && PyTuple_Check(vcpus)) {
            if (!any) {
                vcpus = NULL;
                rc = 0;                    /* the bits are taken; nobody to call */
                goto out;
            }
            Py_INCREF(vcpus);
            rc = dispatch_domain(vcpus, fns, bits);
            goto out;
        }
        vcpus = NULL;
        if (PyErr_Occurred())
            PyErr_Clear();                 /* plan answers for it */
    }
    {
        PyObject *plan = PyTuple_GetItem(st, 1);
        PyObject *records = plan ? take_records(hv, rec, n) : NULL;
        if (records) {
            rc = run_plan(records, plan);
            Py_DECREF(records);
        }
    }
out:
    Py_XDECREF(key);
    Py_XDECREF(vcpus);
    for (size_t k = 0; k < NR_KINDS; k++)
        Py_XDECREF(fns[k]);
    return rc;
}

int xe_py_run_owed(PyObject *runner)
{
    PyObject *st = PyCFunction_GetSelf(runner);
    if (!st || !PyTuple_Check(st) || PyTuple_Size(st) != 4) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "not a hook runner");
        return -1;
    }
    return run_owed(st);
}

static PyObject *hook_runner(PyObject *self, PyObject *unused)
{
    (void)unused;
    if (run_owed(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef hook_runner_def = {
    "run_owed", hook_runner, METH_NOARGS,
    "run_owed()\n--\n\n"
    "Take the hypervisor's recorded kicks and wake-ups and call every hook owed for them;\n"
    "the first exception is raised after all ran."};

/* make_hook_runner(hv_address, plan, table, vcpus) -> the hypervisor's runner. */
static PyObject *make_hook_runner(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *addr, *plan, *table, *map;
    if (!PyArg_ParseTuple(args, "OOO!O!", &addr, &plan, &PyList_Type, &table, &PyDict_Type, &map))
        return NULL;
    if (!PyLong_AsVoidPtr(addr)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "make_hook_runner: null hypervisor address");
        return NULL;
    }
    if (!PyCallable_Check(plan))
        return PyErr_Format(PyExc_TypeError, "plan must be callable");
    PyObject *state = PyTuple_Pack(4, addr, plan, table, map);
    if (!state)
        return NULL;
    PyObject *fn = PyCFunction_NewEx(&hook_runner_def, state, NULL);
    Py_DECREF(state);
    return fn;
}

static PyMethodDef functions[] = {
    {"run_hooks", run_hooks, METH_VARARGS,
     "run_hooks(hv_address, plan)\n--\n\n"
     "Take the hypervisor's recorded kicks and wake-ups and call every hook owed for them\n"
     "(plan(records) -> [fn, arg, ...]); the first exception is raised after all ran."},
    {"make_hook_runner", make_hook_runner, METH_VARARGS,
     "make_hook_runner(hv_address, plan, table, vcpus)\n--\n\n"
     "The hook runner of a hypervisor: C dispatches the kinds of `table` for the domains\n"
     "of `vcpus` (domid -> tuple of Vcpu); everything else goes through plan."},
    {NULL, NULL, 0, NULL},
};

int xe_py_install_run_hooks(void)
{
    return xe_py_add_functions(functions);
}
