"""An FTP server on 127.0.0.1 (pyftpdlib, a dev dependency) serving a folder: a real remote file system behind
an fsspec URL, for the store `compress build --ray --store URL` moves files through."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def ftp_server(root: Path) -> Iterator[str]:
    """Serve `root` over FTP on a free loopback port; yields the URL of its top (ftp://user:password@host:port)."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    root.mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user("compress", "secret", str(root), perm="elradfmwMT")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "banner": "compress test store"})
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    try:
        yield f"ftp://compress:secret@127.0.0.1:{server.address[1]}"
    finally:
        server.close_all()
        thread.join(10)
