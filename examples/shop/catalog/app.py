"""catalog: products and prices, read through a Redis cache."""

import json

from shoplib import App, migrate, rds, sql

app = App(health=lambda: sql("SELECT 1"))
COLUMNS = ("id", "sku", "name", "price_cents", "category")


@app.route("GET", "/products")
def list_products(**_: object) -> tuple[int, object]:
    rows = sql(f"SELECT {', '.join(COLUMNS)} FROM products ORDER BY id")
    return 200, [dict(zip(COLUMNS, r, strict=True)) for r in rows]


@app.route("GET", "/products/(\\d+)")
def get_product(product_id: str, **_: object) -> tuple[int, object]:
    cached = rds().get(f"product:{product_id}")
    if cached:
        return 200, json.loads(cached)
    rows = sql(f"SELECT {', '.join(COLUMNS)} FROM products WHERE id = %s", int(product_id))
    if not rows:
        return 404, {"error": f"no product {product_id}"}
    product = dict(zip(COLUMNS, rows[0], strict=True))
    rds().set(f"product:{product_id}", json.dumps(product), ex=30)
    return 200, product


if __name__ == "__main__":
    migrate("CREATE TABLE IF NOT EXISTS products (id serial PRIMARY KEY, sku text UNIQUE NOT "
            "NULL, name text NOT NULL, price_cents int NOT NULL CHECK (price_cents >= 0), "
            "category text NOT NULL DEFAULT 'general')")
    app.run()
