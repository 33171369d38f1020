"""What outlives a connection: saved states resumed by ``resume_id``, the drain hand-over
(``end`` with ``reconnect``), single-use URLs and the voiceprint registry, in the
process's store and in a real redis-server shared by two servers."""
from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from streamer.server.store import MemoryStore, RedisStore, StoreUnavailable
from tests.fakes import tone_conversation
from tests.services import redis_server
from tests.test_server_resume import (HIGH_THEN_LOW, LONG_TALK, LOW_THEN_HIGH, finals,
                                      whole_stream)
from tests.test_server_support import (open_stream, read_all, run, running_server,
                                       send_audio, url)

SECRET = "shared-state-secret"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as address:
        yield address


def stores(redis_url: str):
    return {"memory": MemoryStore(), "redis": RedisStore(redis_url)}


# ------------------------------------------------------------------------------ stores
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_store_keeps_states_tokens_and_voiceprints_until_they_expire(redis_url, kind):
    async def body():
        store = stores(redis_url)[kind]
        try:
            await store.put_state("a" * 32, {"state": "x.y", "position": 1.5}, ttl=0.3)
            got = await store.get_state("a" * 32)
            claims = [await store.claim_token(f"t-{kind}", 0.3),
                      await store.claim_token(f"t-{kind}", 0.3)]
            await store.put_voiceprint(f"alice-{kind}", {"vector": [1.0]}, ttl=0)
            voiceprint = await store.get_voiceprint(f"alice-{kind}")
            await asyncio.sleep(0.45)
            expired = await store.get_state("a" * 32)
            reclaimed = await store.claim_token(f"t-{kind}", 0.3)
            kept = await store.get_voiceprint(f"alice-{kind}")  # ttl 0: until deleted
            deleted = [await store.delete_voiceprint(f"alice-{kind}"),
                       await store.delete_voiceprint(f"alice-{kind}")]
            gone = await store.get_voiceprint(f"alice-{kind}")
            return got, claims, voiceprint, expired, reclaimed, kept, deleted, gone
        finally:
            await store.close()

    got, claims, voiceprint, expired, reclaimed, kept, deleted, gone = run(body())
    assert got == {"state": "x.y", "position": 1.5}
    assert claims == [True, False]  # single use
    assert voiceprint == kept == {"vector": [1.0]}
    assert expired is None and reclaimed is True
    assert deleted == [True, False] and gone is None


def test_the_memory_store_is_bounded() -> None:
    async def body():
        store = MemoryStore(limit=3)
        for index in range(5):
            await store.put_state(str(index), {"n": index}, ttl=60)
        return [await store.get_state(str(index)) for index in range(5)]

    assert run(body()) == [None, None, {"n": 2}, {"n": 3}, {"n": 4}]


def test_the_memory_store_drops_expired_entries_without_being_asked() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])

    async def body():
        for index in range(100):
            await store.put_state(str(index), {"n": index}, ttl=10)
        now[0] = 11.0
        await store.put_state("new", {"n": -1}, ttl=10)

    run(body())
    assert list(store._kinds["state"]) == ["new"]  # noqa: SLF001 - what memory holds


def test_an_unreachable_redis_is_a_clear_error() -> None:
    async def body():
        store = RedisStore("redis://127.0.0.1:9/0", timeout=0.5)
        try:
            await store.get_state("a" * 32)
        finally:
            await store.close()

    with pytest.raises(StoreUnavailable, match="Redis"):
        run(body())


