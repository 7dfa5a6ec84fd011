#!/usr/bin/env bash
# Provisioning of a compute host (a hypervisor): its node certificate, key and the controllers'
# CA in /etc/rolecall (taken from the shared folder, where the first controller's provisioning
# put them), /etc/rolecall/agent.toml, and the running agent; then libvirt and QEMU with RoleCall's
# qemu hook, a bridge for the guests, the tiny test guest's image, and rolecall-guest
# (guest.sh), which boots that guest as a libvirt domain for an instance. Safe to run again.
#
# Usage: compute.sh NAME ADDRESS CONTROLLER_ADDRESS...
#   NAME                the name this host was enrolled with
#   ADDRESS             this host's address on the private network (its metrics listen there)
#   CONTROLLER_ADDRESS  each controller's address on the private network (the agent moves to
#                       the next when one dies, hangs or refuses it)
set -euo pipefail

readonly SOURCE=/vagrant
readonly SHARED=/rolecall-shared
readonly CONFIG=/etc/rolecall
# The guests' bridge, made by a libvirt network without addresses (the cloud's bridge here).
readonly NETWORK=rolecall-guests
readonly BRIDGE=rcbr0
# The first controller is provisioned before the compute hosts; this is only a margin for a
# slow shared folder.
readonly WAIT_SECONDS=120

if (($# < 3)); then
    echo "usage: $0 NAME ADDRESS CONTROLLER_ADDRESS..." >&2
    exit 2
fi
name=$1
address=$2
shift 2
urls=""
for controller in "$@"; do
    urls+="${urls:+, }\"https://${controller}:8775\""
done
bundle=$SHARED/$name

for ((waited = 0; waited < WAIT_SECONDS; waited += 2)); do
    if [[ -r $bundle/ca.pem || -r $CONFIG/ca.pem ]]; then
        break
    fi
    sleep 2
done

install -d -m 0755 "$CONFIG"
if [[ -r $bundle/ca.pem ]]; then
    install -m 0600 "$bundle/node.key" "$CONFIG/node.key"
    install -m 0644 "$bundle/node.pem" "$bundle/ca.pem" "$CONFIG/"
    # The key now lives here only.
    rm -rf "${bundle:?}"
elif [[ ! -r $CONFIG/node.pem || ! -r $CONFIG/node.key || ! -r $CONFIG/ca.pem ]]; then
    cat >&2 <<MISSING
No certificate for ${name}: ${bundle} did not appear in ${WAIT_SECONDS} s.
Provision the first controller (vagrant provision controller1), check that the shared folder
works (ROLECALL_SHARE_TYPE, see vagrant/README.md), or copy node.key, node.pem and ca.pem from
/var/lib/rolecall/enrolled/${name} on controller1 to ${CONFIG} here; then:
vagrant provision ${name}
MISSING
    exit 1
fi

# The node API on every controller, in order (the agent starts with the first and moves on
# when one dies, hangs or refuses it); the metrics on this host's private address, for the
# Prometheus on controller1 (by default they listen on 127.0.0.1 only).
cat >"$CONFIG/agent.toml" <<AGENT_TOML
# Written by vagrant/scripts/compute.sh.
[controller]
urls = [${urls}]
certificate = "${CONFIG}/node.pem"
key = "${CONFIG}/node.key"
ca_certificate = "${CONFIG}/ca.pem"

[metrics]
host = "${address}"
port = 9774
AGENT_TOML
chmod 0644 "$CONFIG/agent.toml"

# nftables: the agent steers each VM's metadata traffic with nft (docs/operations.md, "Wiring a
# VM to its metadata service"). libvirt and QEMU for the guests, without their recommends (no
# dnsmasq, no GUI, no firmware beyond SeaBIOS).
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends \
    nftables libvirt-daemon-system qemu-system-x86 >/dev/null

systemctl enable --quiet rolecall-agent.service
# Type=notify: returns once the agent has its assignments from a controller.
systemctl restart rolecall-agent.service
curl --fail --silent --show-error --retry 10 --retry-connrefused --retry-delay 1 \
    "http://${address}:9774/readyz"

echo "Agent on ${name} ready: metrics http://${address}:9774/metrics"

# RoleCall's qemu hook: libvirt runs it at each domain's start and stop (started: plug the VM's
# tap; stopped, release: unplug it). libvirtd looks for hooks when it starts.
install -D -m 0755 "$SOURCE/libvirt/qemu.d/rolecall" /etc/libvirt/hooks/qemu.d/rolecall
systemctl restart libvirtd.service

if ! virsh net-info "$NETWORK" >/dev/null 2>&1; then
    network_xml=$(mktemp --suffix=.xml)
    cat >"$network_xml" <<NETWORK_XML
<network>
  <name>${NETWORK}</name>
  <bridge name='${BRIDGE}' stp='off' delay='0'/>
</network>
NETWORK_XML
    virsh net-define "$network_xml" >/dev/null
    rm -f "$network_xml"
fi
virsh net-autostart "$NETWORK" >/dev/null
if ! virsh net-info "$NETWORK" | grep -Eq '^Active:[[:space:]]+yes'; then
    virsh net-start "$NETWORK" >/dev/null
fi

# The guest: Debian's kernel and busybox, fetched and built into /var/cache/rolecall/vm-guest
# (demo/ is in the project, not in the installed package).
(cd "$SOURCE" && python3 -m demo.vmguest fetch)
install -m 0755 "$SOURCE/vagrant/scripts/guest.sh" /usr/local/sbin/rolecall-guest
if [[ -c /dev/kvm ]] && virsh domcapabilities --virttype kvm >/dev/null 2>&1 &&
    runuser -u libvirt-qemu -- sh -c 'test -r /dev/kvm && test -w /dev/kvm'; then
    echo "Guests on ${name} run with KVM (nested virtualization): sudo rolecall-guest ..."
else
    echo "Guests on ${name} run with QEMU's TCG (no nested virtualization): sudo rolecall-guest ..."
fi
