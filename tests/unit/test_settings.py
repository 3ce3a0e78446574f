"""Settings decode from FLEET_* variables; errors name the variable; secrets never shown."""

from __future__ import annotations

import pytest

from workers.errors import ConfigError
from workers.settings import load_settings, redact_url


def test_defaults_and_overrides() -> None:
    s = load_settings({"FLEET_BATCH_SIZE": "250", "FLEET_MAX_DELIVERIES": "3"})
    assert s.batch_size == 250
    assert s.max_deliveries == 3
    assert s.shutdown_grace_seconds == 25.0
    assert s.stream_retention_days == 7.0


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FLEET_BATCH_SIZE": "many"}, "FLEET_BATCH_SIZE"),
        ({"FLEET_BATCH_SIZE": "0"}, "FLEET_BATCH_SIZE"),
        ({"FLEET_HTTP_PORT": "70000"}, "FLEET_HTTP_PORT"),
        ({"FLEET_LOG_LEVEL": "chatty"}, "FLEET_LOG_LEVEL"),
        ({"FLEET_VALKEY_URL": "localhost:6379"}, "FLEET_VALKEY_URL"),
        ({"FLEET_DATABASE_URL": "mysql://x"}, "FLEET_DATABASE_URL"),
        ({"FLEET_SNAPSHOT_STALE_DAYS": "3"}, "FLEET_SNAPSHOT_STALE_DAYS"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert variable in message
    assert "\n" not in message


def test_passwords_never_appear_in_errors_or_public_settings() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"FLEET_VALKEY_URL": "http://user:hunter2@host:1/0"})
    assert "hunter2" not in str(info.value)
    s = load_settings(
        {
            "FLEET_VALKEY_URL": "rediss://worker:s3cret@valkey:6380/0",
            "FLEET_DATABASE_URL": "postgresql://fleet:pgpass@db/fleet?sslmode=verify-full",
            "FLEET_API_TOKEN": "tok-123",
        }
    )
    shown = repr(s.public())
    for secret in ("s3cret", "pgpass", "tok-123"):
        assert secret not in shown
    assert "rediss://worker:***@valkey:6380/0" in shown


def test_redact_url_leaves_urls_without_password_alone() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("postgresql://a:b@h/d") == "postgresql://a:***@h/d"


def test_tls_and_acl_urls_are_accepted() -> None:
    s = load_settings({"FLEET_VALKEY_URL": "rediss://scan-metrics:pw@valkey:6380/0"})
    assert s.valkey_url.startswith("rediss://")