# ------------------------------------------------------------------ resume by resume_id
def test_a_stream_resumes_by_its_resume_id_on_the_same_server() -> None:
    async def body():
        async with running_server() as server:
            ready, first = await whole_stream(server, LOW_THEN_HIGH)
            again, resumed = await whole_stream(server, HIGH_THEN_LOW,
                                                resume_id=ready["resume_id"])
            return ready, first, again, resumed

    ready, first, again, resumed = run(body())
    assert len(ready["resume_id"]) == 32 and first[-1]["resume_id"] == ready["resume_id"]
    # The saved state and position of the first stream: labels and clock continue.
    assert again["resumed"] == ["SPEAKER_00", "SPEAKER_01"]
    assert again["offset"] == pytest.approx(first[-1]["position"])
    assert again["resume_id"] == ready["resume_id"]  # saved again in the same place
    assert [s for s, *_ in finals(resumed)] == ["SPEAKER_01", "SPEAKER_00"]
    assert finals(resumed)[0][1] >= first[-1]["position"]  # its clock continues


@pytest.mark.parametrize("start, code, message", [
    ({"resume_id": "0" * 32}, "bad_state", "no saved state"),
    ({"resume_id": "not-an-id"}, "protocol_error", "32 hexadecimal"),
    ({"resume_id": "0" * 32, "resume": "x.y"}, "protocol_error", "not both"),
])
def test_a_bad_resume_id_is_refused(start, code, message) -> None:
    async def body():
        async with running_server() as server:
            async with connect(url(server)) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000, **start}))
                reply = json.loads(await ws.recv())
                await ws.wait_closed()
                return reply, ws.close_code

    reply, close = run(body())
    assert reply["type"] == "error" and reply["code"] == code and message in reply["message"]
    assert close == 1008


def test_states_are_saved_periodically_while_a_stream_runs() -> None:
    async def body():
        async with running_server(state_save_interval=1.0) as server:
            ws, ready = await open_stream(server)
            await send_audio(ws, LOW_THEN_HIGH, stop=False)
            deadline = asyncio.get_running_loop().time() + 10
            saved = None
            while asyncio.get_running_loop().time() < deadline:
                saved = await server.context.store.get_state(ready["resume_id"])
                if saved is not None and saved["position"] >= 4.0:
                    break
                await asyncio.sleep(0.05)
            await ws.send(json.dumps({"type": "stop"}))
            events = await read_all(ws)
            return saved, events, server.metrics.states_saved

    saved, events, count = run(body())
    # Saved before the stream ended, with no snapshot asked: a lost connection resumes.
    assert saved is not None and 4.0 <= saved["position"] <= events[-1]["position"]
    assert count >= 3


# ----------------------------------------------------------------- two servers, Redis
def test_a_drained_stream_resumes_on_another_server_from_redis(redis_url) -> None:
    """SIGTERM's path: the stream gets its final turns and an ``end`` with ``reconnect``,
    its state is in Redis, and the client resumes on the other server with the id only."""
    async def body():
        shared = {"redis_url": redis_url, "state_secret": SECRET}
        async with running_server(**shared) as a, running_server(**shared) as b:
            ws, ready = await open_stream(a)
            await send_audio(ws, LOW_THEN_HIGH, stop=False)
            await asyncio.sleep(0.3)
            drained = asyncio.create_task(a.shutdown())
            events = await read_all(ws)
            await drained
            saved = await b.context.store.get_state(ready["resume_id"])
            again, resumed = await whole_stream(b, HIGH_THEN_LOW,
                                                resume_id=ready["resume_id"])
            return ready, events, ws.close_code, saved, again, resumed

    ready, events, close, saved, again, resumed = run(body())
    end = events[-1]
    assert end["type"] == "end" and end["reconnect"] is True and close == 1001
    # Every sample sent before the drain was processed: nothing accepted is lost.
    assert end["position"] == pytest.approx(len(LOW_THEN_HIGH) / 16000, abs=0.01)
    assert [s for s, *_ in finals(events)] == ["SPEAKER_00", "SPEAKER_01"]
    assert saved == {"state": end["state"], "position": end["position"], "final": True,
                     "unsent": [], "session": end["session"]}
    assert again["resumed"] == ["SPEAKER_00", "SPEAKER_01"]
    assert again["offset"] == pytest.approx(end["position"])
    assert [s for s, *_ in finals(resumed)] == ["SPEAKER_01", "SPEAKER_00"]


