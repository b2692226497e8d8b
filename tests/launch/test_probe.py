"""The healthcheck probe (`python -m chameleon.tools.launch.probe`)."""

from __future__ import annotations

import http.server
import socket
import threading

from chameleon.tools.launch.probe import check, expand, main


def test_names_expand_from_the_environment():
    env = {"PORT": "3100", "SHARD_UDS_PATH": "/run/c/shard", "NUM_SHARD": "2"}
    assert expand(["router", "shards", "tcp:h:1"], env) == [
        "http://127.0.0.1:3100/health", "unix:/run/c/shard-0", "unix:/run/c/shard-1", "tcp:h:1"]
    assert expand(["router", "shards"], {}) == [
        "http://127.0.0.1:3000/health", "unix:/tmp/chameleon-server-0"]


def test_unix_and_tcp_targets(sock_dir):
    path = f"{sock_dir}/s-0"
    assert check(f"unix:{path}") is not None
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        assert check(f"unix:{path}") is None
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert check(f"tcp:127.0.0.1:{server.getsockname()[1]}") is None
    assert "expected" in (check("ftp:x") or "")


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_http_target_needs_200(capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert main([f"{base}/health"]) == 0
        assert main([f"{base}/other"]) == 1
        assert "503" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()
