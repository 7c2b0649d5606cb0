"""The posts API: users, their posts and votes, over the schema ``dbkit migrate`` keeps.

Run it where ``dbkit setup --app-role posts_app`` wrote ``.env``::

    uvicorn posts_api.main:app --port 8000

Authentication is HTTP Basic: the email and password a user signed up with, checked against
the stored scrypt hash on every request that changes something. Reading needs no login.
Without TLS in front of it, Basic sends the password in the clear: use HTTPS beyond localhost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from psycopg import Connection, errors
from psycopg.rows import DictRow
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from posts_api import db
from posts_api.passwords import burn_time, hash_password, verify_password

# -- what goes in and out ------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(Strict):
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s:]+@[^@\s]+$")
    password: str = Field(min_length=8, max_length=1024)


class UserOut(BaseModel):
    id: int
    email: str
    created_at: datetime


class PostIn(Strict):
    title: str = Field(min_length=1, max_length=300)
    content: str = Field(max_length=100_000)
    published: bool = True


class PostOut(BaseModel):
    id: int
    title: str
    content: str
    published: bool
    created_at: datetime
    owner_id: int
    votes: int


class VoteOut(BaseModel):
    post_id: int
    user_id: int


# -- the database --------------------------------------------------------------------------

_POST = """
    SELECT p.id, p.title, p.content, p.published, p.created_at, p.owner_id,
           (SELECT count(*) FROM votes v WHERE v.post_id = p.id) AS votes
      FROM posts p
