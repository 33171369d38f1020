"""Session resume: the speaker memory leaves in ``end``/``snapshot`` as a sealed state and
comes back in ``start.resume``, so labels continue after a reconnect; forged, altered and
foreign states are refused. A stream primed with the audio context of the stream it
continues decides after the cut as the uncut stream would."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest

from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer
from streamer.errors import ConfigError
from streamer.events import Turn
from streamer.server.state import BadState, StateSealer
from tests.fakes import fake_frontend, tone_conversation
from tests.test_server_support import open_stream, read_all, run, running_server, send_audio

LOW_THEN_HIGH = tone_conversation([(300.0, 3.0), (None, 0.5), (700.0, 3.0)])
HIGH_THEN_LOW = tone_conversation([(700.0, 3.0), (None, 0.5), (300.0, 3.0)])


def finals(events: list[dict]) -> list[tuple[str, float, float]]:
    return [(e["speaker"], e["start"], e["end"]) for e in events
            if e["type"] == "turn" and e["final"]]


async def whole_stream(server, audio: np.ndarray, **start) -> tuple[dict, list[dict]]:
    ws, ready = await open_stream(server, **start)
    sender = asyncio.create_task(send_audio(ws, audio))
    events = await read_all(ws)
    await sender
    return ready, events


def test_a_resumed_stream_keeps_its_labels_and_continues_its_clock() -> None:
    async def body():
        async with running_server() as server:
            _, first = await whole_stream(server, LOW_THEN_HIGH)
            end = first[-1]
            ready, resumed = await whole_stream(server, HIGH_THEN_LOW, resume=end["state"],
                                                offset=end["position"])
            _, fresh = await whole_stream(server, HIGH_THEN_LOW)
            return first, ready, resumed, fresh

    first, ready, resumed, fresh = run(body())
    assert [s for s, *_ in finals(first)] == ["SPEAKER_00", "SPEAKER_01"]
    assert first[-1]["position"] == pytest.approx(6.5, abs=0.01)
    assert ready["resumed"] == ["SPEAKER_00", "SPEAKER_01"] and ready["offset"] == 6.5
    # A fresh stream calls the first voice it hears SPEAKER_00; the resumed one knows it.
    assert [s for s, *_ in finals(fresh)] == ["SPEAKER_00", "SPEAKER_01"]
    assert [s for s, *_ in finals(resumed)] == ["SPEAKER_01", "SPEAKER_00"]
    for (_, start, end), (_, fresh_start, fresh_end) in zip(finals(resumed), finals(fresh)):
        assert start == pytest.approx(fresh_start + 6.5, abs=0.01)
        assert end == pytest.approx(fresh_end + 6.5, abs=0.01)
    speech = {s["label"]: s["speech"] for s in resumed[-1]["speakers"]}
    assert speech["SPEAKER_00"] > 5.0  # its speech of both streams
    assert resumed[-1]["position"] == pytest.approx(13.0, abs=0.01)


def test_a_snapshot_mid_stream_can_be_resumed() -> None:
    async def body():
        async with running_server() as server:
            ws, _ = await open_stream(server)
            await send_audio(ws, LOW_THEN_HIGH, stop=False)
            await asyncio.sleep(0.5)
            await ws.send(json.dumps({"type": "snapshot"}))
            await ws.send(json.dumps({"type": "stop"}))
            events = await read_all(ws)
            snapshot = next(e for e in events if e["type"] == "snapshot")
            _, resumed = await whole_stream(server, HIGH_THEN_LOW, resume=snapshot["state"])
            return snapshot, resumed

    snapshot, resumed = run(body())
    assert snapshot["position"] > 0 and isinstance(snapshot["state"], str)
    assert finals(resumed)[0][0] == "SPEAKER_01"


@pytest.mark.parametrize("tamper", ["forged", "altered", "other server", "not a string"])
def test_forged_altered_and_foreign_states_are_refused(tamper) -> None:
    async def body():
        async with running_server() as server:
            _, first = await whole_stream(server, LOW_THEN_HIGH)
            state = first[-1]["state"]
            if tamper == "forged":
                state = "eyJ2ZXJzaW9uIjoxfQ." + state.split(".")[1]
            elif tamper == "altered":
                payload, signature = state.split(".")
                state = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] \
                    + "." + signature
            elif tamper == "other server":
                state = StateSealer("another secret").seal(json.loads("{}"))
            else:
                state = {"speakers": []}
            with pytest.raises(AssertionError) as refused:
                await open_stream(server, resume=state)
            return str(refused.value)

    text = run(body())
    code = "protocol_error" if tamper == "not a string" else "bad_state"
    assert f"'code': '{code}'" in text


def test_a_state_of_other_models_is_refused() -> None:
    other = fake_frontend()
    other.name = "other"
    foreign = StreamingDiarizer(other)
    foreign.feed(LOW_THEN_HIGH)
    foreign.flush()
    sealer = StateSealer("s")

    async def body():
        async with running_server(state_secret="s") as server:
            with pytest.raises(AssertionError) as refused:
                await open_stream(server, resume=sealer.seal(foreign.state()))
            return str(refused.value)

    text = run(body())
    assert "'code': 'bad_state'" in text and "other models" in text


def test_engine_state_round_trip_and_checks() -> None:
    engine = StreamingDiarizer(fake_frontend())
    engine.feed(LOW_THEN_HIGH)
    engine.flush()
    state = json.loads(json.dumps(engine.state()))
    again = StreamingDiarizer(fake_frontend(), StreamConfig())
    again.restore(state)
    assert [s.label for s in again.speakers()] == ["SPEAKER_00", "SPEAKER_01"]
    assert np.allclose([s.embedding for s in again.speakers()],
                       [s.embedding for s in engine.speakers()])
    # Each speaker's match spread (min_speakers' radius) travels too; older states lack it.
    assert all(row["spread"][0] >= 1 for row in state["speakers"])
    assert np.allclose(again._memory.spread_sums, engine._memory.spread_sums)
    older = {**state, "speakers": [{k: v for k, v in row.items() if k != "spread"}
                                   for row in state["speakers"]]}
    StreamingDiarizer(fake_frontend()).restore(older)
    bad_spread = {**state, "speakers": [{**row, "spread": [-1.0, 0.0, 0.0]}
                                        for row in state["speakers"]]}
    # So does each speaker's pitch spread over its frames (displaced voices are judged
    # by it); older states lack it, and a speaker's precision-weighted spread stands in.
    assert all(len(row["pitch_frames"]) == 2 for row in state["speakers"])
    assert np.allclose(again._memory.pitch_frame_sums, engine._memory.pitch_frame_sums)
    older = {**state, "speakers": [{k: v for k, v in row.items() if k != "pitch_frames"}
                                   for row in state["speakers"]]}
    StreamingDiarizer(fake_frontend()).restore(older)
    bad_frames = [{**state, "speakers": [{**row, "pitch_frames": frames}
                                         for row in state["speakers"]]}
                  for frames in ([-1.0, 0.0], [1.0, 2.0, 3.0], [float("nan"), 1.0])]
    for broken in ({**state, "version": 99}, {**state, "speakers": [{"label": "x"}]},
                   {**state, "model": {**state["model"], "dimension": 3}}, bad_spread,
                   *bad_frames):
        with pytest.raises(ConfigError):
            StreamingDiarizer(fake_frontend()).restore(broken)
    small = StreamingDiarizer(fake_frontend(), StreamConfig(max_speakers=1))
    with pytest.raises(ConfigError, match="does not fit"):
        small.restore(state)
    # A displaced voice being followed travels with its count; older states lack it.
    assert state["displaced"] is None
    dimension = len(state["speakers"][0]["sum"])
    following = {**state, "displaced": {"sum": [1.0] + [0.0] * (dimension - 1), "buffers": 3}}
    resumed = StreamingDiarizer(fake_frontend())
    resumed.restore(json.loads(json.dumps(following)))
    assert resumed.state()["displaced"] == following["displaced"]
    StreamingDiarizer(fake_frontend()).restore({k: v for k, v in state.items()
                                                if k != "displaced"})
    for displaced in ({"sum": [1.0], "buffers": 3}, {"sum": following["displaced"]["sum"],
                                                    "buffers": 0},
                      {"sum": following["displaced"]["sum"], "buffers": 1.5}, {"buffers": 2}):
        with pytest.raises(ConfigError, match="malformed"):
            StreamingDiarizer(fake_frontend()).restore({**state, "displaced": displaced})
    with pytest.raises(BadState):
        StateSealer("a").open(StateSealer("b").seal(state))
    assert StateSealer("a").open(StateSealer("a").seal(state)) == state


# ------------------------------------------------------------ resuming with audio context
LONG_TALK = tone_conversation([(300.0, 2.3), (700.0, 3.1), (None, 0.4), (300.0, 4.2),
                               (700.0, 2.7), (300.0, 3.5), (None, 0.6), (700.0, 4.4)])


def cut_and_resume(frontend, audio: np.ndarray, cut: int, prime: bool | float,
                   chunk: int = 4000) -> tuple[list, list]:
    """Final turns of the uncut stream, and of the two parts (the second restored, and
    primed if ``prime``: with the first part's context, or given seconds, the last
    ``prime`` seconds of audio before the cut, as a client that kept them would),
    in the uncut stream's clock."""
    def run_engine(engine, samples):
        events = [e for i in range(0, len(samples), chunk) for e in engine.feed(samples[i:i + chunk])]
        return [e for e in events + engine.flush() if isinstance(e, Turn) and e.final]

    whole = run_engine(StreamingDiarizer(frontend), audio)
    first = StreamingDiarizer(frontend)
    before = run_engine(first, audio[:cut])
    second = StreamingDiarizer(frontend)
    second.restore(json.loads(json.dumps(first.state())))
    if prime is True:
        second.prime(first.context())
    elif prime:
        second.prime(audio[max(0, cut - int(prime * 16000)):cut])
    after = run_engine(second, audio[cut:])
    assert second.position == pytest.approx((len(audio) - cut) / 16000)
    shift = cut / 16000
    return whole, before + [dataclasses.replace(t, start=t.start + shift, end=t.end + shift)
                            for t in after]


