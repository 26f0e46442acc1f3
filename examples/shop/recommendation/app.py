"""recommendation: what sells, counted from the order stream, enriched from the catalog."""

import json

from shoplib import App, call, rds
from stream import consume

app = App(health=lambda: rds().ping())


def count(event: dict[str, str]) -> None:
    for item in json.loads(event["items"]):
        rds().zincrby("popular", item["qty"], item["product_id"])


@app.route("GET", "/recommendations")
def recommend(query: dict, **_: object) -> tuple[int, object]:
    limit = int(query.get("limit", "3"))
    top = rds().zrevrange("popular", 0, limit - 1, withscores=True)
    out = []
    for product_id, sold in top:
        status, product = call("catalog", f"/products/{product_id}")
        if status == 200:
            out.append({**product, "sold": int(sold)})
    return 200, out


if __name__ == "__main__":
    consume("recommendation", count)
    app.run()
