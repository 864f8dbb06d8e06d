# Vault/OpenBao policy of the broker's revoking identity (AppRole secret-zero-revoker).
# Used only by the revocation route (POST /v1/revocations; chalicelib/revoker.py), never
# by issuance: its secret ID sits in its own Secrets Manager secret.
#
# What it can do, and why it is a separate identity:
# - list every token accessor and look any token up by accessor: how a revocation
#   finds the tokens logged in with a secret ID it reaches (AppRole copies the secret
#   ID's metadata, with the broker's request_id, into the token's metadata). A lookup
#   by accessor shows a token's metadata and policies, never the token itself.
# - revoke ANY token by accessor (and its children), wrapping tokens included. This is
#   the power that makes it dangerous: whoever holds this identity can log out every
#   client of this Vault (not read their secrets: it creates no token and reads no
#   secret). Keep its secret ID in a secret only the broker's function can read.
# - destroy the secret IDs of the roles the broker serves, by accessor.
# Keep the list of roles in step with policies/rules.toml (`broker vault setup` checks it).

path "auth/token/accessors" {
  capabilities = ["list", "sudo"]
}
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

path "auth/approle/role/web/secret-id-accessor/destroy" {
  capabilities = ["update"]
}
path "auth/approle/role/batch/secret-id-accessor/destroy" {
  capabilities = ["update"]
}
