"""What the posts API's tests share: the login header, and the first steps of most tests."""

from __future__ import annotations

import base64
from typing import Any

from fastapi.testclient import TestClient

PASSWORD = "correct horse battery"


def basic(email: str, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{email}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Api:
    """Shortcuts over the client for the steps most tests begin with."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def sign_up(self, email: str, password: str = PASSWORD) -> int:
        r = self.client.post("/users", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def create_post(self, email: str, title: str = "Hello", content: str = "first post",
                    **extra: object) -> dict[str, Any]:
        r = self.client.post("/posts", json={"title": title, "content": content, **extra},
                             headers=basic(email))
        assert r.status_code == 201, r.text
        return r.json()
