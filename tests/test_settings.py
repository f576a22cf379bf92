"""Settings: precedence, types, and config/default.toml matching the code's defaults."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from server.core.settings import Settings, load_settings

DEFAULT_TOML = Path(__file__).parent.parent / "config" / "default.toml"


def test_default_toml_lists_every_setting_with_the_code_default():
    documented = tomllib.loads(DEFAULT_TOML.read_text())
    text = DEFAULT_TOML.read_text()
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        value = getattr(defaults, f.name)
        if value is None:
            assert f"# {f.name} = " in text, f"{f.name} is not documented"
        else:
            assert documented[f.name] == value, f.name


def test_precedence_file_env_flags(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('port = 9000\nhost = "0.0.0.0"\nworkers = 3\n')
    s = load_settings(
        cfg, env={"STORIES_PORT": "9100", "STORIES_DEV_LOGIN": "true"}, overrides={"port": 9200}
    )
    assert (s.port, s.host, s.workers, s.dev_login) == (9200, "0.0.0.0", 3, True)


def test_demo_implies_dev_login_and_bad_values_are_refused(tmp_path):
    assert load_settings(env={"STORIES_DEMO": "1"}).dev_login is True
    with pytest.raises(ValueError):
        load_settings(env={"STORIES_NO_SUCH_THING": "1"})
    with pytest.raises(ValueError):
        load_settings(env={"STORIES_PORT": "eighty"})
    with pytest.raises(ValueError):
        load_settings(env={"STORIES_JWT_ALGORITHM": "none"})
    with pytest.raises(ValueError):
        load_settings(env={"STORIES_DEFAULT_LIFETIME_H": "7"})
    for key, bad in (("WS_PER_MESSAGE_DEFLATE", "maybe"), ("DEMO", "ture"),
                     ("WS_OPS_PER_SECOND", "-1"), ("WS_SEND_QUEUE_BYTES", "0"),
                     ("MESSAGES_PER_MINUTE", "0")):  # fmt: skip
        with pytest.raises(ValueError, match=key.lower()):
            load_settings(env={f"STORIES_{key}": bad})
    assert (
        load_settings(env={"STORIES_WS_PER_MESSAGE_DEFLATE": "off"}).ws_per_message_deflate is False
    )
    assert (
        load_settings(env={"STORIES_WS_PER_MESSAGE_DEFLATE": "Yes"}).ws_per_message_deflate is True
    )
