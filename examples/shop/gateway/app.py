"""gateway: the shop's web page and its public API, in front of the other services."""

from pathlib import Path

from shoplib import App, call

app = App()
PAGE = (Path(__file__).parent / "index.html").read_bytes()


@app.route("GET", "/")
def page(**_: object) -> tuple[int, object]:
    return 200, PAGE


@app.route("GET", "/api/products")
def products(**_: object) -> tuple[int, object]:
    return call("catalog", "/products")


@app.route("GET", "/api/recommendations")
def recommendations(**_: object) -> tuple[int, object]:
    return call("recommendation", "/recommendations?limit=3")


@app.route("POST", "/api/checkout")
def checkout(body: dict, **_: object) -> tuple[int, object]:
    return call("order", "/orders", "POST", body, timeout=30)


@app.route("GET", "/api/orders/(\\d+)")
def order(order_id: str, **_: object) -> tuple[int, object]:
    return call("order", f"/orders/{order_id}")


@app.route("GET", "/api/notifications/(\\d+)")
def notifications(user_id: str, **_: object) -> tuple[int, object]:
    return call("notification", f"/notifications/{user_id}")


if __name__ == "__main__":
    app.run()
