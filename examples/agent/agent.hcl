# OpenBao Agent / Vault Agent: auto-auth from the files that
#   broker login --role web --agent-dir /run/vault-agent
# writes: role_id, and secret_id holding the secret ID's *wrapping token*. The Agent
# looks the token up, checks that it was created at the path below (so a token
# wrapped anywhere else is refused), unwraps it, logs in, and renders the template.
# Start it right after `broker login`: the wrapping token lives 60 s by default.
# `bao agent -config agent.hcl` (OpenBao) or `vault agent -config agent.hcl`.
# tests/e2e/test_agent_handoff.py runs this very file (paths and address replaced).

vault {
  address = "https://vault.example.internal:8200"
}

auto_auth {
  method "approle" {
    mount_path = "auth/approle"
    config = {
      role_id_file_path                   = "/run/vault-agent/role_id"
      secret_id_file_path                 = "/run/vault-agent/secret_id"
      secret_id_response_wrapping_path    = "auth/approle/role/web/secret-id"
      remove_secret_id_file_after_reading = true
    }
  }

  sink "file" {
    config = {
      path = "/run/vault-agent/token"
      mode = 0600
    }
  }
}

template {
  source      = "/etc/vault-agent/app.env.tmpl"
  destination = "/run/app/app.env"
  perms       = "0600"
}
