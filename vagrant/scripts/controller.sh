#!/usr/bin/env bash
# Provisioning of a controller machine: the database's password file (from the shared folder,
# where the database machine's provisioning put it) handed to the service by the unit's
# PostgreSQL drop-in, /etc/rolecall/controller.toml with the store in PostgreSQL, `rolecall-
# controller init` (on the first controller it makes the cloud's state in the database: account,
# root key, key ring, node CA; on the others it finds that state and only issues the machine's
# node API certificate), the running service, and, when NODEs are given, a certificate for each
# compute host put in the shared folder, AWS credentials for the vagrant user, the aws CLI and a
# Prometheus with docs/prometheus/ scraping the controllers and the agents. Safe to run again.
#
# Usage: controller.sh ADDRESS DATABASE_ADDRESS [NODE...]
#   ADDRESS           this machine's address on the private network (the node API's
#                     certificate names it)
#   DATABASE_ADDRESS  the PostgreSQL machine's address
#   NODE              the name of each compute host to enroll (on the first controller only)
set -euo pipefail

readonly SOURCE=/vagrant
readonly SHARED=/rolecall-shared
readonly CONFIG=/etc/rolecall
readonly STATE=/var/lib/rolecall
readonly ENROLLED=$STATE/enrolled
readonly LOGIN=vagrant
readonly RCC=/usr/local/sbin/rcc
readonly DROP_IN=/etc/systemd/system/rolecall-controller.service.d/postgresql.conf
# The database machine is provisioned first; this is only a margin for a slow shared folder.
readonly WAIT_SECONDS=120

if (($# < 2)); then
    echo "usage: $0 ADDRESS DATABASE_ADDRESS [NODE...]" >&2
    exit 2
fi
address=$1
database=$2
shift 2
name=$(hostname)
pgpass=$SHARED/$name.pgpass

for ((waited = 0; waited < WAIT_SECONDS; waited += 2)); do
    if [[ -r $pgpass || -r $CONFIG/pgpass ]]; then
        break
    fi
    sleep 2
done
if [[ -r $pgpass ]]; then
    # root's and 0600: systemd reads it (LoadCredential=), the service's user never does.
    install -m 0600 -o root -g root "$pgpass" "$CONFIG/pgpass"
    # The password now lives here only (and on the database machine).
    rm -f "${pgpass:?}"
elif [[ ! -r $CONFIG/pgpass ]]; then
    cat >&2 <<MISSING
No password file for ${name}: ${pgpass} did not appear in ${WAIT_SECONDS} s.
Provision the database machine first (vagrant provision db), check that the shared folder works
(ROLECALL_SHARE_TYPE, see vagrant/README.md); then: vagrant provision ${name}
MISSING
    exit 1
fi
install -D -m 0644 "$SOURCE/systemd/rolecall-controller-postgresql.conf" "$DROP_IN"
systemctl daemon-reload

# Every listener on every interface of this machine: the compute hosts reach the node API,
# Prometheus the metrics, and the host the public API. The store is the database machine's
# PostgreSQL, over TLS (Debian's snakeoil certificate there: encrypted, not verified; in
# production, sslmode=verify-full with the database's CA); no password here.
cat >"$CONFIG/controller.toml" <<CONTROLLER_TOML
# Written by vagrant/scripts/controller.sh.
state_dir = "${STATE}"

[store]
backend = "postgresql"
dsn = "host=${database} port=5432 dbname=rolecall user=rolecall sslmode=require connect_timeout=5 target_session_attrs=read-write"

[api]
host = "0.0.0.0"

[node_api]
host = "0.0.0.0"

[metrics]
host = "0.0.0.0"
CONTROLLER_TOML
chmod 0644 "$CONFIG/controller.toml"

# Admin commands: rcc (scripts/rcc.sh) runs them as the service's user, to whom the state
# belongs, in a transient service that gets the password file as the unit does.
install -m 0755 "$SOURCE/vagrant/scripts/rcc.sh" "$RCC"

# The node API's certificate names the address the agents use (first: enroll-node prints it in
# the agents' URL). init changes nothing when run again.
"$RCC" init --node-api-name "$address" --node-api-name "$name"

systemctl enable --quiet rolecall-controller.service
# Type=notify: returns once the three listeners listen.
systemctl restart rolecall-controller.service
curl --fail --silent --show-error --retry 10 --retry-connrefused --retry-delay 1 \
    http://127.0.0.1:9773/readyz

if (($# == 0)); then
    echo "Controller ${name} ready: public API http://${address}:8773, node API" \
        "https://${address}:8775, metrics http://${address}:9773/metrics"
    exit 0
fi

# The first controller: the compute hosts' certificates (the CA is in the database: any
# controller could issue them), the vagrant user's credentials, Prometheus.
install -d -m 0700 -o rolecall -g rolecall "$ENROLLED"
for node in "$@"; do
    if [[ ! -e $ENROLLED/$node/node.pem ]]; then
        "$RCC" enroll-node "$node" --out "$ENROLLED/$node"
    fi
    # Into the shared folder under a temporary name, then renamed: a compute host never sees
    # half of its files. It deletes them once it has copied them.
    rm -rf "${SHARED:?}/$node.partial" "${SHARED:?}/$node"
    mkdir -p "$SHARED/$node.partial"
    cp "$ENROLLED/$node/node.key" "$ENROLLED/$node/node.pem" "$ENROLLED/$node/ca.pem" \
        "$SHARED/$node.partial/"
    # Some shared folder types (vboxsf) have fixed modes; there the key is as private as the
    # folder on the host.
    chmod 0600 "$SHARED/$node.partial/node.key" 2>/dev/null || true
    mv "$SHARED/$node.partial" "$SHARED/$node"
done

# The account's root key for the vagrant user, with the endpoint, for iam-* and euca-*:
#   export AWS_PROFILE=rolecall
if id "$LOGIN" >/dev/null 2>&1 && [[ -r $STATE/root-credentials ]]; then
    home=$(getent passwd "$LOGIN" | cut -d: -f6)
    install -d -m 0700 -o "$LOGIN" -g "$LOGIN" "$home/.aws"
    install -m 0600 -o "$LOGIN" -g "$LOGIN" "$STATE/root-credentials" "$home/.aws/credentials"
    install -m 0600 -o "$LOGIN" -g "$LOGIN" /dev/stdin "$home/.aws/config" <<AWS_CONFIG
[profile rolecall]
region = us-east-1
endpoint_url = http://127.0.0.1:8773
AWS_CONFIG
fi

# The aws CLI, beside the euca-* tools: `aws ec2 describe-instances` shows an instance's MAC
# address, which the compute host's guest is booted with (README.md, the example).
/opt/rolecall/venv/bin/python -m pip install --quiet awscli
ln -sfn /opt/rolecall/venv/bin/aws /usr/local/bin/aws

# Prometheus (Debian's package) with the scrape configuration and alerting rules of
# docs/prometheus, whose targets are this example's addresses: http://${address}:9090
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
install -m 0644 "$SOURCE/docs/prometheus/prometheus.yml" \
    "$SOURCE/docs/prometheus/rolecall.rules.yml" /etc/prometheus/
promtool check config /etc/prometheus/prometheus.yml
systemctl enable --quiet prometheus.service
systemctl restart prometheus.service

echo "Controller ${name} ready: public API http://${address}:8773, node API https://${address}:8775,"
echo "metrics http://${address}:9773/metrics, Prometheus http://${address}:9090"