"""


def pool(request: Request) -> db.Pool:
    return request.app.state.pool


def fetch_post(conn: Connection[DictRow], post_id: int) -> dict[str, Any] | None:
    return conn.execute(_POST + " WHERE p.id = %s", (post_id,)).fetchone()


def post_exists(conn: Connection[DictRow], post_id: int) -> bool:
    return conn.execute("SELECT 1 FROM posts WHERE id = %s", (post_id,)).fetchone() is not None


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


# -- who is asking -------------------------------------------------------------------------

basic = HTTPBasic(realm="posts_api")


def current_user(request: Request,
                 credentials: Annotated[HTTPBasicCredentials, Depends(basic)]) -> int:
    """The id of the user whose email and password came with the request, else 401. The
    connection goes back to the pool before the (deliberately slow) hash is checked."""
    with pool(request).connection() as conn:
        row = conn.execute("SELECT id, password_hash FROM users WHERE lower(email) = lower(%s)",
                           (credentials.username,)).fetchone()
    if row is None:
        burn_time(credentials.password)
    if row is None or not verify_password(credentials.password, row["password_hash"]):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong email or password",
                            headers={"WWW-Authenticate": 'Basic realm="posts_api"'})
    return row["id"]


User = Annotated[int, Depends(current_user)]


# -- the app -------------------------------------------------------------------------------


def create_app(database_url: str | None = None, *, pool_size: int = 10) -> FastAPI:
    """The app, connecting to ``database_url`` (by default DBKIT_APP_URL, else DATABASE_URL,
    from the environment or ``.env``) when it starts, not when it is created."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        conn_pool = db.make_pool(database_url or db.database_url(), max_size=pool_size)
        # wait for the first connection: a wrong URL or password fails the start, not a request
        await run_in_threadpool(conn_pool.open, wait=True)
        app.state.pool = conn_pool
        try:
            yield
        finally:
            await run_in_threadpool(conn_pool.close)

    app = FastAPI(title="posts_api", lifespan=lifespan)

    @app.exception_handler(PoolTimeout)
    async def busy(request: Request, exc: PoolTimeout) -> JSONResponse:
        return JSONResponse({"detail": "too busy: no database connection free"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "1"})

    # Handlers are plain functions: FastAPI runs them in its thread pool, each taking a pooled
    # connection for one transaction, committed before the response is sent.

    @app.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserOut)
    def sign_up(user: UserIn, request: Request) -> dict[str, Any]:
        hashed = hash_password(user.password)  # before taking a connection: it is slow
        try:
            with pool(request).connection() as conn:
                row = conn.execute(
                    "INSERT INTO users (email, password_hash) VALUES (%s, %s) "
                    "RETURNING id, email, created_at", (user.email, hashed)).fetchone()
        except errors.UniqueViolation:  # users_email_lower_key: emails are unique ignoring case
            raise HTTPException(status.HTTP_409_CONFLICT, "that email has an account") from None
        assert row is not None
        return row

    @app.get("/users/{user_id}", response_model=UserOut)
    def get_user(user_id: int, request: Request) -> dict[str, Any]:
        with pool(request).connection() as conn:
            row = conn.execute("SELECT id, email, created_at FROM users WHERE id = %s",
                               (user_id,)).fetchone()
        if row is None:
            raise not_found("user")
        return row

    @app.get("/posts", response_model=list[PostOut])
    def list_posts(request: Request,
                   limit: Annotated[int, Query(ge=1, le=100)] = 10,
                   skip: Annotated[int, Query(ge=0)] = 0,
                   search: Annotated[str | None, Query(max_length=300)] = None
                   ) -> list[dict[str, Any]]:
        """Newest first; ``search`` keeps the posts whose title contains it, ignoring case
        (taken literally: ``%`` and ``_`` are not wildcards)."""
        with pool(request).connection() as conn:
            return conn.execute(
                _POST + " WHERE %(search)s::text IS NULL"
                "    OR strpos(lower(p.title), lower(%(search)s::text)) > 0"
                " ORDER BY p.created_at DESC, p.id DESC LIMIT %(limit)s OFFSET %(skip)s",
                {"search": search, "limit": limit, "skip": skip}).fetchall()

    @app.get("/posts/{post_id}", response_model=PostOut)
    def get_post(post_id: int, request: Request) -> dict[str, Any]:
        with pool(request).connection() as conn:
            row = fetch_post(conn, post_id)
        if row is None:
            raise not_found("post")
        return row

    @app.post("/posts", status_code=status.HTTP_201_CREATED, response_model=PostOut)
    def create_post(post: PostIn, user: User, request: Request) -> dict[str, Any]:
        with pool(request).connection() as conn:
            created = conn.execute(
                "INSERT INTO posts (title, content, published, owner_id) VALUES (%s, %s, %s, %s)"
                " RETURNING id", (post.title, post.content, post.published, user)).fetchone()
            assert created is not None
            row = fetch_post(conn, created["id"])
        assert row is not None
        return row

    @app.put("/posts/{post_id}", response_model=PostOut)
    def update_post(post_id: int, post: PostIn, user: User, request: Request) -> dict[str, Any]:
        with pool(request).connection() as conn:
            # one statement decides: another user's concurrent delete cannot slip in between
            # a check of the owner and the update
            updated = conn.execute(
                "UPDATE posts SET title = %s, content = %s, published = %s"
                " WHERE id = %s AND owner_id = %s RETURNING id",
                (post.title, post.content, post.published, post_id, user)).fetchone()
            if updated is None:
                raise forbidden_or_missing(conn, post_id)
            row = fetch_post(conn, post_id)
        assert row is not None
        return row

    @app.delete("/posts/{post_id}", status_code=status.HTTP_204_NO_CONTENT)
    def delete_post(post_id: int, user: User, request: Request) -> Response:
        with pool(request).connection() as conn:
            deleted = conn.execute("DELETE FROM posts WHERE id = %s AND owner_id = %s",
                                   (post_id, user)).rowcount
            if not deleted:
                raise forbidden_or_missing(conn, post_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.post("/posts/{post_id}/votes", status_code=status.HTTP_201_CREATED,
              response_model=VoteOut)
    def vote(post_id: int, user: User, request: Request) -> dict[str, Any]:
        try:
            with pool(request).connection() as conn:
                conn.execute("INSERT INTO votes (post_id, user_id) VALUES (%s, %s)",
                             (post_id, user))
        except errors.UniqueViolation:  # the primary key (post_id, user_id): one vote each
            raise HTTPException(status.HTTP_409_CONFLICT, "you already voted for this post"
                                ) from None
        except errors.ForeignKeyViolation:  # no such post (or it was deleted just now)
            raise not_found("post") from None
        return {"post_id": post_id, "user_id": user}

    @app.delete("/posts/{post_id}/votes", status_code=status.HTTP_204_NO_CONTENT)
    def unvote(post_id: int, user: User, request: Request) -> Response:
        with pool(request).connection() as conn:
            deleted = conn.execute("DELETE FROM votes WHERE post_id = %s AND user_id = %s",
                                   (post_id, user)).rowcount
            if not deleted:
                raise not_found("vote" if post_exists(conn, post_id) else "post")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return app


def forbidden_or_missing(conn: Connection[DictRow], post_id: int) -> HTTPException:
    """Why an owner-only change matched no row: the post is someone else's (403) or gone (404)."""
    if post_exists(conn, post_id):
        return HTTPException(status.HTTP_403_FORBIDDEN, "only the post's owner may change it")
    return not_found("post")


app = create_app()
