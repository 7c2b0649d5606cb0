"""Posts: reading (paging, search), writing as a logged-in user, and owner-only changes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
from fastapi.testclient import TestClient

from .posts_api_helpers import Api, basic

POST = {"title": "Hello", "content": "first post"}


def test_create_and_get_a_post(api: Api, client: TestClient):
    uid = api.sign_up("ada@example.com")
    post = api.create_post("ada@example.com", published=False)
    assert post["owner_id"] == uid and post["votes"] == 0 and post["published"] is False
    r = client.get(f"/posts/{post['id']}")
    assert r.status_code == 200 and r.json() == post


def test_get_a_missing_post_is_404(client: TestClient):
    assert client.get("/posts/1").status_code == 404


def test_creating_needs_a_login_and_a_valid_body(api: Api, client: TestClient, dbkit_url: str):
    api.sign_up("ada@example.com")
    assert client.post("/posts", json=POST).status_code == 401
    for body in ({"title": "", "content": "c"}, {"content": "c"},
                 {"title": "t", "content": "c", "owner_id": 1}):
        assert client.post("/posts", json=body, headers=basic("ada@example.com")
                           ).status_code == 422, body
    with psycopg.connect(dbkit_url) as conn:
        assert conn.execute("SELECT count(*) FROM posts").fetchone() == (0,)


def test_list_pages_newest_first(api: Api, client: TestClient):
    api.sign_up("ada@example.com")
    ids = [api.create_post("ada@example.com", title=f"post {i}")["id"] for i in range(5)]
    newest_first = ids[::-1]
    assert [p["id"] for p in client.get("/posts").json()] == newest_first
    assert [p["id"] for p in client.get("/posts?limit=2").json()] == newest_first[:2]
    assert [p["id"] for p in client.get("/posts?limit=2&skip=2").json()] == newest_first[2:4]
    assert client.get("/posts?skip=5").json() == []


def test_list_refuses_limits_out_of_range(client: TestClient):
    for query in ("limit=0", "limit=101", "skip=-1", "limit=ten"):
        assert client.get(f"/posts?{query}").status_code == 422, query


def test_search_matches_titles_ignoring_case_and_literally(api: Api, client: TestClient):
    api.sign_up("ada@example.com")
    api.create_post("ada@example.com", title="Why I index foreign keys")
    api.create_post("ada@example.com", title="COPY is fast", content="an index, in the content")
    api.create_post("ada@example.com", title="100% uptime")

    def titles(search: str) -> list[str]:
        r = client.get("/posts", params={"search": search})
        assert r.status_code == 200
        return [p["title"] for p in r.json()]

    assert titles("INDEX") == ["Why I index foreign keys"]  # the content is not searched
    assert titles("%") == ["100% uptime"]  # not a LIKE wildcard
    assert titles("_") == []
    assert titles("no such title") == []


def test_only_the_owner_may_update(api: Api, client: TestClient):
    api.sign_up("ada@example.com")
    api.sign_up("bob@example.com")
    post = api.create_post("ada@example.com")
    change = {"title": "Edited", "content": "new text", "published": False}
    r = client.put(f"/posts/{post['id']}", json=change, headers=basic("bob@example.com"))
    assert r.status_code == 403
    assert client.get(f"/posts/{post['id']}").json() == post  # unchanged
    r = client.put(f"/posts/{post['id']}", json=change, headers=basic("ada@example.com"))
    assert r.status_code == 200
    assert {k: r.json()[k] for k in change} == change
    assert client.get(f"/posts/{post['id']}").json()["title"] == "Edited"


def test_updating_a_missing_post_is_404_and_needs_a_login(api: Api, client: TestClient):
    api.sign_up("ada@example.com")
    assert client.put("/posts/99", json=POST, headers=basic("ada@example.com")).status_code == 404
    assert client.put("/posts/99", json=POST).status_code == 401


def test_only_the_owner_may_delete(api: Api, client: TestClient):
    api.sign_up("ada@example.com")
    api.sign_up("bob@example.com")
    post = api.create_post("ada@example.com")
    assert client.delete(f"/posts/{post['id']}", headers=basic("bob@example.com")
                         ).status_code == 403
    assert client.get(f"/posts/{post['id']}").status_code == 200
    r = client.delete(f"/posts/{post['id']}", headers=basic("ada@example.com"))
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/posts/{post['id']}").status_code == 404
    assert client.delete(f"/posts/{post['id']}", headers=basic("ada@example.com")
                         ).status_code == 404
    assert client.delete(f"/posts/{post['id']}").status_code == 401


def test_50_concurrent_posts_all_succeed(api: Api, client: TestClient, dbkit_url: str):
    """50 threads released at once, each creating a post as the same user (so 50 password
    checks too) through a pool of 10 connections."""
    uid = api.sign_up("ada@example.com")
    start = threading.Barrier(50)

    def create(i: int) -> tuple[int, int]:
        start.wait()
        r = client.post("/posts", json={"title": f"post {i}", "content": "c"},
                        headers=basic("ada@example.com"))
        return r.status_code, r.json().get("id", 0)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(create, range(50)))
    assert [code for code, _ in results] == [201] * 50
    assert len({post_id for _, post_id in results}) == 50
    with psycopg.connect(dbkit_url) as conn:
        assert conn.execute("SELECT count(*), min(owner_id), max(owner_id) FROM posts"
                            ).fetchone() == (50, uid, uid)