def test_a_drained_stream_resumed_by_id_goes_on_as_if_uncut(redis_url) -> None:
    """The drained replica saves the stream's audio context with its state: the stream
    resumed on the other replica decides after the cut as the uncut stream did."""
    async def body():
        shared = {"redis_url": redis_url, "state_secret": SECRET}
        async with running_server(**shared) as a, running_server(**shared) as b:
            _, whole = await whole_stream(b, LONG_TALK)
            ws, ready = await open_stream(a)
            await send_audio(ws, LONG_TALK[: int(11.3 * 16000)], stop=False)
            await asyncio.sleep(0.3)
            drained = asyncio.create_task(a.shutdown())
            events = await read_all(ws)
            await drained
            cut = events[-1]["position"]
            context = await b.context.store.get_context(ready["resume_id"])
            _, resumed = await whole_stream(b, LONG_TALK[int(round(cut * 16000)):],
                                            resume_id=ready["resume_id"])
            return whole, events, cut, context, resumed

    whole, events, cut, context, resumed = run(body())
    assert context is not None and context["position"] == cut and cut > 5.0
    end = len(LONG_TALK) / 16000
    truth = labels_at(finals(whole), end)
    guess = labels_at(finals(events) + finals(resumed), end)
    after = [i for i, label in enumerate(truth) if label and i * 0.01 >= cut]
    assert sum(truth[i] == guess[i] for i in after) / len(after) > 0.99


def labels_at(turns: list[tuple[str, float, float]], end: float) -> list[str]:
    grid = np.arange(0, end, 0.01)
    labels = [""] * len(grid)
    for speaker, start, stop in turns:
        for index in np.flatnonzero((grid >= start) & (grid < stop)):
            labels[index] = speaker
    return labels


def test_without_a_shared_store_another_server_cannot_resume_by_id() -> None:
    async def body():
        async with running_server(state_secret=SECRET) as a, \
                running_server(state_secret=SECRET) as b:
            ready, _ = await whole_stream(a, LOW_THEN_HIGH)
            async with connect(url(b)) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000,
                                          "resume_id": ready["resume_id"]}))
                return json.loads(await ws.recv())

    reply = run(body())
    assert reply["code"] == "bad_state" and "does not share" in reply["message"]


def post(address: str, path: str, token: str | None = None, data: bytes | None = None,
         method: str = "POST") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_single_use_url_opens_one_websocket_across_servers(redis_url) -> None:
    async def body():
        shared = {"redis_url": redis_url, "token": "server-token"}
        async with running_server(**shared) as a, running_server(**shared) as b:
            status, raw = await asyncio.to_thread(post, f"127.0.0.1:{a.port}",
                                                  "/v1/sessions", "server-token")
            token = json.loads(raw)["token"]
            opened = await open_stream(b, query=f"token={token}")
            await opened[0].close()
            codes = []
            for server in (a, b):  # a remembers nothing of it: Redis does
                try:
                    await open_stream(server, query=f"token={token}")
                except Exception as error:  # noqa: BLE001 - the refusal is the point
                    codes.append(getattr(getattr(error, "response", None), "status_code", 0))
            return status, codes

    status, codes = run(body())
    assert status == 201 and codes == [401, 401]


def test_a_stream_survives_redis_going_away(tmp_path) -> None:
    """Redis down: streams go on, saves are counted as errors, resume by id says why."""
    async def body():
        with redis_server(tmp_path) as address:
            server_settings = {"redis_url": address, "state_save_interval": 0.5}
            async with running_server(**server_settings) as server:
                pass
        async with running_server(**server_settings) as server:  # Redis is gone now
            ready, events = await whole_stream(server, LOW_THEN_HIGH)
            async with connect(url(server)) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000,
                                          "resume_id": ready["resume_id"]}))
                refusal = json.loads(await ws.recv())
            return events, refusal, dict(server.metrics.errors)

    events, refusal, errors = run(body(), timeout=60)
    assert events[-1]["type"] == "end" and [s for s, *_ in finals(events)] == [
        "SPEAKER_00", "SPEAKER_01"]
    assert errors.get("store_unavailable", 0) >= 1
    assert refusal["code"] == "store_unavailable" and "Redis" in refusal["message"]


