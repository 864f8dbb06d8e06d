"""A botocore session that also works from inside the single-file client (dist/broker.pyz).

botocore reads its data files (endpoints, the STS model that the web-identity and
assume-role credential providers need) with ``open()`` from its package folder.
Inside a zip archive there is no such folder, so when botocore was imported from one
the session gets a data loader that reads the same files out of the archive. Only
what the pyz carries can be loaded: the STS model and the shared data files (see
deploy/client/build.py).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zipfile
from collections import OrderedDict
from typing import Any, Optional


def _archive_of(module: Any) -> Optional[str]:
    """The zip archive ``module`` was imported from, or None."""
    archive = getattr(getattr(module, "__loader__", None), "archive", None)
    return archive if isinstance(archive, str) and zipfile.is_zipfile(archive) else None


def new_session() -> Any:
    """``botocore.session.Session()``, with botocore's debug logging (signatures) kept off."""
    import botocore
    import botocore.session

    logging.getLogger("botocore").setLevel(logging.WARNING)
    session = botocore.session.Session()
    archive = _archive_of(botocore)
    if archive:
        session.register_component("data_loader", _zip_loader(archive))
    return session


def _zip_loader(archive: str) -> Any:
    from botocore.loaders import Loader

    prefix = "botocore/data/"
    zf = zipfile.ZipFile(archive)
    names = {n[len(prefix):] for n in zf.namelist() if n.startswith(prefix)}
    root = os.path.join(archive, "botocore", "data")

    class ZipJSONFileLoader:
        def _read(self, file_path: str) -> Optional[bytes]:
            rel = os.path.relpath(file_path, root).replace(os.sep, "/")
            for ext, unpack in ((".json", lambda b: b), (".json.gz", gzip.decompress)):
                if rel + ext in names:
                    return unpack(zf.read(prefix + rel + ext))
            return None

        def exists(self, file_path: str) -> bool:
            return self._read(file_path) is not None

        def load_file(self, file_path: str) -> Any:
            data = self._read(file_path)
            return None if data is None else json.loads(data.decode("utf-8"), object_pairs_hook=OrderedDict)

    class ZipLoader(Loader):
        def __init__(self) -> None:
            super().__init__(file_loader=ZipJSONFileLoader(), include_default_search_paths=False)

        @property
        def search_paths(self) -> list:
            return [root]

        def _potential_locations(self, name=None, must_exist=False, is_dir=False):
            yield root if name is None else os.path.join(root, name)

        def list_available_services(self, type_name: str) -> list:
            return sorted({n.split("/")[0] for n in names
                           if n.count("/") == 2 and n.split("/")[2].split(".")[0] == type_name})

        def list_api_versions(self, service_name: str, type_name: str) -> list:
            return sorted({n.split("/")[1] for n in names
                           if n.count("/") == 2 and n.split("/")[0] == service_name
                           and n.split("/")[2].split(".")[0] == type_name})

        def is_builtin_path(self, path: str) -> bool:
            return path.startswith(root)

    return ZipLoader()
