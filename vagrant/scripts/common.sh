#!/usr/bin/env bash
# Provisioning shared by every machine of the example: Python, RoleCall installed with pip into
# /opt/rolecall/venv, its systemd units (from systemd/ in the project) and the example's hosts
# in /etc/hosts. Safe to run again (`vagrant provision`): it reinstalls RoleCall from /vagrant.
#
# Usage: common.sh NAME=ADDRESS...   (every host of the example)
set -euo pipefail

readonly SOURCE=/vagrant
readonly VENV=/opt/rolecall/venv

if (($# == 0)); then
    echo "usage: $0 NAME=ADDRESS..." >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    python3 python3-venv ca-certificates curl iproute2 >/dev/null

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "RoleCall needs Python 3.11 or newer; this box has $(python3 --version)" >&2
    exit 1
fi

# RoleCall and its dependencies, then RoleCall again from the current tree (same version
# number, newer code) without touching the dependencies.
if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$SOURCE"
"$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$SOURCE"

# The daemons and the command-line tools on everyone's PATH (sudo's too).
for program in "$VENV"/bin/rolecall-* "$VENV"/bin/iam-* "$VENV"/bin/euca-*; do
    ln -sfn "$program" /usr/local/bin/
done

# Installed as a package would: units in /etc/systemd/system, the controller's user and its
# state directory through sysusers.d and tmpfiles.d.
install -m 0644 "$SOURCE/systemd/rolecall-controller.service" \
    "$SOURCE/systemd/rolecall-agent.service" /etc/systemd/system/
install -D -m 0644 "$SOURCE/systemd/rolecall.sysusers" /usr/lib/sysusers.d/rolecall.conf
install -D -m 0644 "$SOURCE/systemd/rolecall.tmpfiles" /usr/lib/tmpfiles.d/rolecall.conf
systemd-sysusers /usr/lib/sysusers.d/rolecall.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/rolecall.conf
systemctl daemon-reload
install -d -m 0755 /etc/rolecall

for host in "$@"; do
    name=${host%%=*}
    address=${host#*=}
    if ! grep -Eq "^${address//./\\.}[[:space:]]" /etc/hosts; then
        printf '%s\t%s\n' "$address" "$name" >>/etc/hosts
    fi
done

echo "RoleCall $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("rolecall"))') installed in $VENV"
