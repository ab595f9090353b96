"""Connections: clear errors, redacted DSNs, multi-host DSNs, reconnect with backoff."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from absurd import database
from absurd.errors import ConfigError, DatabaseUnavailable
from pgcluster import free_port


def test_redact_removes_the_password():
    redacted = database.redact("host=db1 user=absurd password=s3cret dbname=absurd")

    assert "s3cret" not in redacted
    assert "host=db1" in redacted


def test_redact_handles_urls():
    assert "s3cret" not in database.redact("postgresql://absurd:s3cret@db1/absurd")


def test_unparseable_dsn_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid dsn"):
        database.check_dsn("host=db1 nonsense_key=1")


def test_unreachable_server_says_where_and_hides_the_password():
    port = free_port()
    with pytest.raises(DatabaseUnavailable) as raised:
        database.connect(f"host=127.0.0.1 port={port} user=x password=s3cret")
    assert f"port={port}" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_multi_host_dsn_skips_a_dead_host(pg_cluster):
    dead = free_port()
    dsn = (f"host=127.0.0.1,127.0.0.1 port={dead},{pg_cluster.port} user=postgres "
           "dbname=postgres target_session_attrs=read-write")

    with database.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_backoff_grows_to_the_cap_with_jitter():
    delays = list(itertools.islice(database.backoff_delays(0.2, 2.0), 10))

    assert all(0.1 <= d <= 2.0 for d in delays)
    assert max(delays[5:]) > max(delays[:2])


def test_connect_with_retry_waits_for_the_server(own_cluster):
    own_cluster.stop()
    restart = threading.Timer(1.0, own_cluster.start)
    restart.start()

    conn = database.connect_with_retry(own_cluster.dsn(), give_up_after_s=30,
                                       on_wait=lambda exc, delay: None)
    restart.join()

    assert conn is not None
    with conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_connect_with_retry_gives_up_in_time():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        database.connect_with_retry(f"host=127.0.0.1 port={port}", give_up_after_s=1,
                                    on_wait=lambda exc, delay: None)
    assert time.monotonic() - started < 10


def test_connect_with_retry_stops_when_asked():
    port = free_port()
    assert database.connect_with_retry(
        f"host=127.0.0.1 port={port}", should_stop=lambda: True,
        on_wait=lambda exc, delay: None,
    ) is None


def test_configured_dsn_never_falls_back_to_embedded(tmp_path):
    port = free_port()
    dsn = database.resolve_dsn(f"host=127.0.0.1 port={port}", tmp_path)

    assert dsn == f"host=127.0.0.1 port={port}"
    assert not (tmp_path / "pgdata").exists()


def test_unparseable_dsn_error_repeats_no_part_of_it():
    with pytest.raises(ConfigError) as raised:
        database.check_dsn("host=db1 password=s3cret tail")
    assert "s3cret" not in str(raised.value) and "tail" not in str(raised.value)


def test_refused_connection_keeps_every_line_of_the_reason():
    port = free_port()
    with pytest.raises(DatabaseUnavailable) as raised:
        database.connect(f"host=127.0.0.1 port={port}")
    assert "refused" in str(raised.value).lower()
    assert "\t" not in str(raised.value)
