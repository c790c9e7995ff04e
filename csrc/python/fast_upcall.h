/*
 * The entry points of csrc/python/: C functions written against CPython's API that the
 * cffi module exports. build.py reads this header for the cdef and includes it in the
 * generated source, so every function the generated code calls is declared before use
 * (GCC 14 and clang 16 refuse an implicit declaration). Not part of libxenevtchn.a.
 */
#ifndef XE_PYTHON_FAST_UPCALL_H
#define XE_PYTHON_FAST_UPCALL_H

/* Installs xenevtchn._core.make_fast_upcall; 0 on success, -1 if CPython refused. */
int xe_py_install_fast_upcall(void);
/* Installs xenevtchn._core.run_hooks and .make_hook_runner (run_hooks.c); 0 on success,
 * -1 if CPython refused. */
int xe_py_install_run_hooks(void);
/* Installs xenevtchn._core.make_fast_path (fast_paths.c); 0 on success, -1 if CPython
 * refused. */
int xe_py_install_fast_paths(void);

#endif