def frame_labels(turns, end: float, step: float = 0.01) -> list:
    grid = np.arange(0, end, step)
    labels = [""] * len(grid)
    for turn in turns:
        for i in np.flatnonzero((grid >= turn.start) & (grid < turn.end)):
            labels[i] = turn.speaker
    return labels


def test_a_primed_stream_decides_after_the_cut_as_the_uncut_stream() -> None:
    frontend = fake_frontend()
    cut = int(11.3 * 16000)  # inside the third turn, not on a step
    whole, resumed = cut_and_resume(frontend, LONG_TALK, cut, prime=True)
    end = len(LONG_TALK) / 16000
    truth, guess = frame_labels(whole, end), frame_labels(resumed, end)
    after = [i for i in range(len(truth)) if i * 0.01 >= cut / 16000 and truth[i]]
    assert sum(truth[i] == guess[i] for i in after) / len(after) > 0.99
    # The turns after the cut are the uncut stream's, the one cut in two aside.
    later = [(t.speaker, round(t.start, 2), round(t.end, 2)) for t in whole
             if t.start > cut / 16000]
    assert later and later == [(t.speaker, round(t.start, 2), round(t.end, 2))
                               for t in resumed if t.start > cut / 16000 + 1e-6]
    # Numbering and times of the resumed part start afresh after its context.
    second = StreamingDiarizer(frontend)
    first = StreamingDiarizer(frontend)
    first.feed(LONG_TALK[:cut])
    first.flush()
    second.restore(first.state())
    context = first.context()
    second.prime(context)
    # The next step completes on the uncut stream's grid, not a whole step from here.
    step = int(second.config.step * 16000)
    assert second.samples_to_next_step == step - len(context) % step
    assert (cut + second.samples_to_next_step) % step == 0
    events = second.feed(LONG_TALK[cut:]) + second.flush()
    finals = [e for e in events if isinstance(e, Turn) and e.final]
    assert [t.id for t in finals] == list(range(len(finals)))
    assert finals[0].start == pytest.approx(0.0, abs=0.02)
    # Speech totals: the first part's and the resumed part's, the context not counted twice.
    speech = {s.label: s.speech for s in second.speakers()}
    assert sum(speech.values()) == pytest.approx(
        sum(s.speech for s in first.speakers()) + sum(t.duration for t in finals), abs=0.05)


