"""Server metrics, rendered in the Prometheus text exposition format (version 0.0.4).

One :class:`ServerMetrics` per server; it may be updated from the event loop and from
worker threads, so every update takes a lock.
"""
from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Finer around the tick rule of admission (``--max-tick``), so its quantiles show.
TICK_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
                        2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
TICK_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Histogram:
    """A cumulative histogram with fixed upper bounds."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        prefix = labels + "," if labels else ""
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            out.append(f'{name}_bucket{{{prefix}le="{_number(bound)}"}} {running}')
        out.append(f'{name}_bucket{{{prefix}le="+Inf"}} {self.count}')
        suffix = "{" + labels + "}" if labels else ""
        out.append(f"{name}_sum{suffix} {_number(self.total)}")
        out.append(f"{name}_count{suffix} {self.count}")
        return out


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class ServerMetrics:
    """Counters, gauges and histograms of one server."""

    def __init__(self, worker: int | None = None) -> None:
        self._lock = threading.Lock()
        self.worker = worker
        self.restarts = 0  # processes that filled this worker's slot before this one
        self.connections_open = 0
        self.connections_total = 0
        self.rejected: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.audio_received_seconds = 0.0
        self.audio_processed_seconds = 0.0
        self.pending_seconds: dict[str, float] = {}
        self.feeds_in_flight = 0
        self.falling_behind = 0
        self.backpressure_pauses = 0
        self.slow_clients = 0
        self.turns_sent = 0
        self.sessions_issued = 0
        self.states_saved = 0
        self.streams_lost = 0
        self.voiceprints_enrolled = 0
        self.feed_seconds = Histogram(LATENCY_BUCKETS)
        self.step_latency = Histogram(LATENCY_BUCKETS)
        self.batch_rows: dict[str, Histogram] = {}
        self.batch_streams: dict[str, Histogram] = {}
        self.batch_seconds: dict[str, Histogram] = {}
        self.tick_jobs = Histogram(TICK_BUCKETS)
        self.tick_seconds = Histogram(TICK_SECONDS_BUCKETS)

    # -- updates -----------------------------------------------------------------------

    def connection_opened(self) -> None:
        with self._lock:
            self.connections_open += 1
            self.connections_total += 1

    def connection_closed(self, session: str) -> None:
        with self._lock:
            self.connections_open -= 1
            self.pending_seconds.pop(session, None)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] = self.errors.get(code, 0) + 1

    def received(self, session: str, seconds: float, pending: float) -> None:
        with self._lock:
            self.audio_received_seconds += seconds
            self.pending_seconds[session] = pending

    def fed(self, session: str, seconds: float, pending: float, compute: float,
            latency: float) -> None:
        """One engine call: ``seconds`` of audio took ``compute`` s; ``latency`` is from
        the arrival of its oldest sample to its events being ready."""
        with self._lock:
            self.audio_processed_seconds += seconds
            self.pending_seconds[session] = pending
            self.feed_seconds.observe(compute)
            self.step_latency.observe(latency)

    def feed_started(self, delta: int) -> None:
        with self._lock:
            self.feeds_in_flight += delta

    def count(self, name: str, amount: int = 1) -> None:
        """Add to one of the plain counters (``falling_behind``, ``turns_sent``, ...)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def batch(self, model: str, streams: int, rows: int, seconds: float) -> None:
        """One forward pass of the scheduler: ``rows`` from ``streams`` streams."""
        with self._lock:
            self.batch_rows.setdefault(model, Histogram(BATCH_BUCKETS)).observe(rows)
            self.batch_streams.setdefault(model, Histogram(BATCH_BUCKETS)).observe(streams)
            self.batch_seconds.setdefault(model, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def tick(self, jobs: int, seconds: float) -> None:
        """One scheduler tick that served ``jobs`` stream steps in ``seconds``."""
        with self._lock:
            self.tick_jobs.observe(jobs)
            self.tick_seconds.observe(seconds)

    # -- exposition --------------------------------------------------------------------

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []
            worker = "" if self.worker is None else f'worker="{self.worker}"'
            add = _Writer(lines, worker)
            if self.worker is not None:
                add.info("streamer_worker_info", "The worker process of streamer serve "
                         "--processes N that answered (metrics are per worker).",
                         {"pid": str(os.getpid())})
                add.metric("streamer_worker_restarts_total", "counter",
                           "Times the parent replaced this worker's process after it died "
                           "(sum over worker for the service).", self.restarts)
            add.metric("streamer_connections_open", "gauge", "Open websocket streams.",
                       self.connections_open)
            add.metric("streamer_connections_total", "counter",
                       "Websocket streams opened since start.", self.connections_total)
            add.labelled("streamer_rejected_total", "counter",
                         "Handshakes refused, by reason.", "reason", self.rejected)
            add.labelled("streamer_errors_total", "counter",
                         "Error events sent to clients, by code.", "code", self.errors)
            add.metric("streamer_audio_received_seconds_total", "counter",
                       "Seconds of audio received (16 kHz after decoding).",
                       self.audio_received_seconds)
            add.metric("streamer_audio_processed_seconds_total", "counter",
                       "Seconds of audio processed by the engine.", self.audio_processed_seconds)
            add.metric("streamer_queue_depth_seconds", "gauge",
                       "Received audio not yet processed, summed over streams (seconds).",
                       sum(self.pending_seconds.values()))
            add.metric("streamer_feeds_in_flight", "gauge",
                       "Engine calls running or waiting for the scheduler.", self.feeds_in_flight)
            add.metric("streamer_falling_behind_total", "counter",
                       "falling_behind warnings sent to real-time streams.", self.falling_behind)
            add.metric("streamer_backpressure_pauses_total", "counter",
                       "Times reading from a stream paused because of unprocessed audio.",
                       self.backpressure_pauses)
            add.metric("streamer_slow_clients_total", "counter",
                       "Clients disconnected because they did not read their events.",
                       self.slow_clients)
            add.metric("streamer_turns_sent_total", "counter", "Turn events sent.",
                       self.turns_sent)
            add.metric("streamer_sessions_issued_total", "counter",
                       "Single-use stream URLs issued (POST /v1/sessions).",
                       self.sessions_issued)
            add.metric("streamer_states_saved_total", "counter",
                       "Stream states saved for resume by resume_id.", self.states_saved)
            add.metric("streamer_streams_lost_total", "counter",
                       "Streams whose connection was lost mid-stream, finished and saved "
                       "for resume by resume_id.", self.streams_lost)
            add.metric("streamer_voiceprints_enrolled_total", "counter",
                       "Voiceprints made by POST /v1/voiceprints.", self.voiceprints_enrolled)
            add.histogram("streamer_feed_duration_seconds",
                          "Time of one engine call, from its hand-over to the scheduler to "
                          "its events.", self.feed_seconds)
            add.histogram("streamer_step_latency_seconds",
                          "From the arrival of the oldest audio of an engine call to its "
                          "events being ready.", self.step_latency)
            add.histograms("streamer_batch_rows", "Rows per model forward pass.", "model",
                           self.batch_rows)
            add.histograms("streamer_batch_streams", "Streams sharing a model forward pass.",
                           "model", self.batch_streams)
            add.histograms("streamer_batch_duration_seconds", "Time of one model forward pass.",
                           "model", self.batch_seconds)
            add.histogram("streamer_tick_steps", "Stream steps served by one scheduler tick.",
                          self.tick_jobs)
            add.histogram("streamer_tick_duration_seconds",
                          "Compute time of one scheduler tick.", self.tick_seconds)
            return "\n".join(lines) + "\n"


class _Writer:
    """Appends metric families to ``lines``; ``base`` (e.g. ``worker="1"``) is added to
    the labels of every sample."""

    def __init__(self, lines: list[str], base: str = "") -> None:
        self.lines = lines
        self.base = base

    def _head(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def _labels(self, labels: str = "") -> str:
        return ",".join(part for part in (self.base, labels) if part)

    def _sample(self, name: str, labels: str, value: str) -> None:
        text = self._labels(labels)
        self.lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    def metric(self, name: str, kind: str, help_text: str, value: float) -> None:
        self._head(name, kind, help_text)
        self._sample(name, "", _number(value))

    def labelled(self, name: str, kind: str, help_text: str, label: str,
                 values: dict[str, int]) -> None:
        self._head(name, kind, help_text)
        for key in sorted(values):
            self._sample(name, f'{label}="{_escape(key)}"', str(values[key]))

    def info(self, name: str, help_text: str, labels: dict[str, str]) -> None:
        """A gauge of value 1 whose labels carry the information."""
        self._head(name, "gauge", help_text)
        self._sample(name, ",".join(f'{key}="{_escape(value)}"'
                                    for key, value in labels.items()), "1")

    def histogram(self, name: str, help_text: str, histogram: Histogram) -> None:
        self._head(name, "histogram", help_text)
        self.lines.extend(histogram.lines(name, self._labels()))

    def histograms(self, name: str, help_text: str, label: str,
                   histograms: dict[str, Histogram]) -> None:
        self._head(name, "histogram", help_text)
        for key in sorted(histograms):
            labels = self._labels(f'{label}="{_escape(key)}"')
            self.lines.extend(histograms[key].lines(name, labels))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


__all__ = ["CONTENT_TYPE", "Histogram", "ServerMetrics"]
