# Vault/OpenBao policy of the broker's own AppRole (secret-zero-broker).
# It may only read the role IDs and create secret IDs of the roles it serves,
# always response-wrapped (min/max wrapping TTL), and destroy the secret IDs it
# issued by accessor (used to take back an issuance whose audit record failed).
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