# ----------------------------------------------------------------- voiceprint registry
def wav(samples: np.ndarray, rate: int = 16000, format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=format)
    return buffer.getvalue()


def test_post_voiceprints_enrolls_registers_and_names_a_stream(redis_url) -> None:
    low = tone_conversation([(300.0, 4.0)])

    async def body():
        shared = {"redis_url": redis_url, "token": "server-token"}
        async with running_server(**shared) as a, running_server(**shared) as b:
            address = f"127.0.0.1:{a.port}"
            plain = await asyncio.to_thread(post, address, "/v1/voiceprints", "server-token",
                                            wav(low))
            named = await asyncio.to_thread(post, address, "/v1/voiceprints?name=low%20voice",
                                            "server-token", wav(low, format="FLAC"))
            fetched = await asyncio.to_thread(post, f"127.0.0.1:{b.port}",
                                              "/v1/voiceprints/low%20voice", "server-token",
                                              method="GET")
            # b never saw the enrolment: the name comes from the shared registry.
            ready, events = await whole_stream(
                b, LOW_THEN_HIGH, config={"known_speakers": [{"name": "low voice"}]},
                query="token=server-token")
            deleted = await asyncio.to_thread(post, address, "/v1/voiceprints/low%20voice",
                                              "server-token", method="DELETE")
            again = await asyncio.to_thread(post, address, "/v1/voiceprints/low%20voice",
                                            "server-token", method="GET")
            return plain, named, fetched, ready, events, deleted, again, a.metrics

    plain, named, fetched, ready, events, deleted, again, metrics = run(body(), timeout=60)
    assert plain[0] == 201
    document = json.loads(plain[1])["voiceprint"]
    assert document["type"] == "voiceprint" and document["model"]["preset"] == "fake"
    assert named[0] == 201 and json.loads(named[1])["registered"] is True
    assert np.dot(json.loads(named[1])["voiceprint"]["vector"], document["vector"]) > 0.99
    assert fetched[0] == 200 and json.loads(fetched[1])["name"] == "low voice"
    assert ready["config"]["known_speakers"] == ["low voice"]
    turns = [e for e in events if e["type"] == "turn" and e["final"]]
    assert [(t["speaker"], t.get("identity")) for t in turns] == [
        ("SPEAKER_00", "low voice"), ("SPEAKER_01", None)]
    assert deleted[0] == 204 and again[0] == 404
    assert metrics.voiceprints_enrolled == 2


