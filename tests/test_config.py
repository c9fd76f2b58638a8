"""Configuration from the environment."""

from __future__ import annotations

import pytest

from agent_messaging import Config


def test_database_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMP_DATABASE_URL", "postgresql://u@h:1/d")
    monkeypatch.setenv("POSTGRES_HOST", "elsewhere")
    assert Config().explicit_dsn() == "postgresql://u@h:1/d"


def test_planning_postgres_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMP_DATABASE_URL", raising=False)
    monkeypatch.setenv("POSTGRES_HOST", "db.local")
    monkeypatch.setenv("POSTGRES_PORT", "5433")
    monkeypatch.setenv("POSTGRES_USER", "test_user")
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss word")
    monkeypatch.setenv("POSTGRES_DB", "agent_messaging_test")
    assert Config().explicit_dsn() == (
        "postgresql://test_user:p%40ss%20word@db.local:5433/agent_messaging_test"
    )


def test_nothing_configured_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AMP_DATABASE_URL", "POSTGRES_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert Config().explicit_dsn() is None


def test_amp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMP_MAX_POOL_SIZE", "4")
    monkeypatch.setenv("AMP_DELIVERY_MAX_ATTEMPTS", "7")
    config = Config()
    assert (config.max_pool_size, config.delivery_max_attempts) == (4, 7)


def test_variables_in_any_case_arguments_first_and_bad_values_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("amp_share_listener", "true")
    monkeypatch.setenv("Amp_Poll_Interval", "2.5")
    monkeypatch.setenv("AMP_HANDLER_CONCURRENCY", "3")
    config = Config(handler_concurrency=8)
    assert (config.share_listener, config.poll_interval, config.handler_concurrency) == (
        True,
        2.5,
        8,
    )
    assert "handler_concurrency" in config.explicit_fields
    assert "poll_interval" not in config.explicit_fields
    monkeypatch.setenv("AMP_MAX_POOL_SIZE", "many")
    with pytest.raises(ValueError, match="max_pool_size"):
        Config()


def test_the_listener_is_shared_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMP_SHARE_LISTENER", raising=False)
    assert Config().share_listener is True
    monkeypatch.setenv("AMP_SHARE_LISTENER", "0")
    assert Config().share_listener is False
    assert Config(share_listener=True).share_listener is True
