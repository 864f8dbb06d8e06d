"""``python -m bench.revocation_tokens [N]``: what a revocation's token scan costs with N
(default 10,000) live tokens in a local OpenBao (docs/audit.md).

Starts its own OpenBao dev server, seeds it as `broker vault setup` does (the revoking
identity included), creates N tokens carrying a `request_id` in their metadata (as
AppRole logins do), logs in 5 machines for real with secret IDs carrying their own
request IDs, then times what a revocation does: list the accessors, look each up
(16 at once), revoke the 5 machines' tokens. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def main(n: int = 10_000) -> dict:
    sys.path.insert(0, str(REPO))
    from broker import vault_setup as setup
    from chalicelib.revoker import SCAN_WORKERS, VaultRevoker
    from devstack.vault import OpenBaoServer, seed_vault

    work = Path(tempfile.mkdtemp(prefix="bench-revoke-"))
    bao = OpenBaoServer(work).start().wait_ready()
    try:
        seed = seed_vault(bao.client(), REPO / "policies" / "vault")
        root = {"X-Vault-Token": "root"}
        http = requests.Session()
        http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))

        def filler(i):
            r = http.post(f"{bao.addr}/v1/auth/token/create", headers=root, timeout=30,
                          json={"policies": ["default"], "ttl": "2h", "meta": {"request_id": str(uuid.uuid4())}})
            r.raise_for_status()

        t = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(filler, range(n)))
        fill_s = time.perf_counter() - t

        targets = []
        for _ in range(5):
            request_id = str(uuid.uuid4())
            secret_id, _ = setup.mint_secret_id(setup.Vault(bao.addr, "root"), "approle", "web",
                                                {"request_id": request_id})
            login = http.post(f"{bao.addr}/v1/auth/approle/login", timeout=10,
                              json={"role_id": seed.role_ids["web"], "secret_id": secret_id})
            login.raise_for_status()
            targets.append((request_id, login.json()["auth"]["accessor"]))

        revoker = VaultRevoker(addr=bao.addr, mount="approle", role_id=seed.revoker_role_id,
                               fetch_secret_id=lambda: seed.revoker_secret_id, timeout=10)
        live = revoker.count_tokens()
        t = time.perf_counter()
        listed = revoker.count_tokens()
        list_s = time.perf_counter() - t
        t = time.perf_counter()
        found = revoker.tokens_of([rid for rid, _ in targets])
        scan_s = time.perf_counter() - t
        t = time.perf_counter()
        results = [revoker.revoke_token(a) for accessors in found.values() for a in accessors]
        revoke_s = time.perf_counter() - t
        assert sorted(a for accessors in found.values() for a in accessors) == sorted(a for _, a in targets)
        assert results == ["revoked"] * len(targets)
        figures = {"live_tokens": live, "listed": listed, "fill_s": round(fill_s, 1), "list_s": round(list_s, 3),
                   "scan_s": round(scan_s, 2), "lookups_per_s": round(live / scan_s),
                   "revoke_5_s": round(revoke_s, 3), "workers": SCAN_WORKERS}
        for key, value in figures.items():
            print(f"{key} {value}")
        return figures
    finally:
        bao.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
