"""inventory: stock levels, and reservations that hold stock while an order is paid."""

import uuid

from shoplib import App, migrate, sql, transaction

app = App(health=lambda: sql("SELECT 1"))


@app.route("GET", "/stock/(\\d+)")
def stock(product_id: str, **_: object) -> tuple[int, object]:
    rows = sql("SELECT available FROM stock WHERE product_id = %s", int(product_id))
    return 200, {"product_id": int(product_id), "available": rows[0][0] if rows else 0}


@app.route("POST", "/reservations")
def reserve(body: dict, **_: object) -> tuple[int, object]:
    """Reserve every item or none: rows are locked, checked, then decremented."""
    reservation = str(uuid.uuid4())
    try:
        with transaction():
            for item in sorted(body["items"], key=lambda i: i["product_id"]):
                rows = sql("SELECT available FROM stock WHERE product_id = %s FOR UPDATE",
                           item["product_id"])
                if not rows or rows[0][0] < item["qty"]:
                    raise Conflict(item["product_id"], rows[0][0] if rows else 0)
                sql("UPDATE stock SET available = available - %s WHERE product_id = %s",
                    item["qty"], item["product_id"])
                sql("INSERT INTO reservations (id, order_id, product_id, qty, status) "
                    "VALUES (%s, %s, %s, %s, 'held')", reservation, body["order_id"],
                    item["product_id"], item["qty"])
    except Conflict as exc:  # the transaction rolled back: nothing is held
        return 409, {"error": str(exc)}
    return 201, {"reservation_id": reservation}


@app.route("POST", "/reservations/([0-9a-f-]+)/(release|commit)")
def settle(reservation: str, action: str, **_: object) -> tuple[int, object]:
    with transaction():
        rows = sql("UPDATE reservations SET status = %s WHERE id = %s AND status = 'held' "
                   "RETURNING product_id, qty", "released" if action == "release"
                   else "committed", reservation)
        if action == "release":
            for product_id, qty in rows:
                sql("UPDATE stock SET available = available + %s WHERE product_id = %s",
                    qty, product_id)
    return 200, {"reservation_id": reservation, "status": action + "d"}


class Conflict(Exception):
    def __init__(self, product_id: int, available: int):
        super().__init__(f"only {available} of product {product_id} in stock")


if __name__ == "__main__":
    migrate("CREATE TABLE IF NOT EXISTS stock (product_id int PRIMARY KEY, available int NOT "
            "NULL CHECK (available >= 0))",
            "CREATE TABLE IF NOT EXISTS reservations (id uuid, order_id int NOT NULL, "
            "product_id int NOT NULL, qty int NOT NULL, status text NOT NULL)")
    app.run()
