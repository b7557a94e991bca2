"""GET /files/<key>: downloads for the local storage backend, behind an expiring signed URL."""
from __future__ import annotations

from flask import Blueprint, request, send_file

from ..errors import Forbidden, NotFound
from ..runtime import runtime

bp = Blueprint("files", __name__)


@bp.route("/files/<path:key>", methods=["GET"])
def download(key: str):
    """Serve a stored object if the URL's signature is valid and unexpired (403 otherwise)."""
    from ..storage.local import ExpiredURL, LocalStorage, SignedURLError

    storage = runtime().storage
    if not isinstance(storage, LocalStorage):
        raise NotFound("No such resource.")
    try:
        path, content_type, filename = storage.resolve_signed(key, request.args, now=runtime().clock())
    except ExpiredURL as exc:
        raise Forbidden("This download link has expired; ask the API for a fresh one.") from exc
    except (SignedURLError, ValueError) as exc:
        raise Forbidden("This download link is not valid.") from exc
    if not path.is_file():
        raise NotFound("No such file.")
    return send_file(path, mimetype=content_type, as_attachment=True, download_name=filename, max_age=0)
