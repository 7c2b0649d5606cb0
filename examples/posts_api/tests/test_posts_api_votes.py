"""Votes: one per user per post, and taking one back."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .posts_api_helpers import Api, basic


def votes(client: TestClient, post_id: int) -> int:
    return client.get(f"/posts/{post_id}").json()["votes"]


def test_vote_once_and_a_repeat_is_409(api: Api, client: TestClient):
    uid = api.sign_up("ada@example.com")
    api.sign_up("bob@example.com")
    post = api.create_post("ada@example.com")
    r = client.post(f"/posts/{post['id']}/votes", headers=basic("ada@example.com"))
    assert r.status_code == 201 and r.json() == {"post_id": post["id"], "user_id": uid}
    assert client.post(f"/posts/{post['id']}/votes", headers=basic("ada@example.com")
                       ).status_code == 409
    assert votes(client, post["id"]) == 1
    assert client.post(f"/posts/{post['id']}/votes", headers=basic("bob@example.com")
                       ).status_code == 201
    assert votes(client, post["id"]) == 2
    assert client.get("/posts").json()[0]["votes"] == 2


def test_voting_for_a_missing_post_is_404_and_needs_a_login(api: Api, client: TestClient):
    api.sign_up("ada@example.com")
    assert client.post("/posts/99/votes", headers=basic("ada@example.com")).status_code == 404
    post = api.create_post("ada@example.com")
    assert client.post(f"/posts/{post['id']}/votes").status_code == 401
    assert votes(client, post["id"]) == 0


def test_remove_a_vote(api: Api, client: TestClient):
    api.sign_up("ada@example.com")
    post = api.create_post("ada@example.com")
    url = f"/posts/{post['id']}/votes"
    assert client.post(url, headers=basic("ada@example.com")).status_code == 201
    r = client.delete(url, headers=basic("ada@example.com"))
    assert r.status_code == 204 and votes(client, post["id"]) == 0
    r = client.delete(url, headers=basic("ada@example.com"))
    assert r.status_code == 404 and r.json()["detail"] == "vote not found"
    r = client.delete("/posts/99/votes", headers=basic("ada@example.com"))
    assert r.status_code == 404 and r.json()["detail"] == "post not found"
    assert client.delete(url).status_code == 401
    assert client.post(url, headers=basic("ada@example.com")).status_code == 201  # again


def test_deleting_a_post_takes_its_votes(api: Api, client: TestClient):
    api.sign_up("ada@example.com")
    post = api.create_post("ada@example.com")
    assert client.post(f"/posts/{post['id']}/votes", headers=basic("ada@example.com")
                       ).status_code == 201
    assert client.delete(f"/posts/{post['id']}", headers=basic("ada@example.com")
                         ).status_code == 204
    assert client.post(f"/posts/{post['id']}/votes", headers=basic("ada@example.com")
                       ).status_code == 404