def test_prime_checks_its_place_and_size() -> None:
    first = StreamingDiarizer(fake_frontend())
    first.feed(LONG_TALK)
    first.flush()
    context = first.context()
    assert 10.0 * 16000 <= len(context) <= first.context_limit
    assert np.array_equal(context, LONG_TALK[len(LONG_TALK) - len(context):])
    late = StreamingDiarizer(fake_frontend())
    late.feed(LONG_TALK[:8000])
    with pytest.raises(RuntimeError, match="before any audio"):
        late.prime(context)
    # A longer stretch is cut to the context's length, from the stream's grid; the
    # state counts the samples it came after.
    assert first.state()["samples"] == len(LONG_TALK)
    second = StreamingDiarizer(fake_frontend())
    second.restore(first.state())
    for given in (len(context), len(context) + 1, first.context_limit + 1234, len(LONG_TALK)):
        assert second.context_used(given) == len(context)
    assert len(context) - second.context_used(len(context) - 1) == first._alignment
    # A state from before samples were counted takes the context as it comes.
    old = first.state()
    del old["samples"]
    third = StreamingDiarizer(fake_frontend())
    third.restore(old)
    assert third.context_used(len(context) - 1) == len(context) - 1
    assert third.context_used(10 ** 7) == first.context_limit
    broken = {**first.state(), "samples": -1}
    with pytest.raises(ConfigError, match="samples"):
        StreamingDiarizer(fake_frontend()).restore(broken)


