"""The upload client (the product's RegistryBackend) against the real registry over HTTP,
and against sockets that misbehave the way networks do."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner.errors import ConfigError, RegistryError, RegistryUnavailableError
from provisioner.ports import DeviceAlreadyExists, RegistryBackend
from provisioner.settings import load_settings
from provisioner.uploads.client import CloudIotRegistry
from tests.cloud.helpers import RegistryProcess, certificate_pem
from tests.conftest import free_port

SECRET = "tok-Zq9-never-in-messages"


def test_is_a_registry_backend(registry: RegistryProcess) -> None:
    with registry.client() as c:
        backend: RegistryBackend = c  # mypy checks the Protocol; this checks it is usable
        assert backend.get_device("sn-nobody") is None


def test_create_then_get(registry: RegistryProcess, dev_id: str) -> None:
    pem = certificate_pem()
    with registry.client() as c:
        created = c.create_device(dev_id, pem)
        assert created.device_id == dev_id
        assert created.num_id.isdigit() and int(created.num_id) >= 10**15
        assert created.certificate_pems == (pem,)
        assert c.get_device(dev_id) == created
        assert c.get_device(created.num_id) == created  # numId names the device too


def test_device_id_with_url_special_characters(registry: RegistryProcess) -> None:
    odd = "dev+1~x%2Fy.z_-"  # '+', '~', '%' and '.' are allowed in Cloud IoT ids
    with registry.client() as c:
        created = c.create_device(odd, certificate_pem())
        got = c.get_device(odd)
    assert got is not None and got.device_id == odd and got.num_id == created.num_id


def test_duplicate_is_device_already_exists(registry: RegistryProcess, dev_id: str) -> None:
    first = certificate_pem()
    with registry.client() as c:
        c.create_device(dev_id, first)
        with pytest.raises(DeviceAlreadyExists):
            c.create_device(dev_id, certificate_pem())
        kept = c.get_device(dev_id)
    assert kept is not None and kept.certificate_pems == (first,)  # never overwritten


def test_missing_device_is_none(registry: RegistryProcess) -> None:
    with registry.client() as c:
        assert c.get_device("sn-does-not-exist") is None
        assert c.get_device("1234567890123456") is None  # an unknown numId too


def test_bad_pem_is_invalid_argument(registry: RegistryProcess, dev_id: str) -> None:
    with registry.client() as c, pytest.raises(RegistryError) as caught:
        c.create_device(
            dev_id, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----"
        )
    assert not isinstance(caught.value, RegistryUnavailableError)  # not worth a retry
    msg = str(caught.value)
    assert "400 INVALID_ARGUMENT" in msg and "position 0" in msg and dev_id in msg


def test_wrong_token_is_an_error_that_does_not_show_the_token(
    registry: RegistryProcess, dev_id: str
) -> None:
    with registry.client(token=SECRET) as c:
        with pytest.raises(RegistryError) as created:
            c.create_device(dev_id, certificate_pem())
        with pytest.raises(RegistryError) as read:
            c.get_device(dev_id)
    for exc in (created.value, read.value):
        assert not isinstance(exc, RegistryUnavailableError)
        assert "401 UNAUTHENTICATED" in str(exc) and "token_file" in str(exc)
        assert SECRET not in str(exc) and SECRET not in repr(exc)
    with registry.client() as c:
        assert c.get_device(dev_id) is None  # the refused create left nothing behind


def test_dead_registry_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    with CloudIotRegistry(url, "p", "l", "r", SECRET, timeout_s=2) as c:
        with pytest.raises(RegistryUnavailableError) as caught:
            c.create_device("sn-dead", certificate_pem())
        with pytest.raises(RegistryUnavailableError):
            c.get_device("sn-dead")
    assert url in str(caught.value) and "unreachable" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_silent_registry_times_out_as_unavailable() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with (
            CloudIotRegistry(url, "p", "l", "r", SECRET, timeout_s=0.3) as c,
            pytest.raises(RegistryUnavailableError, match=r"did not answer within 0\.3 s"),
        ):
            c.create_device("sn-slow", certificate_pem())


class _Canned(BaseHTTPRequestHandler):
    status = 503
    body = b'{"error": {"code": 503, "message": "backend down", "status": "UNAVAILABLE"}}'

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[str, type[_Canned]]]:
    """A real HTTP server whose answer each test sets (status and body)."""
    handler = type("Handler", (_Canned,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_throttling_are_unavailable(
    canned: tuple[str, type[_Canned]], status: int
) -> None:
    url, handler = canned
    handler.status = status
    with CloudIotRegistry(url, "p", "l", "r", SECRET) as c:
        with pytest.raises(RegistryUnavailableError, match=f"{url} answered {status}"):
            c.create_device("sn-x", certificate_pem())
        with pytest.raises(RegistryUnavailableError):
            c.get_device("sn-x")


def test_other_refusals_carry_the_registry_message(canned: tuple[str, type[_Canned]]) -> None:
    url, handler = canned
    handler.status = 403
    handler.body = (
        b'{"error": {"code": 403, "message": "The signature of device credential in position 0'
        b' could not be verified against any registry certificate", '
        b'"status": "PERMISSION_DENIED"}}'
    )
    with (
        CloudIotRegistry(url, "p", "l", "r", SECRET) as c,
        pytest.raises(RegistryError) as caught,
    ):
        c.create_device("sn-x", certificate_pem())
    assert not isinstance(caught.value, RegistryUnavailableError)
    assert "403 PERMISSION_DENIED: The signature of device credential" in str(caught.value)


def test_a_200_that_is_not_a_device_is_an_error(canned: tuple[str, type[_Canned]]) -> None:
    url, handler = canned
    handler.status, handler.body = 200, b"<html>captive portal</html>"
    with (
        CloudIotRegistry(url, "p", "l", "r", SECRET) as c,
        pytest.raises(RegistryError, match="not a Cloud IoT Device"),
    ):
        c.get_device("sn-x")


def test_from_settings_without_token_file_says_what_to_do(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'var_dir = "{tmp_path / "var"}"\n')
    with pytest.raises(ConfigError) as caught:
        CloudIotRegistry.from_settings(load_settings(cfg, env={}))
    msg = str(caught.value)
    assert str(tmp_path / "var" / "registry" / "upload.token") in msg
    assert "start the registry" in msg and "provisioner demo" in msg


def test_from_settings_uses_the_configured_registry(registry: RegistryProcess, dev_id: str) -> None:
    with CloudIotRegistry.from_settings(registry.station.settings) as c:
        assert c.create_device(dev_id, certificate_pem()).device_id == dev_id
        assert "upload.token" not in repr(c) and registry.token not in repr(c)


def test_url_without_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"registry\.url"):
        CloudIotRegistry("127.0.0.1:8711", "p", "l", "r", SECRET)
