"""A wrong Ray address fails at once with what to give, before any job is recorded."""

from __future__ import annotations

import subprocess
import sys

import factory
from tests.conftest import alpaca, write_jsonl
from tests.servers import free_port


def test_a_wrong_ray_address_fails_at_once_and_records_no_job(tmp_path):
    wh = factory.init(tmp_path / "wh")
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(5))))
    jobs = wh.count("jobs")
    wh.close()
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "filter", "exact", "-w", str(tmp_path / "wh"), "--engine", "ray",
         "--ray-address", address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"no Ray cluster at {address}" in proc.stderr and "--ray-address HOST:PORT" in proc.stderr
    assert factory.open(tmp_path / "wh").count("jobs") == jobs


def test_an_address_where_another_server_listens_fails_at_once(tmp_path):
    """A web server (or anything that does not speak gRPC) on the port: Ray would retry for ever."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wh = factory.init(tmp_path / "wh")
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(5))))
    wh.close()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "factory.cli", "filter", "exact", "-w", str(tmp_path / "wh"), "--engine",
             "ray", "--ray-address", address],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{address} answers, but not as a Ray head node" in proc.stderr, proc.stderr[-2000:]