def test_a_client_copy_of_the_audio_before_the_cut_primes_as_the_context_does() -> None:
    frontend = fake_frontend()
    cut = int(11.3 * 16000)
    whole, primed = cut_and_resume(frontend, LONG_TALK, cut, prime=True)
    for seconds in (11.0, 20.0):  # longer than the context, not on the grid
        assert cut_and_resume(frontend, LONG_TALK, cut, prime=seconds) == (whole, primed)


def test_a_client_resumes_with_its_own_context_as_if_uncut() -> None:
    """``start.context``: a client that kept the audio before the cut sends it first, and
    the resumed stream's turns after the cut are the uncut stream's; without it, they
    are not. 0.1 s frames do not end on the context's boundary."""
    cut = int(11.33 * 16000)
    before = LONG_TALK[cut - 15 * 16000:cut] if cut >= 15 * 16000 else LONG_TALK[:cut]

    async def body():
        async with running_server() as server:
            _, whole = await whole_stream(server, LONG_TALK)
            _, first = await whole_stream(server, LONG_TALK[:cut])
            end = first[-1]
            ready, primed = await whole_stream(
                server, np.concatenate([before, LONG_TALK[cut:]]), resume=end["state"],
                offset=end["position"], context=len(before) / 16000)
            _, bare = await whole_stream(server, LONG_TALK[cut:], resume=end["state"],
                                         offset=end["position"])
            # A stream that stops inside its context decides nothing.
            _, short = await whole_stream(server, before[:16000], resume=end["state"],
                                          context=len(before) / 16000)
            return whole, end, ready, primed, bare, short

    whole, end, ready, primed, bare, short = run(body())
    assert end["position"] == pytest.approx(cut / 16000, abs=1e-3)
    assert ready["context"] == pytest.approx(len(before) / 16000)
    # The turns that start after the cut (the one cut in two aside).
    later = cut / 16000 + 0.1
    after = [t for t in finals(whole) if t[1] > later]
    assert len(after) >= 2
    assert [t for t in finals(primed) if t[1] > later] == after
    assert [t for t in finals(bare) if t[1] > later] != after
    assert finals(short) == [] and short[-1]["type"] == "end"
    assert short[-1]["position"] == 0.0


