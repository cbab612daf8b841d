"""What operators see: /metrics counts what happened, with no unbounded label; /healthz and
/readyz; one JSON log line per authorization with the card masked."""

from __future__ import annotations

import json
import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from hdfpay.json_logs import JsonLineFormatter
from authorizer.listener import READINESS
from ledger.demo_region import card_uid
from terminal_protocol.codec import encode_request
from terminal_protocol.transport import KSN_HEADER, MAC_HEADER, TERMINAL_ID_HEADER, TERMINAL_PATH

from conftest import ACTIVE_TERMINAL

# "effect": what a server void did, one of metrics.SERVER_VOID_EFFECTS.
ALLOWED_LABELS = {"message_type", "response_code", "reason", "partner_category", "effect", "le"}


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as reply:
            return reply.status, await reply.text()


def _samples(exposition: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples}


async def _traffic(server, client, keys_for) -> list:
    approved = [await client.purchase(card_uid(5), amount) for amount in (1_00, 2_50, 3_75)]
    await client.purchase(card_uid(1), 1_00)                                  # 41
    body = encode_request(client.purchase_request(card_uid(6), 1_00))
    ksn, mac = keys_for(ACTIVE_TERMINAL).sign_request("POST", TERMINAL_PATH, body)
    headers = {TERMINAL_ID_HEADER: ACTIVE_TERMINAL, KSN_HEADER: ksn.hex().upper(),
               "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for attempt in ({MAC_HEADER: "00" * 8}, {MAC_HEADER: mac.hex().upper()},
                        {MAC_HEADER: mac.hex().upper()}):         # forged, genuine, replayed
            async with session.post(server.url + TERMINAL_PATH, data=body,
                                    headers={**headers, **attempt}) as reply:
                await reply.read()
    return approved


async def test_metrics_count_what_happened(server, client, keys_for, settings):
    approved = await _traffic(server, client, keys_for)
    status, text = await _get(server.url + "/metrics")
    assert status == 200
    samples = _samples(text)
    count = lambda rc: samples[("hdfpay_authorizations_total",
                                (("message_type", "purchase"), ("response_code", rc)))]
    assert (count("00"), count("41"), count("63")) == (4, 1, 1)
    assert samples[("hdfpay_security_rejections_total", (("reason", "mac"),))] == 1
    assert samples[("hdfpay_security_rejections_total", (("reason", "replay"),))] == 1
    assert samples[("hdfpay_approved_amount_cents_total", (("partner_category", "BOOKSHOP"),))] == \
        sum(r.approved_cents for r in approved) + 1_00
    assert samples[("hdfpay_authorization_duration_seconds_count", (("message_type", "purchase"),))] == 6
    assert samples[("hdfpay_db_round_trip_seconds_count", ())] == 6
    assert samples[("hdfpay_db_pool_connections", ())] == settings.db_pool_size
    assert samples[("hdfpay_requests_in_flight", ())] == 0
    assert ("process_cpu_seconds_total", ()) in samples


async def test_no_label_carries_a_card_a_terminal_or_anything_unbounded(server, client, keys_for):
    await _traffic(server, client, keys_for)
    _, text = await _get(server.url + "/metrics")
    for (name, labels), _value in _samples(text).items():
        if name == "python_info":            # the interpreter's version: fixed per process
            continue
        assert {key for key, _ in labels} <= ALLOWED_LABELS, name
        for _, value in labels:
            assert "TERM" not in value and card_uid(5).hex().upper() not in value.upper()


async def test_health_and_readiness(server):
    assert (await _get(server.url + "/healthz"))[0] == 200
    status, body = await _get(server.url + "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    server.app[READINESS].start_draining()
    status, body = await _get(server.url + "/readyz")
    assert (status, json.loads(body)["reason"]) == (503, "draining")
    _, text = await _get(server.url + "/metrics")
    assert _samples(text)[("hdfpay_draining", ())] == 1


async def test_one_json_line_per_authorization_with_the_card_masked(server, client, caplog):
    caplog.set_level(logging.INFO, logger="hdfpay.authorizations")
    response = await client.purchase(card_uid(5), 4_20)
    records = [r for r in caplog.records if r.name == "hdfpay.authorizations"]
    assert len(records) == 1
    line = json.loads(JsonLineFormatter().format(records[0]))
    assert line["request_id"] == response.request_id and line["rc"] == "00"
    assert line["terminal"] == ACTIVE_TERMINAL and line["latency_ms"] > 0
    assert line["card"] == "04••••••••0005"
    assert card_uid(5).hex().upper() not in caplog.text.upper()
