"""gunicorn.conf.py tunes each worker: glibc's malloc (other C libraries left alone), the GC."""

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from gunicorn.config import Config

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


@pytest.fixture
def conf(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("portal_gunicorn_conf", CONF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeGlibc:
    """Records mallopt calls instead of making them: the test process keeps its malloc."""

    def __init__(self):
        self.calls = []

    def gnu_get_libc_version(self):
        return b"2.99"

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


class FakeMusl:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


class FakeLog:
    def __init__(self):
        self.messages = []

    def debug(self, message, *args):
        self.messages.append(message % args if args else message)


def test_gunicorn_accepts_the_hook(conf):
    settings = Config()
    settings.set("post_fork", conf.post_fork)
    assert settings.post_fork is conf.post_fork


def test_glibc_gets_a_fixed_mmap_threshold_and_fewer_arenas(conf):
    libc = FakeGlibc()
    assert conf.tune_malloc(libc) is True
    assert libc.calls == [(-3, 1024 * 1024), (-8, 2)]


def test_other_c_libraries_are_left_alone(conf):
    libc = FakeMusl()
    assert conf.tune_malloc(libc) is False
    assert libc.calls == []


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"])
def test_an_operators_malloc_variables_win(conf, monkeypatch, name):
    monkeypatch.setenv(name, "65536")
    libc = FakeGlibc()
    assert conf.tune_malloc(libc) is False
    assert libc.calls == []


def test_post_fork_survives_a_process_without_a_loadable_libc(conf, monkeypatch):
    class NoCLibrary:
        @staticmethod
        def CDLL(name):  # noqa: N802  (ctypes' name)
            raise OSError("no C library here")

    monkeypatch.setattr(conf, "ctypes", NoCLibrary)
    log = FakeLog()
    conf.post_fork(type("Server", (), {"log": log})(), worker=None)
    assert log.messages and "left as it is" in log.messages[0]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_the_real_glibc_takes_both_settings():
    # In a child process, so that this one keeps its own malloc settings.
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('c', {str(CONF)!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "sys.exit(0 if m.tune_malloc() else 1)"
    )
    child = subprocess.run([sys.executable, "-c", code], env=env, check=False)  # noqa: S603
    assert child.returncode == 0


def test_a_loaded_worker_freezes_what_it_has_so_collections_skip_it(conf):
    import gc

    assert gc.get_freeze_count() == 0
    try:
        conf.post_worker_init(worker=None)
        assert gc.get_freeze_count() > 1000  # everything loaded so far: modules, the app
    finally:
        gc.unfreeze()