@pytest.mark.parametrize("start, message", [
    ({"context": 5}, "needs resume"),
    ({"context": -1, "resume_id": "0" * 32}, "context must be"),
    ({"context": 31, "resume_id": "0" * 32}, "context must be"),
    ({"context": True, "resume_id": "0" * 32}, "context must be"),
    ({"context": "5", "resume_id": "0" * 32}, "context must be"),
])
def test_a_bad_context_is_refused(start, message) -> None:
    async def body():
        async with running_server() as server:
            with pytest.raises(AssertionError) as refused:
                await open_stream(server, **start)
            return str(refused.value)

    text = run(body())
    assert "'code': 'protocol_error'" in text and message in text


def test_after_a_lost_connection_a_resume_by_id_goes_on_as_if_uncut() -> None:
    """The connection drops mid-stream (no ``stop``): the server processes what it got,
    decides the rest and saves the state, its audio context and the final turns it could
    not send; the client resumes by ``resume_id``, gets those turns again (``replayed``),
    sends its audio on from ``ready.offset``, and its turns are the uncut stream's."""
    sent = 12 * 16000

    async def body():
        async with running_server() as server:
            _, uncut = await whole_stream(server, LONG_TALK)
            ws, ready = await open_stream(server)
            await send_audio(ws, LONG_TALK[:sent], stop=False)
            before = []
            while not any(e["type"] == "turn" and e["final"] for e in before):
                before.append(json.loads(await ws.recv()))
            ws.transport.abort()  # the network goes: no close frame, no stop
            # The resumed connection's audio goes on from where its ready says.
            ws2, again = await open_stream(server, resume_id=ready["resume_id"])
            start = int(round(again["offset"] * 16000))
            sender = asyncio.create_task(send_audio(ws2, LONG_TALK[start:]))
            after = await read_all(ws2)
            await sender
            assert server.metrics.streams_lost == 1
            # A resumed stream lost before its own first save is saved too.
            ws3, third = await open_stream(server, resume_id=ready["resume_id"])
            ws3.transport.abort()
            deadline = asyncio.get_running_loop().time() + 5
            while server.metrics.streams_lost < 2:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            return uncut, before, again, after

    uncut, before, again, after = run(body())
    assert 0 < again["offset"] <= sent / 16000
    assert again["resumed"] and "context" not in again
    replayed = [e for e in after if e.get("replayed")]
    assert replayed and all(e["type"] == "turn" and e["final"] for e in replayed)
    # Every final turn: those got before the drop, those replayed, those of the resumed
    # stream (each turn once, by its connection and id).
    got = {(0, e["id"]): e for e in before if e["type"] == "turn" and e["final"]}
    got.update({(0, e["id"]): e for e in replayed})
    got.update({(1, e["id"]): e for e in after if e["type"] == "turn" and e["final"]
                and not e.get("replayed")})
    end = len(LONG_TALK) / 16000
    truth = frame_labels([as_turn(e) for e in finals_of(uncut)], end)
    guess = frame_labels([as_turn(e) for e in got.values()], end)
    speech = [i for i, label in enumerate(truth) if label]
    assert sum(truth[i] == guess[i] for i in speech) / len(speech) > 0.99
    assert after[-1]["type"] == "end" and after[-1]["position"] == pytest.approx(end, abs=0.01)


