"""pipelines.tracking.check_reachable: a tracking server that does not answer is one line, fast, before any
work (the CLI side of it is in the table of tests/e2e/test_bad_inputs.py); any HTTP answer will do."""

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipelines import tracking
from pipelines.tracking import TrackingError, check_reachable


class NotFound(BaseHTTPRequestHandler):
    """Answers every request 404, like a server whose root is no MLflow page."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[str]:
    """The URL of a real HTTP server on 127.0.0.1 that answers 404."""
    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent() -> Iterator[str]:
    """The URL of a socket that accepts connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_any_http_answer_is_reachable_and_local_stores_are_not_probed(answering):
    check_reachable(answering)
    check_reachable("sqlite:///nowhere/mlruns.db")


def test_a_closed_port_is_one_line_naming_the_uri():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking server at") as error:
        check_reachable(uri)
    assert uri in str(error.value) and "\n" not in str(error.value)


def test_a_server_that_never_answers_is_refused_after_the_timeout(silent, monkeypatch):
    monkeypatch.setattr(tracking, "REACH_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=silent):
        check_reachable(silent)
    assert time.monotonic() - started < 5
