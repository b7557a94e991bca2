"""Parts of the OpenAPI description that no flask-smorest blueprint produces by itself."""
from __future__ import annotations

from flask import Flask
from flask_smorest import Api

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def document_file_downloads(app: Flask, api: Api) -> None:
    """GET /files/{key}: the local storage backend's signed downloads (a plain Flask blueprint)."""
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == "files.download")
    signed = [{"name": name, "in": "query", "required": True, "schema": {"type": "string"},
               "description": text}
              for name, text in (("expires", "Unix time the link stops working."),
                                 ("filename", "Download file name (signed)."),
                                 ("ct", "Content type (signed)."),
                                 ("sig", "HMAC signature over key, expiry, file name and content type."))]
    api.spec.path(rule=rule, operations={"get": {
        "tags": ["files"],
        "summary": "Download stored audio through a signed, expiring link (local storage only).",
        "description": "The links come from a job's `audio.url`; with S3 storage they point at the object "
                       "store instead and this route answers 404.",
        "parameters": signed,
        "responses": {
            "200": {"description": "The audio file.",
                    "content": {"audio/mpeg": {"schema": {"type": "string", "format": "binary"}},
                                "audio/wav": {"schema": {"type": "string", "format": "binary"}}}},
            "403": {"description": "Expired or invalid signature.", "content": _PROBLEM},
            "404": {"description": "No such file, or not the local storage backend.", "content": _PROBLEM},
            "default": {"$ref": "#/components/responses/DEFAULT_ERROR"},
        },
    }})
