/*
 * Between the files of csrc/python/ only (not in the cffi cdef: it names CPython types).
 * Include it after <Python.h>.
 */
#ifndef XE_PYTHON_BUILTINS_H
#define XE_PYTHON_BUILTINS_H

/* Take every record the hypervisor of `runner` (a builtin of make_hook_runner) holds and
 * call every hook owed for them, in order; 0, or -1 with the first exception any hook
 * raised set, once every owed hook ran (run_hooks.c). The builtins of fast_paths.c call
 * it after a call that reported XE_EV_HOOKS. */
int xe_py_run_owed(PyObject *runner);

/* slow(*args, **dict(zip(kwnames, args[nargs:]))): a builtin's fast call handed to the
 * checked method it holds (fast_paths.c). */
PyObject *xe_py_call_slow(PyObject *slow, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames);

/* Add each module-level function of `defs` (up to the one with a NULL name) to
 * xenevtchn._core; 0, or -1 if CPython refused (fast_paths.c). */
int xe_py_add_functions(PyMethodDef *defs);

#endif
