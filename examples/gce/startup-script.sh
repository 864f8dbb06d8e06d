#!/bin/bash
# GCE startup script (metadata key `startup-script`): at boot, trade the instance's
# identity (the metadata server's identity token, format=full) for AppRole
# credentials, then start OpenBao Agent on them as a transient systemd unit.
# The broker's rules decide from the instance's project, zone, service account and
# labels, which the broker reads from the Compute API itself.
#
# Set as instance metadata: broker-url, vault-addr (the Vault this instance trusts),
# vault-role (e.g. web). Needs `bao` in the image, and python3 (3.9+).
set -euo pipefail

# The client: the single file `make client` builds, hosted by you (here a Cloud
# Storage object the instance's service account may read), checked against the
# SHA-256 that `make client` printed before it runs. Nothing is installed by name from a package index.
BROKER_PYZ_SHA256=0000000000000000000000000000000000000000000000000000000000000000  # from make client
gcloud storage cp --quiet gs://my-artifacts/secret-zero/broker-0.1.0.pyz /usr/local/bin/broker.download
echo "$BROKER_PYZ_SHA256  /usr/local/bin/broker.download" | sha256sum -c --quiet -
install -m 0755 /usr/local/bin/broker.download /usr/local/bin/broker
rm -f /usr/local/bin/broker.download

metadata() {
  curl --fail --silent --show-error --max-time 5 -H 'Metadata-Flavor: Google' \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

BROKER_URL="$(metadata broker-url)"
VAULT_ADDR="$(metadata vault-addr)"   # pinned: another Vault in the broker's answer is refused
ROLE="$(metadata vault-role)"
export BROKER_URL VAULT_ADDR
# Both go into the Agent's configuration below: refuse anything but a plain name and address.
[[ "$ROLE" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || { echo "metadata vault-role is not an AppRole name" >&2; exit 2; }
[[ "$VAULT_ADDR" =~ ^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?$ ]] \
  || { echo "metadata vault-addr is not https://HOST[:PORT]" >&2; exit 2; }

install -d -m 0700 /run/vault-agent
install -d -m 0750 /run/app

# role_id + the secret ID's wrapping token, mode 0600. The token's audience is the
# broker URL. Exit code 6 means a possible interception: report, do not retry.
rc=0
broker login --cloud gcp --role "$ROLE" --agent-dir /run/vault-agent || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "broker login failed (exit code $rc); see above" >&2
  exit "$rc"
fi

# The Agent's configuration: examples/agent/agent.hcl (in the image at
# /etc/vault-agent/agent.hcl) with this instance's Vault and role, so the Agent checks
# that the secret ID was wrapped at this role's path.
AGENT_HCL=/run/vault-agent/agent.hcl
sed -e "s|auth/approle/role/web/secret-id|auth/approle/role/${ROLE}/secret-id|" \
    -e "s|https://vault.example.internal:8200|${VAULT_ADDR}|" \
    /etc/vault-agent/agent.hcl > "$AGENT_HCL"

# The wrapping token lives 60 s: start the Agent now.
systemd-run --unit=vault-agent --property=Restart=on-failure \
  /usr/local/bin/bao agent -config "$AGENT_HCL"
