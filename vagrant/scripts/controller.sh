#!/usr/bin/env bash
# Provisioning of the controller machine: /etc/rolecall/controller.toml, the state (account,
# root key, node CA) made by `rolecall-controller init`, a certificate for each compute host put
# in the shared folder, the running service, AWS credentials for the vagrant user and the aws
# CLI, and a Prometheus with docs/prometheus/ scraping the controller and the agents. Safe to
# run again.
#
# Usage: controller.sh ADDRESS NODE...
#   ADDRESS  this machine's address on the private network (the node API's certificate names it)
#   NODE     the name of each compute host to enroll
set -euo pipefail

readonly SOURCE=/vagrant
readonly SHARED=/rolecall-shared
readonly STATE=/var/lib/rolecall
readonly ENROLLED=$STATE/enrolled
readonly LOGIN=vagrant

if (($# < 2)); then
    echo "usage: $0 ADDRESS NODE..." >&2
    exit 2
fi
address=$1
shift

# Every listener on every interface of this machine: the compute hosts reach the node API,
# Prometheus the metrics, and the host the public API.
cat >/etc/rolecall/controller.toml <<CONTROLLER_TOML
# Written by vagrant/scripts/controller.sh.
state_dir = "${STATE}"

[api]
host = "0.0.0.0"

[node_api]
host = "0.0.0.0"

[metrics]
host = "0.0.0.0"
CONTROLLER_TOML
chmod 0644 /etc/rolecall/controller.toml

# The state belongs to the service's user: admin commands run as that user too.
as_rolecall() {
    (cd / && runuser -u rolecall -- /opt/rolecall/venv/bin/rolecall-controller "$@")
}

# The node API's certificate names the address the agents use (first: enroll-node prints it in
# the agents' URL). init changes nothing when run again.
as_rolecall init --node-api-name "$address" --node-api-name "$(hostname)"

install -d -m 0700 -o rolecall -g rolecall "$ENROLLED"
for node in "$@"; do
    if [[ ! -e $ENROLLED/$node/node.pem ]]; then
        as_rolecall enroll-node "$node" --out "$ENROLLED/$node"
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

systemctl enable --quiet rolecall-controller.service
# Type=notify: returns once the three listeners listen.
systemctl restart rolecall-controller.service
curl --fail --silent --show-error --retry 10 --retry-connrefused --retry-delay 1 \
    http://127.0.0.1:9773/readyz

# The account's root key for the vagrant user, with the endpoint, for iam-* and euca-*:
#   export AWS_PROFILE=rolecall
if id "$LOGIN" >/dev/null 2>&1; then
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

echo "Controller ready: public API http://${address}:8773, node API https://${address}:8775,"
echo "metrics http://${address}:9773/metrics, Prometheus http://${address}:9090"
