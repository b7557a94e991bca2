"""The embedded broker (`filesystem://`): kombu's file transport, with messages written atomically.

kombu's own `_put` creates the message file under its final name and then writes it, and its `_get`
moves and reads any file with that name without waiting for the writer's lock. A worker polling at
the same moment reads half a message (or none), fails to decode it and the job waits for the
sweeper; under load `make demo` hit it. Here a message is written under a name the reader ignores
and renamed into place once complete: a rename within one folder is atomic, so a reader sees the
whole message or nothing.
"""
from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        """Put `payload` on `queue`: written whole under a hidden name, then renamed into place."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"  # kombu's naming, which it sorts by
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")  # not `<queue>.msg`: never read
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
