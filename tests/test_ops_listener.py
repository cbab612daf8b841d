"""The operator listener beside the terminal one: its own port, routes, pool and body limit;
TLS like the terminals'; plain HTTP only on loopback; no fixed port for a throwaway server."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest

from hdfpay.config import DEFAULT_OPS_PORT, ConfigError, Settings
from backoffice.ops_app import OPS_MAX_BODY_BYTES
from hdfpay.server import running_server
from terminal_protocol.codec import MAX_REQUEST_BODY_BYTES
from terminal_protocol.transport import TERMINAL_PATH

from test_terminal_security import _self_signed


async def _status(url: str, method: str = "GET", **kwargs) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, **kwargs) as reply:
            return reply.status


async def test_each_listener_serves_only_its_own_routes(server):
    assert server.ops_url != server.url and server.ops_url.startswith("http://127.0.0.1:")
    assert await _status(server.ops_url + "/v1/ops/openapi.json") == 200
    assert await _status(server.url + "/v1/ops/openapi.json") == 404
    assert await _status(server.ops_url + TERMINAL_PATH, "POST", data=b"{}") == 404
    assert await _status(server.ops_url + "/metrics") == 404
    # The terminals keep their small limit; the operators' is for CSV uploads.
    assert server.app._client_max_size == MAX_REQUEST_BODY_BYTES + 1
    assert server.ops_app._client_max_size == OPS_MAX_BODY_BYTES == 8 * 1024 * 1024


async def test_the_operator_listener_has_its_own_pool(server, conn):
    """Bulk operator work never takes a connection the terminals need."""
    names = {row["application_name"] for row in await conn.fetch(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")}
    assert {"hdfpay", "hdfpay-ops"} <= names


async def test_the_operator_listener_speaks_tls_when_the_terminals_do(settings, dsn, hsm, tmp_path):
    cert, key, trust = _self_signed(tmp_path)
    secure = dataclasses.replace(settings, tls_cert_file=cert, tls_key_file=key)
    async with running_server(secure, dsn, hsm) as server:
        assert server.ops_url.startswith("https://")
        async with aiohttp.ClientSession() as session:
            async with session.get(server.ops_url + "/v1/ops/openapi.json", ssl=trust) as reply:
                assert reply.status == 200


@pytest.mark.parametrize("changes, message", [
    ({"ops_host": "0.0.0.0"}, "operator listener on 0.0.0.0 without TLS"),
    ({"port": 9000, "ops_port": 9000}, "need a port each"),
    ({"port": DEFAULT_OPS_PORT}, "need a port each"),
])
async def test_unsafe_or_clashing_operator_settings_are_refused(settings, dsn, hsm, changes,
                                                                message):
    with pytest.raises(ConfigError, match=message):
        async with running_server(dataclasses.replace(settings, **changes), dsn, hsm):
            pass


def test_the_operator_port_follows_the_setting_or_the_terminal_listener(settings, monkeypatch):
    assert dataclasses.replace(settings, port=0, ops_port=None).ops_listen_port == 0
    assert dataclasses.replace(settings, port=8080, ops_port=None).ops_listen_port == DEFAULT_OPS_PORT
    assert dataclasses.replace(settings, port=0, ops_port=9100).ops_listen_port == 9100
    monkeypatch.setenv("HDFPAY_OPS_PORT", "0")
    monkeypatch.setenv("HDFPAY_OPS_HOST", "::1")
    from_env = Settings.from_env()
    assert (from_env.ops_port, from_env.ops_host) == (0, "::1")
    monkeypatch.setenv("HDFPAY_OPS_PORT", "eighty-one")
    with pytest.raises(ConfigError, match="HDFPAY_OPS_PORT must be an integer"):
        Settings.from_env()
