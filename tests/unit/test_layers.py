"""The layers of the code, checked on its import statements (every one, also those inside
functions): the agent and the controller never import each other, `common` imports neither,
nothing in a daemon imports the demo, the pure cores reach no reactor, socket, netlink or
database, directly or through the project's own modules, and every listener is on the one HTTP
protocol (`common.http11`): twisted.web is for the agent's HTTP clients only."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "common", "controller", "demo")

#: The modules that decide without I/O (docs/decisions.md, STYLE.md "Pure core, thin shell").
PURE_CORES = (
    "controller.sigv4",
    "controller.query",
    "controller.xmlout",
    "controller.tokens",
    "controller.policy.document",
    "controller.policy.evaluate",
    "controller.policy.conditions",
    "controller.policy.match",
    "controller.permissions",
    "controller.assume",
    "controller.ec2.sshkeys",
    "controller.identity",
    "agent.refresh",
    "agent.reconnect",
    "agent.failover",
    "agent.names",
    "agent.imds.rules",
    "agent.imds.tree",
    "agent.imds.tokens",
    "agent.imds.credentials",
    "agent.imds.ratelimit",
    "agent.imds.passthrough",
    "common.nodemessages",
    "common.timestamps",
)
#: What a pure core must not reach: the reactor, sockets, netlink, the database.
IMPURE = ("twisted", "pyroute2", "sqlite3", "socket")

#: The only product modules that may import twisted.web: the agent's HTTP clients, of the node
#: API and of an upstream metadata service (Twisted's own client, with TLS, a connection pool,
#: timeouts and cancellation, rather than one written here).
WEB_CLIENTS = ("agent.client", "agent.handshake", "agent.upstream")

#: Who may import whom, by top-level package: a package not listed for another never imports it.
ALLOWED = {
    "common": set(),
    "agent": {"common"},
    "controller": {"common"},
    "demo": {"agent", "common", "controller"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


@cache
def imports(module: str) -> frozenset[str]:
    """Every module `module` names in an import statement, anywhere in it."""
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            named.add(base)
            # `from package import module` names a module too
            named.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(named)


def project_imports(module: str) -> set[str]:
    return {name for name in imports(module) if name in modules()}


def reachable(module: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every module named from `module` or from a project module it reaches, with the chain of
    project modules that leads there."""
    seen = {module}
    stack: list[tuple[str, tuple[str, ...]]] = [(module, (module,))]
    while stack:
        current, chain = stack.pop()
        for name in imports(current):
            yield name, chain
            if name in modules() and name not in seen:
                seen.add(name)
                stack.append((name, (*chain, name)))


def test_the_checker_sees_the_project() -> None:
    assert {"agent.reconcile", "controller.api", "common.http11", "demo.guest"} <= set(modules())
    assert "common.http11" in project_imports("agent.server")
    assert "twisted" in {name.split(".")[0] for name, _ in reachable("agent.server")}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    crossings = sorted(
        f"{module} imports {name}"
        for module in modules()
        if module.split(".")[0] == package
        for name in project_imports(module)
        if name.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert crossings == []


@pytest.mark.parametrize("module", PURE_CORES)
def test_a_pure_core_reaches_no_reactor_socket_netlink_or_database(module: str) -> None:
    assert module in modules(), f"{module} is gone: update PURE_CORES"
    reached = sorted(
        f"{' -> '.join(chain)} imports {name}"
        for name, chain in reachable(module)
        if name.split(".")[0] in IMPURE
    )
    assert reached == []


def test_only_the_agents_http_clients_import_twisted_web() -> None:
    importers = sorted(
        f"{module} imports {name}"
        for module in modules()
        if module not in WEB_CLIENTS
        for name in imports(module)
        if name == "twisted.web" or name.startswith("twisted.web.")
    )
    assert importers == []
    for client in WEB_CLIENTS:
        assert any(name.startswith("twisted.web") for name in imports(client))
