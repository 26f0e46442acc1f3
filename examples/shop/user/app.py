"""user: the shop's customers."""

from shoplib import App, migrate, sql

app = App(health=lambda: sql("SELECT 1"))


@app.route("GET", "/users/(\\d+)")
def get_user(user_id: str, **_: object) -> tuple[int, object]:
    rows = sql("SELECT id, email, name FROM users WHERE id = %s", int(user_id))
    if not rows:
        return 404, {"error": f"no user {user_id}"}
    return 200, dict(zip(("id", "email", "name"), rows[0], strict=True))


@app.route("POST", "/users")
def create_user(body: dict, **_: object) -> tuple[int, object]:
    (row,) = sql("INSERT INTO users (email, name) VALUES (%s, %s) RETURNING id",
                 body["email"], body["name"])
    return 201, {"id": row[0]}


if __name__ == "__main__":
    migrate("CREATE TABLE IF NOT EXISTS users (id serial PRIMARY KEY, email text UNIQUE "
            "NOT NULL, name text NOT NULL)")
    app.run()
