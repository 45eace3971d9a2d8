"""Fixtures for the wsgate integration tests.

`redis_server` / `make_redis`: a real redis-server (redisfix.py) on a free
loopback port with a password, killed by PID at teardown.
`gateway`: one gateway per test module, default configuration (JSON logs,
shutdown budget 3s). `make_gateway`: a factory for tests that need their own
configuration; every gateway it makes is stopped with SIGTERM at the end of
the test and must exit 0 (or the status the test set in `expect_exit`) within
gw.STOP_DEADLINE: a hang, a crash or any other status fails the test. After
every test, the stderr of every gateway started so far is checked for
sanitizer reports (ASan, LSan, UBSan); `gw.run_cli` checks its own.
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import gw  # noqa: E402
import redisfix  # noqa: E402


def pytest_sessionstart(session):
    b = gw.wsgate_bin()
    if not os.access(b, os.X_OK):
        raise pytest.UsageError(f"wsgate binary not found at {b} (set WSGATE_BIN or run make)")


@pytest.fixture(scope="module")
def gateway():
    g = gw.Gateway()
    yield g
    g.stop()
    problems = g.check_exit("gateway")
    assert not problems, "\n".join(problems)


@pytest.fixture
def make_gateway():
    made = []

    def factory(env=None, **kw):
        g = gw.Gateway(env=env, **kw)
        made.append(g)
        return g

    yield factory
    for g in made:
        g.stop()
    problems = []
    for g in made:
        if g.proc is not None:
            problems += g.check_exit("gateway")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server shared by the tests of a session (tests that kill
    or freeze Redis make their own with redisfix.RedisServer)."""
    r = redisfix.RedisServer()
    yield r
    r.stop()


@pytest.fixture
def make_redis():
    made = []

    def factory(**kw):
        r = redisfix.RedisServer(**kw)
        made.append(r)
        return r

    yield factory
    for r in made:
        r.stop()


@pytest.fixture(scope="session")
def tls_cert():
    d = tempfile.mkdtemp(prefix="wsgate-tls-")
    try:
        yield gw.make_cert(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_sanitizer_reports():
    yield
    bad = []
    for g in gw.ALL:
        errs = g.new_sanitizer_errors()
        if errs:
            bad.append(f"{g.stderr_path}:\n" + "\n".join(errs[:20]) + "\n" + g.stderr()[-4000:])
    if bad:
        pytest.fail("sanitizer reports in gateway stderr:\n" + "\n\n".join(bad), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    # Keep the captured stderr files only when something failed.
    if exitstatus == 0:
        for g in gw.ALL:
            try:
                os.unlink(g.stderr_path)
            except OSError:
                pass
