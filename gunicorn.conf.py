"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py 'portal:create_app()'`.

Every value can be overridden from the environment (GUNICORN_*), so one file serves
every machine size.
"""

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
