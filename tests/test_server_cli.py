"""``streamer serve`` flags, and SIGTERM: stop accepting, flush every stream, exit 0."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from streamer.server import cli
from tests.fakes import tone_conversation
from tests.test_server_support import finals, pcm, read_all, run, scaled

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"streamer serving on http://127\.0\.0\.1:(\d+)")
FAKE_SERVER = """
import asyncio, logging
from streamer.server import ServerSettings
from streamer.server.cli import LOG_FORMAT, serve
from tests.fakes import fake_frontend
logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
asyncio.run(serve(fake_frontend(), ServerSettings(), "127.0.0.1", 0))
"""


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_env_defaults_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_TOKEN", "from-env")
    monkeypatch.setenv("PORT", "5123")
    args = _parse("--max-connections", "3", "--allowed-origins", "http://a, http://b",
                  "--idle-timeout", "0")
    settings = cli.settings_from_args(args)
    assert settings.token == "from-env" and settings.max_connections == 3
    assert settings.allowed_origins == ("http://a", "http://b")
    assert settings.idle_timeout == 0
    assert cli.resolve_port(args.port) == 5123
    assert cli.resolve_port(7000) == 7000
    assert cli.settings_from_args(_parse("--token", "flag")).token == "flag"
    monkeypatch.setenv("PORT", "http")
    with pytest.raises(ValueError):
        cli.resolve_port(None)
    monkeypatch.delenv("PORT")
    assert cli.resolve_port(None) == cli.DEFAULT_PORT


def test_token_from_a_file_or_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.delenv("STREAMER_TOKEN", raising=False)
    file = tmp_path / "token"
    file.write_text("  from-file\n")
    assert cli.settings_from_args(_parse("--token-file", str(file))).token == "from-file"
    monkeypatch.setenv("STREAMER_TOKEN", "from-env\n")
    assert cli.settings_from_args(_parse()).token == "from-env"
    assert cli.settings_from_args(_parse("--token-file", str(file))).token == "from-file"
    with pytest.raises(SystemExit):
        _parse("--token", "a", "--token-file", str(file))
    file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        cli.settings_from_args(_parse("--token-file", str(file)))
    with pytest.raises(ValueError, match="No such file"):
        cli.settings_from_args(_parse("--token-file", str(tmp_path / "absent")))
    assert cli.main(_parse("--token-file", str(tmp_path / "absent"))) == 2


def test_help_says_a_token_on_the_command_line_is_visible(
        caplog: pytest.LogCaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--token-file" in text and "STREAMER_TOKEN" in text
    assert "visible to every user of this machine" in text
    assert cli.main(_parse("--token", "t", "--max-connections", "0")) == 2
    assert "--token is visible to other users" in caplog.text


def test_every_flag_takes_its_streamer_variable_and_the_command_line_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"STREAMER_MAX_CONNECTIONS": "7", "STREAMER_PUBLIC_METRICS": "true",
                        "STREAMER_REDIS_URL": "redis://cache:6379/2",
                        "STREAMER_STATE_TTL": "120", "STREAMER_SHUTDOWN_TIMEOUT": "45",
                        "STREAMER_HOST": "0.0.0.0", "STREAMER_PRESET": "embedded",
                        "STREAMER_LOG_LEVEL": "WARNING"}.items():
        monkeypatch.setenv(name, value)
    args = _parse()
    settings = cli.settings_from_args(args)
    assert (settings.max_connections, settings.public_metrics, settings.redis_url,
            settings.state_ttl, settings.shutdown_timeout) == (
        7, True, "redis://cache:6379/2", 120.0, 45.0)
    assert (args.host, args.preset, args.log_level) == ("0.0.0.0", "embedded", "WARNING")
    assert cli.settings_from_args(_parse("--max-connections", "9")).max_connections == 9
    monkeypatch.setenv("STREAMER_PUBLIC_METRICS", "0")
    assert cli.settings_from_args(_parse()).public_metrics is False
    # Every other flag reads its variable too: a value unlike its default, set only in
    # the environment, is what the flag parses to.
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    flags = [a for a in parser._actions if any(o.startswith("--") for o in a.option_strings)
             and a.dest not in ("help", "token")]
    assert len(flags) > 30
    for action in flags:
        name = cli.env_name(next(o for o in action.option_strings if o.startswith("--")))
        if isinstance(action, argparse._StoreTrueAction):
            raw, expected = "yes", True
        elif action.choices:
            expected = raw = next(c for c in action.choices if c != action.default)
        elif action.type in (int, float):
            expected = action.type(13)
            raw = str(expected)
        else:
            expected = raw = "from-the-environment"
        reparsed = argparse.ArgumentParser()
        cli.add_arguments(reparsed)
        cli.apply_environment(reparsed, {name: raw})
        assert getattr(reparsed.parse_args([]), action.dest) == expected, name


@pytest.mark.parametrize("name, value, reason", [
    ("STREAMER_MAX_CONNECTIONS", "many", "invalid literal"),
    ("STREAMER_PUBLIC_METRICS", "maybe", "1/0"),
    ("STREAMER_PRESET", "huge", "expected one of"),
    ("STREAMER_REDIS_URL", "http://x", "redis://"),
])
def test_a_bad_variable_exits_2_and_names_it(monkeypatch, caplog, name, value, reason) -> None:
    monkeypatch.setenv(name, value)
    assert cli.main(_parse()) == 2
    assert reason in caplog.text and name in caplog.text


def test_a_bad_value_from_the_command_line_is_not_blamed_on_the_variable(monkeypatch,
                                                                          caplog) -> None:
    monkeypatch.setenv("STREAMER_REDIS_URL", "redis://cache:6379/0")
    assert cli.main(_parse("--redis-url", "http://x")) == 2
    assert "redis://" in caplog.text and "STREAMER_REDIS_URL" not in caplog.text


def test_bad_flag_values_exit_2_before_loading_models() -> None:
    assert cli.main(_parse("--max-connections", "0")) == 2
    assert cli.main(_parse("--min-tick", "-1")) == 2


class _Server:
    """A server subprocess whose log lines are collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        environment = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.process = subprocess.Popen(argv, cwd=ROOT, env=environment, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def port(self, timeout: float) -> int:
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.log.append(line)
            match = LISTENING.search(line)
            if match:
                return int(match.group(1))
        self.process.kill()
        raise AssertionError("server did not start:\n" + "".join(self.log))

    def stop(self, timeout: float = 20.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(scaled(timeout))
        finally:
            if self.process.poll() is None:
                self.process.kill()


def test_sigterm_flushes_open_streams_and_exits_0() -> None:
    from websockets.asyncio.client import connect

    audio = tone_conversation([(300.0, 1.5), (None, 0.5), (700.0, 1.0)])
    server = _Server([sys.executable, "-c", FAKE_SERVER])
    port = server.port(timeout=30)

    async def client():
        async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
            await ws.send('{"type":"start","sample_rate":16000,"encoding":"pcm_f32le"}')
            await ws.recv()
            await ws.send(pcm(audio))
            before = [json.loads(await ws.recv())]  # mid-stream: turns are coming
            code = await asyncio.to_thread(server.stop)
            return before + await read_all(ws), ws.close_code, code

    events, close_code, exit_code = run(client(), timeout=40)
    assert exit_code == 0
    assert events and events[-1]["type"] == "end"
    assert events[-1]["duration"] == pytest.approx(3.0, abs=0.01)
    assert close_code == 1001
    assert [speaker for speaker, _, _ in finals(events)] == ["SPEAKER_00", "SPEAKER_01"]
    assert finals(events)[-1][2] == pytest.approx(3.0, abs=0.05), "last turn not flushed"


def test_cli_serves_healthz_from_port_env_and_exits_0_on_sigterm() -> None:
    server = _Server([sys.executable, "-m", "streamer.server", "--host", "127.0.0.1",
                      "--log-level", "INFO"], env={"PORT": "0"})
    port = server.port(timeout=90)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        assert answer.status == 200
    assert server.stop() == 0
