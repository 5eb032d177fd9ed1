"""The CPU engine's defaults: eager mode, and the model's threads bound to every core."""
from __future__ import annotations

import pytest

from reasonloom.backends.vllm import cpu_defaults
from reasonloom.bench.ray_runner import engine_cli_args


@pytest.mark.parametrize("cores, expected", [
    ({0, 1}, "0-1"), ({0}, "0"), ({0, 1, 2, 3, 8, 9, 11}, "0-3,8-9,11")])
def test_all_cores_is_vllms_list_syntax(monkeypatch, cores, expected):
    monkeypatch.setattr(cpu_defaults.os, "sched_getaffinity", lambda pid: cores)
    assert cpu_defaults.all_cores() == expected


def test_role_binding_beats_the_environment_which_beats_every_core(monkeypatch):
    monkeypatch.setattr(cpu_defaults, "all_cores", lambda: "0-7")
    monkeypatch.delenv(cpu_defaults.BIND_ENV, raising=False)
    assert cpu_defaults.threads_bind() == "0-7"
    monkeypatch.setenv(cpu_defaults.BIND_ENV, "auto")
    assert cpu_defaults.threads_bind() == "auto"
    assert cpu_defaults.threads_bind("2-3") == "2-3"
    assert cpu_defaults.threads_bind("all") == "0-7"


def test_cpu_settings_default_to_eager_and_keep_the_binding_out_of_vllms_arguments(monkeypatch):
    monkeypatch.setattr(cpu_defaults, "on_cpu_platform", lambda: True)
    args, env, start_env = cpu_defaults.cpu_engine_settings({"max_model_len": 4096,
                                                             "cpu_threads_bind": "nobind"})
    assert args == {"max_model_len": 4096, "enforce_eager": True,
                    "distributed_executor_backend": "uni"}
    assert env == {cpu_defaults.BIND_ENV: "nobind", cpu_defaults.MP_ENV: "0"}
    assert start_env == {}   # vLLM's own start method (spawn on CPU)
    args, env, start_env = cpu_defaults.cpu_engine_settings(
        {"enforce_eager": False, "distributed_executor_backend": "mp", "engine_start": "fork"})
    assert args == {"enforce_eager": False, "distributed_executor_backend": "mp"}
    assert cpu_defaults.MP_ENV not in env   # a role that asks for the worker process gets it
    assert start_env == {cpu_defaults.START_ENV: "fork"}
    assert "--cpu-threads-bind" not in engine_cli_args(args)


def test_an_unknown_start_method_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(cpu_defaults, "on_cpu_platform", lambda: True)
    with pytest.raises(ValueError, match="engine_start must be fork or spawn, not 'thread'"):
        cpu_defaults.cpu_engine_settings({"engine_start": "thread"})


def test_gpu_settings_keep_vllms_compiled_default_and_start_method(monkeypatch):
    monkeypatch.setattr(cpu_defaults, "on_cpu_platform", lambda: False)
    settings = cpu_defaults.cpu_engine_settings({})
    assert "enforce_eager" not in settings.args and settings.start_env == {}
