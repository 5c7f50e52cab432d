"""The environment pool (env_pool.py) against real service replicas: spreading, stickiness, failover.

Replica A is the suite's shared service; the replicas these tests stop are their own processes.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from browser_control.client import EnvRequestError, EnvServiceUnavailable
from browser_control.env_pool import EnvPool, PoolConfigError, make_client, parse_urls, pick_healthy_url
from browser_control.rollout.environment import BrowserEnvironment
from tests.conftest import ServiceProcess, free_port

pytestmark = [pytest.mark.browser]


def _replica(chromium: str | None, tmp_path: Path, name: str) -> ServiceProcess:
    service = ServiceProcess(
        "--max-sessions", "16", "--workers", "1", log_path=tmp_path / f"{name}.log", chromium=chromium
    )
    try:
        service.wait_healthy(120)
    except Exception:
        service.stop()
        raise
    return service


@pytest.fixture(scope="module")
def replica_b(chromium: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = _replica(chromium, tmp_path_factory.mktemp("replica_b"), "b")
    yield service
    service.stop()


def _kill(service: ServiceProcess) -> None:
    """SIGKILL the replica and its browsers, as a crashed container would go."""
    os.killpg(service.proc.pid, signal.SIGKILL)
    service.proc.wait(30)


def _pool(*urls: str, **kwargs: object) -> EnvPool:
    # One retry with a short backoff: a dead replica is recognised in about a second, not the default 7.5 s.
    return EnvPool(list(urls), retries=1, backoff_s=0.2, timeout_s=30, **kwargs)  # type: ignore[arg-type]


def test_parse_urls_accepts_a_comma_list_and_names_a_bad_entry() -> None:
    assert parse_urls(" http://a:8000/, http://b:8000 ,http://a:8000") == ["http://a:8000", "http://b:8000"]
    with pytest.raises(PoolConfigError, match="'b:8000' is not an http"):
        parse_urls("http://a:8000,b:8000")
    with pytest.raises(PoolConfigError, match="no address"):
        parse_urls(" , ")
    assert isinstance(make_client("http://a:8000"), type(make_client("http://b:8000")))
    assert isinstance(make_client("http://a:8000,http://b:8000"), EnvPool)


def test_sessions_are_spread_over_the_replicas_and_stay_on_theirs(env_url: str, replica_b: ServiceProcess) -> None:
    with _pool(env_url, replica_b.url, rank=0) as pool:
        health = pool.wait_until_healthy(60)
        assert health.max_sessions == 64 + 16  # the healthy replicas' caps add up
        sessions = [pool.reset("click-test", seed=i, max_episode_steps=3).session_id for i in range(4)]
        assert pool.sessions_by_replica() == {env_url: 2, replica_b.url: 2}
        # Each session lives on one replica only: the other does not know it.
        on_b = [s for s in sessions if pool._bound[s].url == replica_b.url]
        with httpx.Client(base_url=env_url) as a:
            answer = a.post("/step", json={"session_id": on_b[0], "action": "click('13')"})
            assert answer.status_code == 404
        # ...and every call of a session goes to its replica: steps, a reset in place, close.
        for session in sessions:
            assert pool.step(session, "noop()").step == 1
            assert pool.reset("click-test", seed=9, session_id=session).session_id == session
            pool.close_session(session)
        assert pool.sessions_by_replica() == {env_url: 0, replica_b.url: 0}
        assert sorted(r.created for r in pool.replicas) == [2, 2]


def test_ranks_start_on_different_replicas(env_url: str, replica_b: ServiceProcess) -> None:
    firsts = []
    for rank in (0, 1):
        with _pool(env_url, replica_b.url, rank=rank) as pool:
            session = pool.reset("click-test", seed=1).session_id
            firsts.append(pool._bound[session].url)
            pool.close_session(session)
    assert firsts == [env_url, replica_b.url]


def test_a_replica_that_fails_its_health_check_is_skipped_and_said_so(
    env_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="browser_control.env_pool")
    with _pool(down, env_url, rank=0) as pool:
        health = pool.wait_until_healthy(30, grace_s=1)
        assert health.max_sessions == 64
        assert pool.healthy_urls() == [env_url]
        assert any(down in r.message and "fails its health check" in r.message for r in caplog.records)
        sessions = [pool.reset("click-test", seed=i).session_id for i in range(3)]
        assert all(pool._bound[s].url == env_url for s in sessions)
        for session in sessions:
            pool.close_session(session)
    assert pick_healthy_url(f"{down},{env_url}") == env_url


def test_no_healthy_replica_at_start_is_a_clear_error() -> None:
    downs = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with _pool(*downs) as pool, pytest.raises(EnvServiceUnavailable, match="no replica of the environment pool"):
        pool.wait_until_healthy(1.0)


@pytest.mark.slow
def test_a_dead_replica_loses_its_episodes_and_new_sessions_go_to_the_other(
    env_url: str, chromium: str | None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Kill one replica mid-episode: its episodes are no data, the next resets run on the other, the run goes on."""
    doomed = _replica(chromium, tmp_path, "doomed")
    caplog.set_level(logging.WARNING)
    try:
        with _pool(env_url, doomed.url, rank=1, recheck_s=3600) as pool:
            envs = [BrowserEnvironment(client=pool, max_episode_steps=5, faults_are_no_data=True) for _ in range(4)]
            for i, env in enumerate(envs):
                env.reset("click-test", seed=i)
            on_doomed = [e for e in envs if pool._bound[e._session_id].url == doomed.url]
            assert len(on_doomed) == 2
            _kill(doomed)
            for env in envs:
                env.focus("1")  # one action each: on the dead replica it costs the episode, not the run
            assert [e.get_reward() is None for e in envs] == [e in on_doomed for e in envs]
            assert any("fails its health check" in r.message and doomed.url in r.message for r in caplog.records)
            # The next episode of every environment starts on the live replica and is played normally.
            for i, env in enumerate(envs):
                env.reset("click-test", seed=10 + i)
                assert pool._bound[env._session_id].url == env_url
                env.click("13")
                assert env.get_reward() is not None
            assert pool.dead.error is None
            for env in envs:
                env._close()
    finally:
        doomed.stop()


