"""order: the checkout. user -> catalog (prices) -> inventory (reserve) -> payment -> an
event on the Redis stream `orders` that notification and recommendation consume."""

import json

from shoplib import App, call, log, migrate, sql
from stream import publish

app = App(health=lambda: sql("SELECT 1"))


@app.route("POST", "/orders")
def checkout(body: dict, **_: object) -> tuple[int, object]:
    status, user = call("user", f"/users/{body['user_id']}")
    if status != 200:
        return 400, {"error": f"unknown user {body['user_id']}"}
    items, total = [], 0
    for item in body["items"]:
        status, product = call("catalog", f"/products/{item['product_id']}")
        if status != 200:
            return 400, {"error": f"unknown product {item['product_id']}"}
        items.append({**item, "price_cents": product["price_cents"]})
        total += product["price_cents"] * item["qty"]
    (row,) = sql("INSERT INTO orders (user_id, status, total_cents, items) VALUES "
                 "(%s, 'new', %s, %s) RETURNING id", user["id"], total, json.dumps(items))
    order_id = row[0]
    status, held = call("inventory", "/reservations", "POST",
                        {"order_id": order_id, "items": body["items"]})
    if status != 201:
        sql("UPDATE orders SET status = 'out_of_stock' WHERE id = %s", order_id)
        return 409, {"order_id": order_id, "status": "out_of_stock", "error": held["error"]}
    reservation = held["reservation_id"]
    status, paid = call("payment", "/charges", "POST", {
        "order_id": order_id, "amount_cents": total, "card": body.get("card", "4242")})
    if status != 201:
        call("inventory", f"/reservations/{reservation}/release", "POST")
        sql("UPDATE orders SET status = 'payment_failed' WHERE id = %s", order_id)
        return 402, {"order_id": order_id, "status": "payment_failed",
                     "error": paid.get("error", "payment failed")}
    call("inventory", f"/reservations/{reservation}/commit", "POST")
    sql("UPDATE orders SET status = 'paid' WHERE id = %s", order_id)
    publish({"order_id": order_id, "user_id": user["id"], "total_cents": total,
             "items": json.dumps(items)})
    log(f"order {order_id} paid: {total} cents")
    return 201, {"order_id": order_id, "status": "paid", "total_cents": total}


@app.route("GET", "/orders/(\\d+)")
def get_order(order_id: str, **_: object) -> tuple[int, object]:
    rows = sql("SELECT id, user_id, status, total_cents, items FROM orders WHERE id = %s",
               int(order_id))
    if not rows:
        return 404, {"error": f"no order {order_id}"}
    return 200, dict(zip(("id", "user_id", "status", "total_cents", "items"), rows[0],
                         strict=True))


if __name__ == "__main__":
    migrate("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, user_id int NOT NULL, "
            "status text NOT NULL, total_cents int NOT NULL, items jsonb NOT NULL, "
            "created timestamptz NOT NULL DEFAULT now())")
    app.run()