@pytest.mark.parametrize("head, status", [
    (b"POST /v1/voiceprints HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    (b"POST /v1/voiceprints HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", 411),
    (b"POST /v1/voiceprints HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400),
    (b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400),
])
def test_request_bodies_without_a_usable_length_are_refused(head, status) -> None:
    async def body():
        async with running_server() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(head)
            await writer.drain()
            reply = await reader.read()
            writer.close()
            return reply

    assert run(body()).startswith(f"HTTP/1.1 {status} ".encode())


@pytest.mark.parametrize("data, query, status, text", [
    (b"not audio at all" * 10, "", 422, "bad_audio_file"),
    ("silence", "", 422, "not enough speech"),
    ("two", "", 422, "2 speakers"),
    ("low", "?name=", 400, "name"),
    ("big", "", 413, "at most"),
])
def test_post_voiceprints_refuses_what_cannot_make_one(data, query, status, text) -> None:
    bodies = {"silence": wav(np.zeros(16000 * 5, np.float32)),
              "two": wav(LOW_THEN_HIGH), "low": wav(tone_conversation([(300.0, 4.0)])),
              "big": b"\0" * 5000}
    body_bytes = bodies.get(data, data) if isinstance(data, str) else data

    async def body():
        async with running_server(max_body_bytes=4096 if data == "big" else 16 << 20
                                  ) as server:
            answer = await asyncio.to_thread(post, f"127.0.0.1:{server.port}",
                                             f"/v1/voiceprints{query}", None,
                                             body_bytes)
            # The server is still fine afterwards: a stream works.
            ready, events = await whole_stream(server, LOW_THEN_HIGH)
            return answer, events

    (code, raw), events = run(body())
    assert code == status and text in raw.decode()
    assert events[-1]["type"] == "end"


def test_the_registry_needs_the_server_token() -> None:
    async def body():
        async with running_server(token="server-token") as server:
            address = f"127.0.0.1:{server.port}"
            return [await asyncio.to_thread(post, address, "/v1/voiceprints", None, b"x"),
                    await asyncio.to_thread(post, address, "/v1/voiceprints/x", "wrong",
                                            method="GET"),
                    await asyncio.to_thread(post, address, "/v1/voiceprints/x", "server-token",
                                            method="PUT")]

    assert [code for code, _ in run(body())] == [401, 401, 405]


def test_an_unregistered_name_in_known_speakers_is_a_bad_config() -> None:
    async def body():
        async with running_server() as server:
            async with connect(url(server)) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "config": {
                    "known_speakers": [{"name": "nobody"}]}}))
                return json.loads(await ws.recv())

    reply = run(body())
    assert reply["code"] == "bad_config" and "nobody" in reply["message"]


def test_audio_contexts_round_trip_and_bad_ones_are_ignored() -> None:
    from streamer.server.state import decode_context, encode_context

    samples = (np.sin(np.arange(16000) / 7.0) * 0.5).astype(np.float32)
    document = encode_context(samples, 16000)
    back = decode_context(json.loads(json.dumps(document)), 16000, 16000)
    assert np.abs(back - samples).max() < 1 / 16000
    assert decode_context(document, 8000, 16000) is None  # another rate
    assert decode_context(document, 16000, 15999) is None  # longer than the stream takes
    for broken in ({**document, "pcm_s16le": "***"}, {**document, "pcm_s16le": 5},
                   {**document, "pcm_s16le": document["pcm_s16le"][:-4] + "AA=="}, None):
        assert decode_context(broken, 16000, 16000) is None


def test_settings_keep_secrets_out_of_their_repr() -> None:
    from streamer.server.settings import ServerSettings

    shown = repr(ServerSettings(token="t0ken", state_secret="s3cret",
                                redis_url="redis://:passw0rd@cache:6379/0"))
    assert "t0ken" not in shown and "s3cret" not in shown and "passw0rd" not in shown


@pytest.mark.parametrize("authorization, answered", [
    ("", True), ("Authorization: Bearer wrong\r\n", True),
    ("Authorization: Bearer server-token\r\n", False),
])
def test_only_the_token_holder_makes_the_server_hold_an_upload(authorization,
                                                               answered) -> None:
    """A body is read only for an upload by the token's holder: anyone else is answered
    (401) from the request's head, without the server waiting for, or keeping, the body."""
    head = ("POST /v1/voiceprints HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
            f"{authorization}\r\n").encode()

    async def body():
        async with running_server(token="server-token") as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(head)  # and no body
            await writer.drain()
            try:
                async with asyncio.timeout(1.0):
                    return await reader.read(100)
            except TimeoutError:
                return None  # still waiting for the announced body
            finally:
                writer.close()

    reply = run(body())
    if answered:
        assert reply is not None and reply.startswith(b"HTTP/1.1 401 ")
    else:
        assert reply is None
