"""What both daemons share, and neither daemon's package: the HTTP/1.1 server, systemd's
notification and descriptor protocols, logging, the listening service, the standard metrics and
the TOML configuration helpers. It imports neither `agent` nor `controller` (tests/unit/
test_layers.py checks it)."""
