# The two commands a user needs: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-systemd lint typecheck bench bench-imds bench-vm clean

# npm ci: the AWS SDK for JavaScript, a real client in tests/netns (pinned by its lock file).
# systemd: systemd-analyze, -sysusers and -tmpfiles check the unit files in systemd/.
# openssl: tests/unit/test_identity.py verifies the signed identity documents with it, as AWS's
# guide and the verifiers' operators do.
# ruby, shellcheck: `ruby -c`, `shellcheck` check vagrant/. openssh-client: ssh-keygen, which
# the key pair tests hold RoleCall's fingerprints against. prometheus (with promtool): checks
# docs/prometheus and runs in tests/e2e as the test's own process; a service the package started
# is stopped and disabled.
$(STAMP): Makefile setup.cfg pyproject.toml tests/netns/js/package-lock.json
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "RoleCall needs Python 3.11 or newer (found $(PYTHON))" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	npm ci --prefix tests/netns/js --no-audit --no-fund --loglevel=error
	command -v systemd-analyze >/dev/null || (apt-get update && apt-get install -y systemd)
	# The agent's serving process runs as another user: where this Python is out of that user's
	# reach (pyenv under /root), the tests and the demo run it with Debian's python3.11.
	test -x /usr/bin/python3.11 || \
	  (apt-get update && apt-get install -y --no-install-recommends python3.11)
	command -v openssl >/dev/null || \
	  (apt-get update && apt-get install -y --no-install-recommends openssl)
	command -v ruby >/dev/null && command -v shellcheck >/dev/null || \
	  (apt-get update && apt-get install -y --no-install-recommends ruby shellcheck)
	# cloud-init, cloud-guest-utils, amazon-ec2-utils: a guest's own clients of the metadata
	# service (its EC2 datasource, ec2metadata, ec2-metadata) in tests/netns, the demo and
	# bench/cloud_init.py. Installed here, cloud-init is kept from running at this machine's own
	# boot (cloud-init.disabled).
	test -d /usr/lib/python3/dist-packages/cloudinit || \
	  (apt-get update && apt-get install -y --no-install-recommends cloud-init \
	   && touch /etc/cloud/cloud-init.disabled)
	command -v ec2metadata >/dev/null && command -v ec2-metadata >/dev/null || \
	  (apt-get update && apt-get install -y --no-install-recommends cloud-guest-utils \
	     amazon-ec2-utils)
	command -v ssh-keygen >/dev/null || \
	  (apt-get update && apt-get install -y --no-install-recommends openssh-client)
	command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  (apt-get update && apt-get install -y --no-install-recommends prometheus && \
	   { test ! -d /run/systemd/system || systemctl disable --now prometheus.service; })
	# postgresql: the tests initdb their own throwaway clusters with its server binaries
	# (tests/pg.py, found in /usr/lib/postgresql/N/bin, never on PATH). The cluster the package
	# makes is stopped and set to manual start (start.conf), and its service disabled.
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update && apt-get install -y --no-install-recommends postgresql && \
	   { test ! -d /run/systemd/system || systemctl disable --now postgresql.service; } && \
	   for cluster in $$(pg_lsclusters -h | awk '{print $$1 "/" $$2}'); do \
	     pg_ctlcluster $${cluster%/*} $${cluster#*/} stop 2>/dev/null || true; \
	     echo manual > /etc/postgresql/$$cluster/start.conf; \
	   done)
	# qemu-system-x86: tests/vm and `make demo` boot a real guest with TCG (no KVM needed);
	# without its recommends (GUI, OVMF, block plugins), about 85 MB. nftables: the tests and the
	# demo inspect the steering tables with nft (the agent installs them by nf_tables netlink).
	command -v qemu-system-x86_64 >/dev/null || \
	  (apt-get update && apt-get install -y --no-install-recommends qemu-system-x86)
	command -v nft >/dev/null || \
	  (apt-get update && apt-get install -y --no-install-recommends nftables)
	# That guest: Debian's kernel and busybox, fetched (apt-get download) and built into
	# /var/cache/rolecall/vm-guest once, so that the tests do not pay for it (about 10 s; a later
	# run only checks the versions). Root's cache: without root the VM tests are skipped anyway.
	test "$$(id -u)" != 0 || $(BIN)/python -m demo.vmguest fetch
	touch $@

install: $(STAMP)

# A real VM included (the guest built above): skipped, saying why, where QEMU cannot run.
demo: $(STAMP)
	$(BIN)/python -m demo

# The linters and the type checker first (seconds): CI fails on them as on a test.
# Two workers: the tests bound to this host's network state (namespaces, VMs) run in one, in
# order, while the unit and API tests share out (tests/conftest.py).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# Not part of `make test` (root; CI runs it after): the units under systemd itself, Debian 12's
# systemd 252 as PID 1 in a systemd-nspawn container, with RoleCall installed as
# docs/operations.md says (tests/systemd). Its minimal Debian tree is made by debootstrap once
# and kept in /var/cache/rolecall-tests; each run boots a fresh copy.
test-systemd: $(STAMP)
	command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null && \
	  test -f /usr/share/keyrings/debian-archive-keyring.gpg || \
	  (apt-get update && apt-get install -y --no-install-recommends \
	     systemd-container debootstrap debian-archive-keyring)
	$(BIN)/python -m pytest -q tests/systemd

# Not part of `make test`: STS capacity next to moto's server, and policy evaluations/s (a
# 20-statement policy, then a user with groups, 10 managed policies and a boundary).
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/sts.py
	$(BIN)/python bench/evaluation.py

# Not part of `make test` either (root: it makes network namespaces): the agent's credential GET
# next to a bare twisted.web server, reconcile time and RSS with 500 and 1,000 instances, and
# cloud-init's whole crawl of one instance's metadata over IMDSv2.
bench-imds: $(STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/imds.py
	$(BIN)/python bench/cloud_init.py

# Not part of `make test` (root: taps, a bridge, namespaces, nftables): a real QEMU guest wired by
# the libvirt hook (QEMU start to its first credentials, hook start to the first steered frame,
# the credential GET from the guest next to a namespace guest), then bench/steer.py's node cost.
bench-vm: $(STAMP)
	$(BIN)/python bench/vm.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
