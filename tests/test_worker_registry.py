"""The task registry: parsing policies, loading handlers, rendering commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from absurd import registry
from absurd.errors import ConfigError
from absurd.pipeline import STAGES

REPO = Path(__file__).resolve().parent.parent


def test_built_in_routing_is_the_shipped_tasks_conf_of_the_nine_stages():
    shipped = registry.load_policies(REPO / "etc" / "tasks.conf")

    assert registry.default_routing() == (REPO / "etc" / "tasks.conf").read_text()
    assert sorted(shipped) == sorted(STAGES)
    assert shipped["organize-files"].handler == "absurd.pipeline:organize_files"
    assert shipped["organize-files"].mode == "thread"
    assert {p.mode for n, p in shipped.items() if n != "organize-files"} == {"process"}


def test_without_the_pipeline_only_organize_files_loads():
    loaded = registry.load_handlers(registry.parse_policies(registry.default_routing()))

    assert loaded.task_names == ["organize-files"]
    assert sorted(loaded.problems) == sorted(set(STAGES) - {"organize-files"})
    assert "No module named 'dsa110_contimg'" in loaded.problems["imaging"]


def test_policy_keys_defaults_and_spawn_options():
    policies = registry.parse_policies("""
[DEFAULT]
max_attempts = 7

[solve]
handler = handlers:noop
mode = process
timeout = 90
backoff_base = 2
backoff_max = 60
kill_grace = 3

[wsclean]
command = wsclean -name {out} {ms}
non_retryable_exit_codes = 2, 64
""")

    solve, wsclean = policies["solve"], policies["wsclean"]
    assert solve.spawn_options() == {"max_attempts": 7, "timeout_s": 90.0,
                                     "backoff_base_s": 2.0, "backoff_max_s": 60.0}
    assert solve.kill_grace_s == 3.0
    assert wsclean.mode == "process"
    assert wsclean.command == ("wsclean", "-name", "{out}", "{ms}")
    assert wsclean.non_retryable_exit_codes == {2, 64}
    assert wsclean.timeout_s is None


@pytest.mark.parametrize("text, complaint", [
    ("[a]\nmode = thread\n", "exactly one of handler"),
    ("[a]\nhandler = m:f\ncommand = x\n", "exactly one of handler"),
    ("[a]\nhandler = m:f\nmode = fork\n", "use thread or process"),
    ("[a]\nhandler = m:f\ntimeout = -1\n", "timeout = '-1'"),
    ("[a]\nhandler = m:f\ntimeout = nan\n", "timeout = 'nan'"),
    ("[a]\nhandler = m:f\nmax_attempts = 2.5\n", "whole number"),
    ("[a]\nhandler = m:f\nbackoff_base = 10\nbackoff_max = 5\n", "backoff_max"),
    ("[a]\nhandler = m:f\nretries = 3\n", "unknown keys retries"),
    ("[a]\nhandler = just_a_module\n", "package.module:function"),
    ("[a]\ncommand = tool 'unclosed\n", "cannot be split"),
    ("[bad name!]\nhandler = m:f\n", "invalid task name"),
    ("[a]\nhandler = m:f\n[a]\nhandler = m:g\n", "already exists"),
    ("", "no task sections"),
])
def test_invalid_registry_is_refused_with_the_reason(text, complaint):
    with pytest.raises(ConfigError) as refused:
        registry.parse_policies(text, "tasks.conf")
    assert complaint in str(refused.value)


def test_a_named_file_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the tasks config"):
        registry.load_policies(tmp_path / "nope.conf")


def test_handlers_that_cannot_load_are_reported_not_fatal(tmp_path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    policies = registry.parse_policies(f"""
[good]
handler = handlers:echo
[missing-module]
handler = no_such_module:f
[missing-function]
handler = handlers:no_such_function
[not-callable]
handler = workerproc:QUEUE
[missing-in-child]
handler = no_such_module:f
mode = process
[good-in-child]
handler = handlers:report_pid
mode = process
[tool]
command = {tool} {{x}}
[no-tool]
command = /nonexistent/tool
[not-on-path]
command = no-such-program-anywhere --flag
""")

    loaded = registry.load_handlers(policies)

    assert loaded.task_names == ["good", "good-in-child", "tool"]
    assert set(loaded.problems) == {"missing-module", "missing-function",
                                    "not-callable", "missing-in-child", "no-tool",
                                    "not-on-path"}
    assert "No module named 'no_such_module'" in loaded.problems["missing-in-child"]
    assert "not callable" in loaded.problems["not-callable"]
    assert "not on PATH" in loaded.problems["not-on-path"]
    assert loaded.handlers["good"].takes_context
    assert loaded.handlers["good-in-child"].function is None  # never imported here


def test_one_token_stays_one_argument_whatever_the_param_holds():
    template = ("tool", "--in", "{ms}", "--out={out}/x", "{{literal}}", "{n}", "{o}")
    params = {"ms": "a b; rm -rf / $(reboot)", "out": "/data/é", "n": 3,
              "o": {"k": [1, True]}}

    argv = registry.render_command(template, params)

    assert argv == ["tool", "--in", "a b; rm -rf / $(reboot)", "--out=/data/é/x",
                    "{literal}", "3", '{"k":[1,true]}']


@pytest.mark.parametrize("params", [{}, {"ms": None}])
def test_a_missing_param_names_itself(params):
    with pytest.raises(KeyError, match="ms"):
        registry.render_command(("tool", "{ms}"), params)


def test_takes_context_follows_the_signature():
    def one(params): ...
    def two(params, ctx): ...
    def none(): ...

    assert registry.takes_context(two)
    assert not registry.takes_context(one)
    with pytest.raises(ConfigError, match="takes no arguments"):
        registry.takes_context(none)
