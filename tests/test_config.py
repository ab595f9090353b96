"""One setting, one name: config file, then ABSURD_* environment, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from absurd import config


def build(tmp_path: Path, text: str) -> object:
    conf = tmp_path / "absurd.conf"
    conf.write_text(text)
    parser = config.parser("test", config_files=[str(conf)])
    parser.add_argument("--concurrency", type=config.positive_int, default=4)
    return parser


def test_file_then_environment_then_flags(tmp_path, monkeypatch):
    parser = build(tmp_path, "queue = from-file\nconcurrency = 2\n")
    assert parser.parse_args([]).queue == "from-file"

    monkeypatch.setenv("ABSURD_QUEUE", "from-env")
    assert parser.parse_args([]).queue == "from-env"
    assert parser.parse_args([]).concurrency == 2

    assert parser.parse_args(["--queue", "from-flag"]).queue == "from-flag"


def test_keys_other_scripts_use_are_ignored_in_the_file(tmp_path):
    parser = build(tmp_path, "queue = q\nsome_other_scripts_key = 1\n")

    assert parser.parse_args([]).queue == "q"


def test_bad_value_in_the_file_is_a_clear_usage_error(tmp_path, capsys):
    parser = build(tmp_path, "concurrency = zero\n")

    with pytest.raises(SystemExit) as raised:
        parser.parse_args([])

    assert raised.value.code == 2
    assert "concurrency" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "x"])
def test_positive_float_refuses_nonsense(text):
    with pytest.raises(Exception, match="must be|not a number"):
        config.positive_float(text)


def test_state_dir_follows_systemd_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "svc"))
    assert config.default_state_dir() == tmp_path / "svc"

    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert config.default_state_dir() == tmp_path / "xdg" / "absurd"


def test_file_keys_take_underscores_or_dashes(tmp_path):
    parser = build(tmp_path, "state_dir = /srv/a\nlog-level = debug\n")

    args = parser.parse_args([])

    assert (args.state_dir, args.log_level) == (Path("/srv/a"), "DEBUG")