def test_when_every_replica_is_dead_the_pool_is_dead_and_stays_so(chromium: str | None, tmp_path: Path) -> None:
    only = _replica(chromium, tmp_path, "only")
    try:
        with _pool(only.url, f"http://127.0.0.1:{free_port()}") as pool:
            env = BrowserEnvironment(client=pool, max_episode_steps=5, faults_are_no_data=True)
            env.reset("click-test", seed=1)
            _kill(only)
            with pytest.raises(EnvServiceUnavailable, match="no replica of the environment pool"):
                env.focus("1")
            assert pool.dead.error is not None
            with pytest.raises(EnvServiceUnavailable):  # latched: at once, no retries
                pool.reset("click-test", seed=2)
    finally:
        only.stop()


def test_a_session_unknown_to_the_pool_is_410_so_the_environment_starts_a_new_one(env_url: str) -> None:
    with _pool(env_url, f"http://127.0.0.1:{free_port()}") as pool:
        with pytest.raises(EnvRequestError) as lost:
            pool.step("no-such-session", "noop()")
        assert lost.value.status == 410 and lost.value.error == "session_lost"
        with pytest.raises(EnvRequestError, match="404"):
            pool.close_session("no-such-session")


def test_a_full_replica_passes_the_new_session_to_the_next_and_counts_stay_right(
    env_url: str, chromium: str | None, tmp_path: Path
) -> None:
    small = ServiceProcess("--max-sessions", "1", "--workers", "1", log_path=tmp_path / "small.log", chromium=chromium)
    try:
        small.wait_healthy(120)
        with _pool(small.url, env_url, rank=0) as pool:
            first = pool.reset("click-test", seed=1).session_id  # the small replica: its one place
            second = pool.reset("click-test", seed=2).session_id  # the other: fewer sessions there
            third = pool.reset("click-test", seed=3).session_id  # tie, the small one's turn: full (503 session_cap)
            assert [pool._bound[s].url for s in (first, second, third)] == [small.url, env_url, env_url]
            assert pool.sessions_by_replica() == {small.url: 1, env_url: 2}
            assert pool.healthy_urls() == [small.url, env_url]  # full is not unhealthy
            for session in (first, second, third):
                pool.close_session(session)
            assert pool.sessions_by_replica() == {small.url: 0, env_url: 0}
    finally:
        small.stop()
