"""payment: charges cards. PAYMENT_DELAY_MS and PAYMENT_FAIL_RATE reproduce slow or failing
payment providers; a card number ending in 0002 is always declined."""

import os
import random
import time

from shoplib import App, log, migrate, sql

app = App(health=lambda: sql("SELECT 1"))
DELAY = int(os.environ.get("PAYMENT_DELAY_MS", "0")) / 1000
FAIL_RATE = float(os.environ.get("PAYMENT_FAIL_RATE", "0"))


@app.route("POST", "/charges")
def charge(body: dict, **_: object) -> tuple[int, object]:
    time.sleep(DELAY)
    declined = body.get("card", "").endswith("0002") or random.random() < FAIL_RATE
    status = "declined" if declined else "captured"
    (row,) = sql("INSERT INTO charges (order_id, amount_cents, status) VALUES (%s, %s, %s) "
                 "RETURNING id", body["order_id"], body["amount_cents"], status)
    log(f"charge {row[0]} for order {body['order_id']}: {status}")
    if declined:
        return 402, {"charge_id": row[0], "status": status, "error": "card declined"}
    return 201, {"charge_id": row[0], "status": status}


if __name__ == "__main__":
    migrate("CREATE TABLE IF NOT EXISTS charges (id serial PRIMARY KEY, order_id int NOT "
            "NULL, amount_cents int NOT NULL, status text NOT NULL, at timestamptz NOT NULL "
            "DEFAULT now())")
    app.run()
