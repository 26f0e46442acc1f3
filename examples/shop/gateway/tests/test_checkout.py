"""Checkout integration tests, run against the live environment:

    devenv up --profile integration-test
    devenv exec gateway -- python -m pytest -q tests   (from examples/shop)

They reach the shop through the gateway's own address ($SERVICE_URL, set by `devenv exec`).
"""

import json
import os
import urllib.error
import urllib.request

BASE = os.environ.get("SERVICE_URL", "http://127.0.0.1:8200")


def api(path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_checkout_reserves_stock_charges_and_notifies():
    status, order = api("/api/checkout", {"user_id": 2, "items": [{"product_id": 3, "qty": 2}],
                                          "card": "4242"})
    assert status == 201 and order["status"] == "paid"
    assert order["total_cents"] == 2 * 1290
    assert api(f"/api/orders/{order['order_id']}")[1]["status"] == "paid"
    import time

    for _ in range(50):  # notification is asynchronous (a Redis stream)
        notes = api("/api/notifications/2")[1]
        if any(n["order_id"] == order["order_id"] for n in notes):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no notification for the order")


def test_declined_card_releases_the_reservation():
    status, failed = api("/api/checkout", {"user_id": 1, "items": [{"product_id": 6, "qty": 1}],
                                           "card": "4000000000000002"})
    assert status == 402 and failed["status"] == "payment_failed"
    status, ok = api("/api/checkout", {"user_id": 1, "items": [{"product_id": 6, "qty": 3}],
                                       "card": "4242"})
    assert status == 201, ok  # all 3 kettles are still there: the failed order held none


def test_more_than_in_stock_is_refused():
    status, body = api("/api/checkout", {"user_id": 1, "items": [{"product_id": 5, "qty": 999}]})
    assert status == 409 and body["status"] == "out_of_stock"
