#!/usr/bin/env bash
# Boots RoleCall's tiny test guest (Debian's kernel and busybox, demo/vmimage.py) as a libvirt
# domain for an instance placed on this compute host, the way a cloud would: its tap on the
# guests' bridge, the instance's MAC, and the <rolecall:instance> element in its <metadata>, so
# that libvirt's qemu hook (/etc/libvirt/hooks/qemu.d/rolecall) plugs it into the agent when it
# has started. Installed by compute.sh as /usr/local/sbin/rolecall-guest. Run as root.
#
# Usage: rolecall-guest INSTANCE MAC ADDRESS
#   INSTANCE  the instance id (i-...): also the domain's name
#   MAC       the instance's MAC address (aws ec2 describe-instances on the controller)
#   ADDRESS   its private address (169.254.x.y there), set on the guest's NIC with a /16
#
# The domain is transient (virsh create): `virsh destroy INSTANCE` stops and removes it, and the
# hook unplugs it. At boot the guest asks its metadata service for an IMDSv2 token, iam/info and
# the role's credentials (secret and token shortened), then opens a shell on its serial console;
# this script prints that part of the console. Then: `virsh console INSTANCE` (Ctrl-] leaves), or
# the console's log, /var/log/libvirt/qemu/INSTANCE-console.log.
#
# Environment:
#   ROLECALL_GUEST_TYPE  kvm or qemu (TCG); by default kvm where /dev/kvm works (nested
#                        virtualization), else qemu
#   ROLECALL_BRIDGE      the guests' bridge (default rcbr0, made by compute.sh)
set -euo pipefail

readonly SOURCE=${ROLECALL_SOURCE:-/vagrant}
readonly BRIDGE=${ROLECALL_BRIDGE:-rcbr0}
readonly LOGS=/var/log/libvirt/qemu
# The boot under TCG in a VM without nested virtualization takes tens of seconds.
readonly WAIT_SECONDS=180

usage() {
    echo "usage: $0 INSTANCE MAC ADDRESS  (e.g. $0 i-d3983fbe4c67ce517 d2:4f:9a:10:77:c3 169.254.1.213)" >&2
    exit 2
}

