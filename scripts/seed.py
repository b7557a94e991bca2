"""Seed a deployment (run through scripts/seed): an admin, demo users, the upstream keys; prints the plans.

Idempotent: an existing admin is promoted and gets the given password, existing demo users are left
as they are, and keys are imported by fingerprint (known ones are kept). The app, and so the
database and ELEVEN_LABS_API_KEYS, come from the environment through sfx_backend/config.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfx_backend import create_app  # noqa: E402
from sfx_backend.extensions import db  # noqa: E402
from sfx_backend.models import UserRole  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--admin-email")
    ap.add_argument("--admin-password", help="at least 10 characters")
    ap.add_argument("--demo-users", type=int, default=0, help="how many demo accounts (demo1@.., demo2@..)")
    ap.add_argument("--demo-password", help="password of the demo accounts (at least 10 characters)")
    ap.add_argument("--demo-domain", default="example.com")
    ap.add_argument("--no-keys", action="store_true", help="do not import ELEVEN_LABS_API_KEYS")
    args = ap.parse_args(argv)
    if bool(args.admin_email) != bool(args.admin_password):
        ap.error("--admin-email and --admin-password go together")
    for password in (args.admin_password, args.demo_password if args.demo_users else None):
        if password is not None and len(password) < 10:
            ap.error("passwords need at least 10 characters")
    if args.demo_users and not args.demo_password:
        ap.error("--demo-users needs --demo-password")
    return args


def seed_admin(users, email: str, password: str) -> str:
    user = users.by_email(email)
    if user is None:
        # The operator typed these addresses: they need no emailed link (REQUIRE_EMAIL_VERIFICATION).
        users.register(email, password, role=UserRole.ADMIN).email_verified = True
        return f"admin created: {email}"
    user.role = UserRole.ADMIN
    user.email_verified = True
    users.set_password(user, password)
    return f"admin promoted: {email}"


def seed_demo_users(users, count: int, password: str, domain: str) -> list[str]:
    created = []
    for n in range(1, count + 1):
        email = f"demo{n}@{domain}"
        if users.by_email(email) is None:
            users.register(email, password, first_name="Demo", last_name=str(n)).email_verified = True
            created.append(email)
    return created


def print_plans(app) -> None:
    """Plans are configuration (sfx_backend/plans.py), not rows: show what this deployment offers."""
    from sfx_backend import plans

    for plan in plans.catalogue(app.config).values():
        print(f"plan {plan.name}: {plan.monthly_limit} generations/month, {plan.price_cents / 100:.2f} USD/month, "
              f"{plan.max_concurrent_jobs} jobs at once")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    app = create_app()
    from sfx_backend import wiring

    with app.app_context():
        wired = wiring.current()
        users = wired.user_service()
        if args.admin_email:
            print(seed_admin(users, args.admin_email, args.admin_password))
        if args.demo_users:
            created = seed_demo_users(users, args.demo_users, args.demo_password, args.demo_domain)
            print(f"demo users: {args.demo_users} wanted, {len(created)} created")
        if not args.no_keys:
            configured = app.config["ELEVEN_LABS_API_KEYS"]
            created_keys = wired.key_pool().sync(configured)
            print(f"upstream keys: {len(configured)} configured, {len(created_keys)} new")
        db.session.commit()
        print_plans(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
