"""Sign-up, looking a user up, and logging in: the password is stored only as a salted scrypt
hash and never comes back."""

from __future__ import annotations

import psycopg
from fastapi.testclient import TestClient
from posts_api.passwords import verify_password

from .posts_api_helpers import PASSWORD, Api, basic


def stored_hash(url: str, email: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE email = %s", (email,)).fetchone()
    assert row is not None
    return row[0]


def test_sign_up_returns_the_user_and_stores_a_hash_not_the_password(client: TestClient,
                                                                     dbkit_url: str):
    r = client.post("/users", json={"email": "ada@example.com", "password": PASSWORD})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "email", "created_at"}
    assert body["email"] == "ada@example.com"
    assert PASSWORD not in r.text
    hashed = stored_hash(dbkit_url, "ada@example.com")
    assert hashed != PASSWORD and PASSWORD not in hashed
    assert hashed.startswith("scrypt$")
    assert verify_password(PASSWORD, hashed) and not verify_password(PASSWORD + "!", hashed)


def test_the_same_password_gives_different_hashes(api: Api, dbkit_url: str):
    api.sign_up("a@example.com")
    api.sign_up("b@example.com")
    assert stored_hash(dbkit_url, "a@example.com") != stored_hash(dbkit_url, "b@example.com")


def test_a_second_sign_up_with_the_same_email_is_409_ignoring_case(api: Api, client: TestClient,
                                                                   dbkit_url: str):
    api.sign_up("ada@example.com")
    r = client.post("/users", json={"email": "Ada@Example.COM", "password": "another password"})
    assert r.status_code == 409, r.text
    with psycopg.connect(dbkit_url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)


def test_sign_up_refuses_a_bad_email_a_short_password_and_unknown_fields(client: TestClient):
    for body in ({"email": "not-an-email", "password": PASSWORD},
                 {"email": "ada@example.com", "password": "short"},
                 {"email": "ada@example.com"},
                 {"email": "ada@example.com", "password": PASSWORD, "is_admin": True}):
        assert client.post("/users", json=body).status_code == 422, body


def test_get_a_user_and_404_for_a_missing_one(api: Api, client: TestClient):
    uid = api.sign_up("ada@example.com")
    r = client.get(f"/users/{uid}")
    assert r.status_code == 200
    assert r.json()["email"] == "ada@example.com" and "password_hash" not in r.json()
    assert client.get(f"/users/{uid + 1}").status_code == 404


def test_logins_that_fail_are_401_with_a_basic_challenge(api: Api, client: TestClient,
                                                         dbkit_url: str):
    api.sign_up("ada@example.com")
    with psycopg.connect(dbkit_url) as conn:  # as the sample data's users: no usable hash
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('alice@example.com', '!')")
    post = {"title": "t", "content": "c"}
    for headers in ({}, basic("ada@example.com", "wrong password"), basic("nobody@example.com"),
                    basic("alice@example.com", "!")):
        r = client.post("/posts", json=post, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Basic")
    assert client.post("/posts", json=post, headers=basic("ADA@example.com")).status_code == 201