if (($# != 3)); then
    usage
fi
instance=$1
mac=${2,,}
address=$3
if [[ ! $instance =~ ^i-[0-9a-f]{8,17}$ ]]; then
    echo "$0: INSTANCE must be an instance id (i- and 8 to 17 hex digits), not '$instance'" >&2
    exit 2
fi
if [[ ! $mac =~ ^[0-9a-f]{2}(:[0-9a-f]{2}){5}$ ]]; then
    echo "$0: MAC must be a MAC address (aa:bb:cc:dd:ee:ff), not '$2'" >&2
    exit 2
fi
if [[ ! $address =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
    echo "$0: ADDRESS must be an IPv4 address (A.B.C.D), not '$address'" >&2
    exit 2
fi
if ((EUID != 0)); then
    echo "$0: run it as root (sudo): it creates a libvirt domain" >&2
    exit 1
fi

# KVM works where /dev/kvm exists, libvirt's QEMU offers it, and the user libvirt runs QEMU as
# (Debian: libvirt-qemu, in group kvm) may open it.
kvm_usable() {
    [[ -c /dev/kvm ]] || return 1
    virsh domcapabilities --virttype kvm >/dev/null 2>&1 || return 1
    if id libvirt-qemu >/dev/null 2>&1; then
        runuser -u libvirt-qemu -- sh -c 'test -r /dev/kvm && test -w /dev/kvm' || return 1
    fi
}

type=${ROLECALL_GUEST_TYPE:-}
if [[ -z $type ]]; then
    if kvm_usable; then
        type=kvm
    else
        type=qemu
    fi
fi
case $type in
    kvm) cpu="<cpu mode='host-passthrough'/>" ;;
    qemu) cpu="<cpu mode='maximum'/>" ;;
    *)
        echo "$0: ROLECALL_GUEST_TYPE must be kvm or qemu, not '$type'" >&2
        exit 2
        ;;
esac

# The kernel and the initramfs from demo.vmimage's cache (/var/cache/rolecall/vm-guest), made
# there on first use; compute.sh made them already. demo/ is in the project, not in the package.
mapfile -t image < <(cd "$SOURCE" && python3 -c '
from demo.vmimage import guest_image
image = guest_image()
print(image.kernel)
print(image.initrd)')
if ((${#image[@]} != 2)); then
    echo "$0: could not make the guest's image (cd $SOURCE && python3 -m demo.vmguest fetch)" >&2
    exit 1
fi
kernel=${image[0]}
initrd=${image[1]}

if [[ ! -e /run/netns/rc-$instance ]]; then
    echo "Note: no namespace rc-$instance here yet: is $instance placed on $(hostname)?" >&2
    echo "The hook plugs the VM anyway; it is steered once the agent serves the instance." >&2
fi

# What the guest runs once at boot (its /bin/imds makes one HTTP request with busybox nc).
boot_script=$(base64 -w 0 <<'BOOT_SCRIPT'
shorten() { sed -E 's/("(SecretAccessKey|Token)" : "[^"]{4})[^"]*"/\1..."/'; }
token=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
    answer=$(imds token 21600) || true
    if [ "$(echo "$answer" | head -n 1)" = 200 ]; then
        token=$(echo "$answer" | tail -n +2)
        break
    fi
    sleep 1
done
echo "\$ imds token 21600"
echo "$answer" | head -n 1
[ -n "$token" ] || exit 1
echo "$token" | cut -c 1-4 | sed 's/$/.../'
echo "\$ imds get /latest/meta-data/iam/info \$TOKEN"
imds get /latest/meta-data/iam/info "$token"
echo
role=$(imds get /latest/meta-data/iam/security-credentials/ "$token" | sed -n 2p)
echo "\$ imds get /latest/meta-data/iam/security-credentials/$role \$TOKEN"
imds get "/latest/meta-data/iam/security-credentials/$role" "$token" | shorten
BOOT_SCRIPT
)

tap="tap${instance:2:11}"
console_log="$LOGS/$instance-console.log"
domain=$(mktemp --suffix=.xml)
trap 'rm -f "$domain"' EXIT
# What RoleCall's hook reads: <rolecall:instance id mac> and that interface's <target dev>.
cat >"$domain" <<DOMAIN_XML
<domain type='${type}'>
  <name>${instance}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <metadata>
    <rolecall:instance xmlns:rolecall='urn:rolecall:libvirt:1' id='${instance}' mac='${mac}'/>
  </metadata>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${kernel}</kernel>
    <initrd>${initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=4 rolecall.nic=${mac},${address}/16 rolecall.hostname=${instance} rolecall.console=shell rolecall.run=${boot_script}</cmdline>
  </os>
  ${cpu}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='bridge'>
      <mac address='${mac}'/>
      <source bridge='${BRIDGE}'/>
      <target dev='${tap}'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <serial type='pty'>
      <log file='${console_log}' append='off'/>
    </serial>
    <console type='pty'>
      <target type='serial'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
DOMAIN_XML

virsh create "$domain"
echo "Domain $instance: type $type, tap $tap on $BRIDGE, MAC $mac, $address/16"

for ((waited = 0; waited < WAIT_SECONDS; waited += 1)); do
    if grep -q '@@rc-run-end' "$console_log" 2>/dev/null; then
        break
    fi
    sleep 1
done
if ! grep -q '@@rc-run-end' "$console_log" 2>/dev/null; then
    echo "$0: the guest did not finish booting in ${WAIT_SECONDS} s; see $console_log" >&2
    exit 1
fi
echo "Inside the guest, at boot (from $console_log):"
sed -n '/@@rc-run-begin/,/@@rc-run-end/p' "$console_log" | tr -d '\r'
echo "Its console: virsh console $instance (Ctrl-] leaves); stop it: virsh destroy $instance"
if ! grep -q '@@rc-run-end 0' "$console_log"; then
    echo "$0: the guest got no credentials: is $instance placed here, and served by the agent" \
        "(ip netns list; journalctl -u rolecall-agent | grep plug)?" >&2
    exit 1
fi
