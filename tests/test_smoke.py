def test_app_fixture_creates_and_connects(app):
    r = app.cli("create")
    assert r.code == 0, r.output
    with app.connect() as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (app.role, app.db)
