"""The measurement behind the sweep's local runner: stdlib process pool or Dask's LocalCluster.

    .venv/bin/python tools/measure_sweep_pool.py pool-fork        # what a single-threaded CLI uses
    .venv/bin/python tools/measure_sweep_pool.py pool-forkserver  # what a threaded caller gets
    .venv/bin/python tools/measure_sweep_pool.py dask             # LocalCluster, 2 worker processes

Eight runs of the built-in scenario (5,000 events each) on 2 workers; prints the wall time
from start (imports and start-up included) and the peak RSS of this process and its children.
Needs psutil (installed with dask[distributed]).
"""

import sys, time, os, threading
mode = sys.argv[1]
def main():
    t0 = time.perf_counter()
    import psutil
    import xenevtchn as xe
    from xenevtchn.grid import expand
    from xenevtchn.sweeps import run_points
    points = expand({"seed": list(range(1, 9))}, events=5000)
    peak = [0.0]
    def rss():
        p = psutil.Process()
        return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)]) / 2**20
    def prog(d, t):
        peak[0] = max(peak[0], rss())
    if mode == "pool-forkserver":
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # forces forkserver
    if mode.startswith("pool"):
        recs = run_points(points, workers=2, progress=prog)
    else:
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, Client(cl) as c:
            recs = run_points(points, client=c, progress=prog)
    t = time.perf_counter() - t0
    assert all(r["error"] is None for r in recs)
    print(f"{mode}: {len(recs)} runs, {t:.2f} s wall (incl. imports and start-up), peak RSS parent+workers {peak[0]:.0f} MiB")
if __name__ == "__main__":
    main()
