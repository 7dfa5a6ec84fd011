#!/usr/bin/env bash
# Provisioning of the database machine: Debian's PostgreSQL 15, listening on the private network
# with TLS (Debian's snakeoil certificate), a role `rolecall` with a random password and no
# rights beyond its own database `rolecall`, pg_hba.conf letting in that role from the
# controllers' addresses alone (scram-sha-256 over TLS), and for each controller a libpq
# password file put in the shared folder, which its provisioning moves to /etc/rolecall/pgpass.
# Safe to run again: the password is kept, and each controller's file put in the shared folder
# again (a controller provisioned once more takes it; one that is not keeps the file it has).
#
# Usage: postgresql.sh ADDRESS CONTROLLER=ADDRESS...
#   ADDRESS     this machine's address on the private network (PostgreSQL listens there)
#   CONTROLLER  each controller's name and address (pg_hba.conf lets that address in)
set -euo pipefail

readonly SHARED=/rolecall-shared
readonly VERSION=15
readonly CLUSTER=/etc/postgresql/$VERSION/main
readonly DATABASE=rolecall
readonly ROLE=rolecall
readonly PORT=5432
# Only postgres (the database's owner on this machine) may read it.
readonly PASSWORD_FILE=/var/lib/postgresql/rolecall.password

if (($# < 2)); then
    echo "usage: $0 ADDRESS CONTROLLER=ADDRESS..." >&2
    exit 2
fi
address=$1
shift

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends postgresql >/dev/null

# The settings docs/operations.md ("Several controllers on PostgreSQL") discusses, in a file of
# their own that Debian's postgresql.conf includes (include_dir = 'conf.d'). One machine, so no
# standby and no synchronous_standby_names here: see the guide for those.
cat >"$CLUSTER/conf.d/rolecall.conf" <<POSTGRESQL_CONF
# Written by vagrant/scripts/postgresql.sh.
listen_addresses = 'localhost,${address}'
port = ${PORT}
password_encryption = 'scram-sha-256'
# Acknowledged means on disk (the default; never off for RoleCall's store).
synchronous_commit = on
# Two controllers, each with its pool (pool_size, 4 by default), a listening connection and
# the audit writer's, admin commands and psql sessions: far below Debian's 100.
max_connections = 100
# A dead controller host's connections (no FIN, no RST) are noticed within about a minute.
tcp_keepalives_idle = 30
tcp_keepalives_interval = 10
tcp_keepalives_count = 3
POSTGRESQL_CONF

# Who may connect: the rolecall role, to its database, from the controllers' addresses, with its
# password, over TLS. Rewritten between the markers on every run.
hba=$CLUSTER/pg_hba.conf
sed -i '/^# BEGIN rolecall$/,/^# END rolecall$/d' "$hba"
{
    echo "# BEGIN rolecall"
    for controller in "$@"; do
        printf 'hostssl\t%s\t%s\t%s/32\tscram-sha-256\n' "$DATABASE" "$ROLE" "${controller#*=}"
    done
    echo "# END rolecall"
} >>"$hba"

systemctl enable --quiet postgresql.service
systemctl restart postgresql.service

if [[ ! -s $PASSWORD_FILE ]]; then
    install -m 0600 -o postgres -g postgres /dev/null "$PASSWORD_FILE"
    # 32 hexadecimal digits: nothing to escape in SQL or in a password file.
    python3 -c 'import secrets; print(secrets.token_hex(16))' >"$PASSWORD_FILE"
fi
password=$(cat "$PASSWORD_FILE")

# The role may log in and nothing more (no superuser, no CREATEDB, no CREATEROLE, no
# replication); it owns its database, so the controllers' migrations create the tables there.
# No other role but superusers may connect to it. The timeouts free what a hung controller holds
# (docs/operations.md). The SQL comes on standard input, so the password is in no command line.
(cd / && runuser -u postgres -- psql --quiet --no-psqlrc -v ON_ERROR_STOP=1) >/dev/null <<SQL
SELECT 'CREATE ROLE ${ROLE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${ROLE}')
\\gexec
ALTER ROLE ${ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '${password}';
ALTER ROLE ${ROLE} SET statement_timeout = '30s';
ALTER ROLE ${ROLE} SET idle_in_transaction_session_timeout = '15s';
SELECT 'CREATE DATABASE ${DATABASE} OWNER ${ROLE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${DATABASE}')
\\gexec
REVOKE CONNECT, TEMPORARY ON DATABASE ${DATABASE} FROM PUBLIC;
GRANT CONNECT ON DATABASE ${DATABASE} TO ${ROLE};
SQL

# Each controller's password file, into the shared folder under a temporary name, then renamed:
# a controller never sees half of it. It deletes it once it has copied it.
for controller in "$@"; do
    name=${controller%%=*}
    rm -rf "${SHARED:?}/$name.pgpass.partial"
    install -m 0600 /dev/null "$SHARED/$name.pgpass.partial"
    printf '%s:%s:%s:%s:%s\n' "$address" "$PORT" "$DATABASE" "$ROLE" "$password" \
        >"$SHARED/$name.pgpass.partial"
    mv "$SHARED/$name.pgpass.partial" "$SHARED/$name.pgpass"
done

echo "PostgreSQL ready on ${address}:${PORT}: database ${DATABASE}, role ${ROLE} (from $*)"
