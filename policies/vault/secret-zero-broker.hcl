# Vault/OpenBao policy of the broker's own AppRole (secret-zero-broker).
# It may only read the role IDs and create secret IDs of the roles it serves,
# always response-wrapped (min/max wrapping TTL), and destroy the secret IDs it
# issued by accessor (to take back an issuance whose audit record failed, and for
# revocations and interception reports).
# Keep the list of roles in step with policies/rules.toml.

path "auth/approle/role/web/role-id" {
  capabilities      = ["read"]
  min_wrapping_ttl  = "10s"
  max_wrapping_ttl  = "5m"
}
path "auth/approle/role/web/secret-id" {
  capabilities      = ["update"]
  min_wrapping_ttl  = "10s"
  max_wrapping_ttl  = "5m"
}
path "auth/approle/role/web/secret-id-accessor/destroy" {
  capabilities = ["update"]
}

path "auth/approle/role/batch/role-id" {
  capabilities      = ["read"]
  min_wrapping_ttl  = "10s"
  max_wrapping_ttl  = "5m"
}
path "auth/approle/role/batch/secret-id" {
  capabilities      = ["update"]
  min_wrapping_ttl  = "10s"
  max_wrapping_ttl  = "5m"
}
path "auth/approle/role/batch/secret-id-accessor/destroy" {
  capabilities = ["update"]
}

# HMACs of the issued accessors as the audit device "file" logs them, recorded in each
# issuance's audit record (BROKER_VAULT_AUDIT_HASH_PATH=file) so the security team can
# find the same events in Vault's audit log. Name your audit device's path here.
path "sys/audit-hash/file" {
  capabilities = ["update"]
}
