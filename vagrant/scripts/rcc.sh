#!/usr/bin/env bash
# rcc: a `rolecall-controller` admin command on a controller of the example (installed there as
# /usr/local/sbin/rcc by controller.sh), run as root:
#   sudo rcc nodes
#   sudo rcc enroll-node compute3 --out /var/lib/rolecall/enrolled/compute3
# It runs as the service's user (the state belongs to it) in a transient systemd service that
# gets the database's password file as rolecall-controller.service does (LoadCredential=, see
# systemd/rolecall-controller-postgresql.conf): the password is in no command line and no
# environment, and /etc/rolecall/pgpass stays root's. systemd, not this script, expands
# ${CREDENTIALS_DIRECTORY}; it would expand a `$` in an argument too (write `$$` for one).
set -euo pipefail

readonly VENV=/opt/rolecall/venv
readonly STATE=/var/lib/rolecall
readonly PGPASS=/etc/rolecall/pgpass

if ((EUID != 0)); then
    echo "rcc: run it as root (sudo rcc ...): it starts a transient systemd service" >&2
    exit 2
fi

# shellcheck disable=SC2016
exec systemd-run --quiet --wait --pipe --collect --uid=rolecall --working-directory=/ \
    --property=LoadCredential=pgpass:"$PGPASS" \
    /usr/bin/env 'PGPASSFILE=${CREDENTIALS_DIRECTORY}/pgpass' \
    "$VENV/bin/rolecall-controller" --state-dir "$STATE" "$@"
