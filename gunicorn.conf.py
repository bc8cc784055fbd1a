"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py 'portal:create_app()'`.

Every value can be overridden from the environment (GUNICORN_*), so one file serves
every machine size.
"""

import ctypes
import gc
import glob
import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Sync workers with a few threads each: requests wait on PostgreSQL, not on the CPU.
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
# Restart workers now and then so a slow leak can never grow without bound.
max_requests = 5000
max_requests_jitter = 500
accesslog = None  # the portal logs one structured line per request itself
errorlog = "-"
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
# connections over them. With the one shared socket, the first worker to wake accepted
# every connection that arrived together and kept it (keep-alive): in about one benchmark
# run of three, one worker served all 16 connections on one core, at half the throughput,
# while the other idled. The price: connections still queued on a worker's socket when it
# stops (max_requests, reload) are reset, unless the kernel moves them
# (sysctl net.ipv4.tcp_migrate_req=1, Linux 5.14+). GUNICORN_REUSE_PORT=0 turns it off.
reuse_port = os.environ.get("GUNICORN_REUSE_PORT", "1") != "0"


# glibc's malloc raises its mmap threshold to the size of each mmapped block it frees (up
# to 32 MiB). After the first log-in, the 19-46 MiB Argon2id buffers of later log-ins are
# therefore carved from the heap or a thread's arena and kept there once freed: an idle
# worker measured 155-173 MB instead of about 100. A fixed threshold turns that adaptation
# off, so blocks of 1 MiB and more are mapped and unmapped, at the price of a few page
# faults per log-in. Done with mallopt because MALLOC_MMAP_THRESHOLD_ only works when it is
# in the environment before the process starts, which this file cannot ensure.
M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 1024 * 1024
# glibc also gives threads arenas of their own, up to 8 per core, to spare them waiting for
# each other; Python threads take turns under the GIL anyway, and each arena keeps its own
# free memory (about 2 MB per idle worker, measured, with 4 threads).
M_ARENA_MAX = -8
ARENA_MAX = 2


def tune_malloc(libc=None) -> bool:
    """Apply the settings above under glibc; False, changing nothing, anywhere else."""
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")):
        return False  # an operator's own settings win
    if libc is None:
        try:
            libc = ctypes.CDLL(None)
        except OSError:
            return False
    # musl and the BSD/macOS allocators know neither setting (musl accepts mallopt and
    # ignores it): only glibc gets the calls.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    threshold_set = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    arenas_set = libc.mallopt(M_ARENA_MAX, ARENA_MAX) == 1
    return threshold_set and arenas_set


def post_fork(server, worker):
    # In the worker, before its threads start and before the application is loaded.
    if not tune_malloc():
        server.log.debug("malloc left as it is (not glibc, or MALLOC_* settings given)")


def post_worker_init(worker):
    # The application is loaded now: its ~135,000 objects (modules, mappers, compiled
    # templates) live as long as the worker. Each full collection walked all of them,
    # ~80 ms holding the GIL, which stalled every thread of the worker; under load that
    # came every few hundred requests and made the pages' p95. Frozen, they are out of
    # the collector's sight, and a full collection takes about a millisecond (measured).
    gc.freeze()


# Metrics: each worker is a process with counters of its own, and a scrape reaches one
# worker. With PROMETHEUS_MULTIPROC_DIR set, each worker writes its counters to files there
# and /metrics adds up every file (portal/ops/metrics.py). The variable must be in the
# environment before gunicorn starts: prometheus_client reads it when a worker first
# imports it.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def clear_metrics_dir(folder: str) -> list[str]:
    """Create `folder` if missing and remove the counter files left in it; return them.

    Left by an earlier run, they would be added to this run's totals, and a new worker
    given a dead one's process id would carry on from its counts.
    """
    os.makedirs(folder, exist_ok=True)
    stale = glob.glob(os.path.join(folder, "*.db"))  # prometheus_client's files only
    for path in stale:
        os.remove(path)
    return stale


def refuse_per_worker_limits(environ, workers: int) -> None:
    """Refuse a production start with several workers and no Redis for the rate limits.

    Without Redis each worker counts on its own: 30 log-in attempts allowed become 30 per
    worker. One worker may do without (its memory is the only count), and so may a server
    with the limits switched off; a lost Redis later falls back to memory by design, but a
    fleet must not start that way.
    """
    # Read as the portal reads it (portal.config), limits on unless switched off.
    from portal.config import flag

    limits_on = flag(environ.get("RATELIMIT_ENABLED"), default=True)
    production = environ.get("PORTAL_ENV") == "production"
    if production and limits_on and workers > 1 and not environ.get("REDIS_URL"):
        raise RuntimeError(
            f"REDIS_URL is not set and {workers} workers would each count the rate limits on "
            "their own: set REDIS_URL, or run one worker (GUNICORN_WORKERS=1)."
        )


def on_starting(server):
    # In the master, once, before any worker exists (not on a reload: the running
    # workers' counts stay).
    refuse_per_worker_limits(os.environ, server.cfg.workers)
    folder = os.environ.get(METRICS_DIR_VARIABLE)
    if folder:
        stale = clear_metrics_dir(folder)
        server.log.info("metrics in %s (%d stale file(s) removed)", folder, len(stale))
    elif server.cfg.workers > 1:
        server.log.warning(
            "%s is not set: /metrics will count only the worker that answers each scrape",
            METRICS_DIR_VARIABLE,
        )


def child_exit(server, worker):
    # Only live gauges are dropped: counters and histograms of a dead worker must still
    # count, or the totals would fall back whenever a worker is replaced (max_requests).
    if os.environ.get(METRICS_DIR_VARIABLE):
        # Imported here, in the master, only when metrics are shared between workers.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
