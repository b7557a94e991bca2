"""Operator commands: admins and the upstream key pool."""
from sfx_backend.extensions import db
from sfx_backend.models import ApiKey, User, UserRole


def test_create_admin_creates_then_promotes(app, user):
    runner = app.test_cli_runner()
    created = runner.invoke(args=["users", "create-admin", "boss@example.com", "--password", "a-long-password"])
    assert created.exit_code == 0 and "created" in created.output
    promoted = runner.invoke(args=["users", "create-admin", user.email, "--password", "another-password"])
    assert promoted.exit_code == 0 and "promoted" in promoted.output
    roles = {u.email: u.role for u in db.session.query(User).all()}
    assert roles["boss@example.com"] == roles[user.email] == UserRole.ADMIN
    login = app.test_client().post("/auth/login", json={"email": user.email, "password": "another-password"})
    assert login.get_json()["user"]["role"] == "admin"


def test_create_admin_refuses_a_short_password(app):
    result = app.test_cli_runner().invoke(args=["users", "create-admin", "x@example.com", "--password", "short"])
    assert result.exit_code != 0
    assert db.session.query(User).count() == 0


def test_keys_add_list_and_sync_never_show_the_secret(app):
    runner = app.test_cli_runner()
    added = runner.invoke(args=["keys", "add", "main", "sk_live_secretvalue_ABCD", "--concurrency", "5"])
    assert added.exit_code == 0 and "...ABCD" in added.output
    again = runner.invoke(args=["keys", "add", "dupe", "sk_live_secretvalue_ABCD"])
    assert "already present" in again.output
    app.config["ELEVEN_LABS_API_KEYS"] = ["sk_live_secretvalue_ABCD", "sk_live_othervalue_WXYZ"]
    synced = runner.invoke(args=["keys", "sync"])
    assert synced.exit_code == 0 and "2 configured, 1 new" in synced.output
    listing = runner.invoke(args=["keys", "list"])
    for output in (added.output, again.output, synced.output, listing.output):
        assert "secretvalue" not in output and "othervalue" not in output
    assert "main" in listing.output and "concurrency=5" in listing.output
    stored = db.session.query(ApiKey).all()
    assert len(stored) == 2
    assert all("secretvalue" not in k.encrypted_key and "othervalue" not in k.encrypted_key for k in stored)
