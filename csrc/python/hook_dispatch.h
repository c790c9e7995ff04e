/*
 * Between the files of csrc/python/ only (not in the cffi cdef: it names CPython types).
 * The hook dispatch of run_hooks.c, called by the builtins of fast_paths.c after a call
 * that reported XE_EV_HOOKS.
 */
#ifndef XE_PYTHON_HOOK_DISPATCH_H
#define XE_PYTHON_HOOK_DISPATCH_H

#define Py_LIMITED_API 0x030B0000
#include <Python.h>

/* Take every record the hypervisor of `runner` (a builtin of make_hook_runner) holds and
 * call every hook owed for them, in order; 0, or -1 with the first exception any hook
 * raised set, once every owed hook ran. */
int xe_py_run_owed(PyObject *runner);

#endif
