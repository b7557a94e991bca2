"""Extensions, created unbound and attached in `create_app` (so importing never needs an app)."""
from __future__ import annotations

from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy import MetaData

from .api.schemas import ProblemSchema
from .errors import handle_http_exception

# Stable constraint names so Alembic migrations (and SQLite batch mode) can refer to them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ProblemApi(Api):
    """flask-smorest's Api, but HTTP errors render as problem+json like every other error."""

    ERROR_SCHEMA = ProblemSchema  # documents the default and 422 responses with the real shape

    def handle_http_exception(self, error):  # noqa: D102 - overrides the library's JSON body
        return handle_http_exception(error)

    def _register_responses(self):
        """The shared error responses (`default`, automatic 422) are problem+json, as sent."""
        self.DEFAULT_RESPONSE_CONTENT_TYPE = "application/problem+json"
        try:
            super()._register_responses()
        finally:
            del self.DEFAULT_RESPONSE_CONTENT_TYPE


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
jwt = JWTManager()
limiter = Limiter(key_func=get_remote_address, default_limits=[])
