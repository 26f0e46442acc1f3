"""notification: tells customers about their orders, asynchronously, from the stream."""

import json

from shoplib import App, log, rds
from stream import consume

app = App(health=lambda: rds().ping())


def notify(event: dict[str, str]) -> None:
    message = {"order_id": int(event["order_id"]), "text": f"Order {event['order_id']} is "
               f"paid: {int(event['total_cents']) / 100:.2f} EUR. Thank you!"}
    rds().lpush(f"notifications:{event['user_id']}", json.dumps(message))
    log(f"notified user {event['user_id']} about order {event['order_id']}")


@app.route("GET", "/notifications/(\\d+)")
def notifications(user_id: str, **_: object) -> tuple[int, object]:
    return 200, [json.loads(m) for m in rds().lrange(f"notifications:{user_id}", 0, 49)]


if __name__ == "__main__":
    consume("notification", notify)
    app.run()
