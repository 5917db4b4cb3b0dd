"""The Qdrant store runs the store contract in qdrant-client's local mode.

No Qdrant server can run on this machine (no package ships one), so the server code path is
exercised only up to the connection: an unreachable URL must give one clear sentence.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.vectorstore import StoreInfo, StoreUnavailableError
from tests.store_contract import *  # noqa: F403
from tests.store_contract import DIM, FP, make_records, open_spec


@pytest.fixture
def store_spec(tmp_path: Path) -> dict:
    return {"store": "qdrant", "index_dir": str(tmp_path / "idx"), "store_collection": "photos"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_sentence() -> None:
    key = "sekret-api-key-123456"
    spec = {
        "store": "qdrant",
        "store_url": f"http://127.0.0.1:{_free_port()}",
        "store_api_key": key,
    }
    with pytest.raises(StoreUnavailableError) as err:
        open_spec(spec)
    text = str(err.value)
    assert "cannot be reached" in text and "KONTROL_STORE_URL" in text
    assert key not in text and key not in repr(err.value)


def test_photo_ids_survive_the_uuid_mapping_and_odd_filter_values(store_spec) -> None:
    store = open_spec(store_spec)
    try:
        store.initialise(StoreInfo(fingerprint=FP, dim=DIM))
        ids, vecs, payloads = make_records(8)
        ids[0] = "not-a-uuid/ünïcode 'quoted' \"id\""
        payloads[0]["species"] = 'Odd "species" \\ name'
        store.upsert(ids, vecs, payloads)
        assert store.fetch([ids[0]]).ids == [ids[0]]
        row = store.search(vecs[0], 3, where={"species": payloads[0]["species"]})[0]
        assert [h.id for h in row] == [ids[0]]
        assert "__id" not in row[0].payload
    finally:
        store.close()


def test_local_mode_refuses_a_second_process(store_spec) -> None:
    store = open_spec(store_spec)
    store.initialise(StoreInfo(fingerprint=FP, dim=DIM))
    code = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, sys.argv[1])
        from core.errors import IndexBusyError
        from tests.store_contract import open_spec
        try:
            open_spec(json.loads(sys.argv[2]))
        except IndexBusyError as exc:
            print("busy:", exc)
        """
    )
    root = str(Path(__file__).resolve().parents[1])
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, root, json.dumps(store_spec)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.stdout.startswith("busy:"), proc.stderr[-2000:]
        assert "one process at a time" in proc.stdout
    finally:
        store.close()


def test_two_stores_in_one_process_share_the_local_client(store_spec) -> None:
    writer = open_spec(store_spec)
    writer.initialise(StoreInfo(fingerprint=FP, dim=DIM))
    reader = open_spec(store_spec, read_only=True)
    try:
        ids, vecs, payloads = make_records(5)
        writer.upsert(ids, vecs, payloads)
        assert reader.refresh() and reader.count() == 5
        np.testing.assert_allclose(reader.fetch(ids[:1]).vectors, vecs[:1], atol=1e-6)
    finally:
        reader.close()
        writer.close()


def test_a_short_ann_answer_is_repeated_exactly(store_spec, monkeypatch) -> None:
    from core.vectorstore.qdrant_store import QdrantStore
    from tests.store_contract import exact_top

    store = open_spec(store_spec)
    try:
        store.initialise(StoreInfo(fingerprint=FP, dim=DIM))
        ids, vecs, payloads = make_records(40)
        store.upsert(ids, vecs, payloads)
        real = QdrantStore._query
        calls = []

        def short_query(self, q, k, flt, *, exact):  # an HNSW that loses all but one hit
            calls.append(exact)
            rows = real(self, q, k, flt, exact=exact)
            return rows if exact else [row[:1] for row in rows]

        monkeypatch.setattr(QdrantStore, "_query", short_query)
        where = {"genus": ["Genus1", "Genus2"]}
        row = store.search(vecs[3], 7, where=where)[0]
        assert [h.id for h in row] == exact_top(ids, vecs, payloads, vecs[3], 7, where)
        assert calls == [False, True]
        assert len(store.search(vecs[3], 5, where={"species": "No such"})[0]) == 0
    finally:
        store.close()


class _FakeQdrant:
    """A stand-in HTTP server on 127.0.0.1 (no Qdrant server can run here): it answers every
    request with one fixed status and JSON body, so the client's error paths can be driven."""

    def __init__(self, status: int, body: dict) -> None:
        import http.server
        import threading

        payload = json.dumps(body).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_rejected_api_key_is_one_sentence_without_the_key() -> None:
    key = "sekret-api-key-987654"
    fake = _FakeQdrant(403, {"status": {"error": "Invalid api-key"}, "time": 0})
    try:
        with pytest.raises(StoreUnavailableError) as err:
            open_spec({"store": "qdrant", "store_url": fake.url, "store_api_key": key})
        assert "refused the API key" in str(err.value) and "KONTROL_STORE_API_KEY" in str(err.value)
        assert key not in str(err.value) and key not in repr(err.value)
    finally:
        fake.stop()


def test_server_gone_mid_run_is_one_sentence() -> None:
    fake = _FakeQdrant(200, {"result": {"exists": False}, "status": "ok", "time": 0})
    store = open_spec({"store": "qdrant", "store_url": fake.url, "store_api_key": "k-12345678"})
    try:
        assert store.info() is None
        fake.stop()
        with pytest.raises(StoreUnavailableError, match="cannot be reached"):
            store.count()
        with pytest.raises(StoreUnavailableError, match="cannot be reached"):
            store.search(np.ones((1, DIM), np.float32) / 4, 3)
    finally:
        store.close()
