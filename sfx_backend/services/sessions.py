"""Login sessions, one per device: opening, checking a token against its session, atomic refresh
rotation with a reuse grace, listing and ending them. The caller owns the transaction."""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import NotFound
from ..models import AuthSession

log = logging.getLogger(__name__)

CLIENT_NAME_MAX = 200
# Writing last_used_at on every request would make every read a write; a minute is precise enough
# for "last used" on a list of sessions.
LAST_USED_RESOLUTION = timedelta(seconds=60)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def client_name(given: str | None, user_agent: str | None) -> str | None:
    """The name a session is listed under: the client's own, else its User-Agent, trimmed."""
    for raw in (given, user_agent):
        cleaned = " ".join(_CONTROL.sub(" ", raw or "").split())[:CLIENT_NAME_MAX].strip()
        if cleaned:
            return cleaned
    return None


@dataclass(frozen=True)
class SessionCheck:
    """The outcome of checking a token's claims: the live session, or None; `wrote` if it committed
    something worth keeping (a touch, or a session ended as stolen)."""

    session: AuthSession | None
    wrote: bool = False


class SessionService:
    def __init__(self, session: Session, clock: Callable[[], datetime], *, lifetime: timedelta,
                 reuse_grace: timedelta) -> None:
        self.session = session
        self.clock = clock
        self.lifetime = lifetime
        self.reuse_grace = reuse_grace

    def open(self, user_id: uuid.UUID, name: str | None) -> AuthSession:
        """A new session with its first token pair's ids (registration, login)."""
        now = self.clock()
        auth = AuthSession(id=uuid.uuid4(), user_id=user_id, client_name=name, refresh_jti=str(uuid.uuid4()),
                           access_jti=str(uuid.uuid4()), issued_at=now, created_at=now, last_used_at=now,
                           expires_at=now + self.lifetime)
        self.session.add(auth)
        self.session.flush()
        return auth

    def check(self, sid: uuid.UUID, sub: uuid.UUID, token_type: str | None, jti: str | None) -> SessionCheck:
        """The session a token belongs to, if the token may still be used.

        The session must be the subject's own (a token naming another user's session is refused
        without touching that session), live, and for a refresh token its current one or the one it
        just replaced within the grace. Any other refresh token was rotated out earlier: whoever holds
        it is replaying it, so the session ends.
        """
        auth = self.session.get(AuthSession, sid)
        now = self.clock()
        if auth is None or auth.user_id != sub or not self._live(auth, now):
            return SessionCheck(None)
        if token_type == "refresh":
            if jti == auth.refresh_jti or self._in_grace(auth, jti, now):
                return SessionCheck(auth)
            self._end(auth.id, now, "refresh_token_reused")
            return SessionCheck(None, wrote=True)
        if now - auth.last_used_at < LAST_USED_RESOLUTION:
            return SessionCheck(auth)
        self.session.execute(sa.update(AuthSession)
                             .where(AuthSession.id == auth.id, AuthSession.last_used_at < now - LAST_USED_RESOLUTION)
                             .values(last_used_at=now).execution_options(synchronize_session=False))
        return SessionCheck(auth, wrote=True)

    def rotate(self, sid: uuid.UUID, user_id: uuid.UUID, presented_jti: str) -> AuthSession | None:
        """The session with its new token pair's ids, or None when the token may not rotate (the
        session is then ended). One conditional update rotates: of concurrent requests with the
        same token exactly one matches it; the others (blocked on that row until it commits) find it
        just rotated and, within the grace, get the same pair."""
        now = self.clock()
        rotated = self.session.execute(
            sa.update(AuthSession)
            .where(AuthSession.id == sid, AuthSession.user_id == user_id, AuthSession.refresh_jti == presented_jti,
                   AuthSession.revoked_at.is_(None), AuthSession.expires_at > now)
            .values(previous_refresh_jti=presented_jti, refresh_jti=str(uuid.uuid4()),
                    access_jti=str(uuid.uuid4()), issued_at=now, last_used_at=now,
                    # Sliding: a session ends after a refresh lifetime without use, not after one in all.
                    expires_at=now + self.lifetime)
            .execution_options(synchronize_session=False)).rowcount
        auth = self.session.get(AuthSession, sid, populate_existing=True)
        if auth is None or auth.user_id != user_id:
            return None
        if rotated == 1 or (self._live(auth, now) and self._in_grace(auth, presented_jti, now)):
            return auth
        self._end(auth.id, now, "refresh_token_reused")
        return None

    def live(self, user_id: uuid.UUID) -> list[AuthSession]:
        """The user's sessions that can still be used, most recently used first."""
        now = self.clock()
        return list(self.session.scalars(
            sa.select(AuthSession)
            .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None), AuthSession.expires_at > now)
            .order_by(AuthSession.last_used_at.desc(), AuthSession.created_at.desc())))

    def end(self, user_id: uuid.UUID, sid: uuid.UUID) -> None:
        """End one of the user's live sessions; NotFound for another user's, or one already ended."""
        if not self._end(sid, self.clock(), "session_ended", user_id=user_id):
            raise NotFound("No such session.")

    def _live(self, auth: AuthSession, now: datetime) -> bool:
        return auth.revoked_at is None and auth.expires_at > now

    def _in_grace(self, auth: AuthSession, jti: str | None, now: datetime) -> bool:
        return (jti is not None and jti == auth.previous_refresh_jti and auth.access_jti is not None
                and auth.issued_at is not None and now - auth.issued_at <= self.reuse_grace)

    def _end(self, sid: uuid.UUID, now: datetime, event: str, user_id: uuid.UUID | None = None) -> bool:
        conditions = [AuthSession.id == sid, AuthSession.revoked_at.is_(None)]
        if user_id is not None:
            conditions += [AuthSession.user_id == user_id, AuthSession.expires_at > now]
        ended = self.session.execute(sa.update(AuthSession).where(*conditions).values(revoked_at=now)
                                     .execution_options(synchronize_session=False)).rowcount == 1
        if ended:
            level = logging.WARNING if event == "refresh_token_reused" else logging.INFO
            log.log(level, "session ended", extra={"event": event, "session_id": str(sid)})
        return ended