def test_a_resume_by_id_from_a_periodic_save_goes_on_with_the_clients_context(
        monkeypatch) -> None:
    """A server that lost a stream without noticing (it stopped) left only a periodic
    save: a resume by id waits briefly for a final one, then goes on from it, with the
    client's ``context`` (capped at the saved position): the turns after the save are
    the uncut stream's."""
    context = 15.0
    from streamer.server import session as session_module

    async def unnoticed(self, outcome):
        return outcome

    monkeypatch.setattr(session_module.StreamSession, "_after_loss", unnoticed)
    monkeypatch.setattr(session_module, "LOSS_WAIT", 0.3)

    async def body():
        async with running_server(state_save_interval=2.0) as server:
            _, uncut = await whole_stream(server, LONG_TALK)
            ws, ready = await open_stream(server)
            await send_audio(ws, LONG_TALK[:int(13.2 * 16000)], stop=False)
            while not any(e["type"] == "turn" and e["final"]
                          for e in [json.loads(await ws.recv())]):
                pass
            await asyncio.sleep(0.5)
            ws.transport.abort()
            await asyncio.sleep(0.2)
            ws2, again = await open_stream(server, resume_id=ready["resume_id"],
                                           context=context)
            first = int(round((again["offset"] - again.get("context", 0.0)) * 16000))
            sender = asyncio.create_task(send_audio(ws2, LONG_TALK[first:]))
            after = await read_all(ws2)
            await sender
            return uncut, again, after

    uncut, again, after = run(body())
    saved = again["offset"]
    assert 4.0 <= saved <= 13.2 and not any(e.get("replayed") for e in after)
    assert again["context"] == pytest.approx(min(context, saved))
    end = len(LONG_TALK) / 16000
    truth = frame_labels([as_turn(e) for e in finals_of(uncut)], end)
    guess = frame_labels([as_turn(e) for e in finals_of(after)], end)
    later = [i for i, label in enumerate(truth) if label and i * 0.01 >= saved + 0.5]
    agree = sum(truth[i] == guess[i] for i in later) / len(later)
    assert agree > 0.99


def finals_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "turn" and e["final"]]


def as_turn(event: dict) -> Turn:
    return Turn(event["id"], event["speaker"], event["start"], event["end"], True)


def test_a_state_whose_context_cannot_be_used_is_refused(monkeypatch) -> None:
    """What the state carries for the context (the embedded preset's VAD state) is
    checked when the context arrives: a state that does not fit ends the stream with
    ``bad_state``, as at ``start``."""
    def refuse(self, context):
        raise ConfigError("malformed speaker state: the VAD state does not fit")

    async def body():
        async with running_server() as server:
            _, first = await whole_stream(server, LOW_THEN_HIGH)
            monkeypatch.setattr(StreamingDiarizer, "prime_steps", refuse)
            _, events = await whole_stream(server, HIGH_THEN_LOW, resume=first[-1]["state"],
                                           context=1.0)
            return events

    events = run(body())
    assert events[-1]["type"] == "error" and events[-1]["code"] == "bad_state"
    assert "VAD state" in events[-1]["message"]


@pytest.mark.slow
def test_the_embedded_preset_resumed_with_context_keeps_the_uncut_labels() -> None:
    """The real VAD and encoder: a context keeps the VAD chunks and GE2E windows of the
    resumed stream on the uncut stream's grid, whether the engine gives it or a client
    gives its own copy of the audio before the cut."""
    from streamer.audio import load_audio
    from streamer.presets import load_frontend
    from tests.paths import EVAL

    path = EVAL / "synth" / "dev3b.wav"
    if not path.exists():
        pytest.skip("needs ../shared/eval/synth")
    audio = load_audio(path)
    frontend = load_frontend("embedded")
    assert frontend.sample_alignment == 64000
    cut = int(16.9 * 16000)
    end = len(audio) / 16000
    scores = {}
    for prime in (False, True, 15.0):
        whole, resumed = cut_and_resume(frontend, audio, cut, prime, chunk=8000)
        truth, guess = frame_labels(whole, end), frame_labels(resumed, end)
        after = [i for i in range(len(truth)) if i * 0.01 >= cut / 16000 and truth[i]]
        scores[prime] = sum(truth[i] == guess[i] for i in after) / len(after)
    assert scores[True] >= 0.99 and scores[True] > scores[False]
    assert scores[15.0] == scores[True]
