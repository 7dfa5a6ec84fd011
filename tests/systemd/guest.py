"""A guest's metadata client, run inside the test container in an instance's namespace
(``ip netns exec rc-<id> python3 guest.py …``): the standard library only, since it runs under
the container's own Python, not the test's virtualenv.

``token``      PUT /latest/api/token; prints the token.
``get PATH``   GET PATH (with ``--token``); prints the status, then the body.
``loop``       until ``--stop-file`` exists (or ``--seconds`` pass): every ``--interval``, a new
               token (PUT), the credentials with it (GET), and the credentials with ``--token``,
               one taken before the test began. Prints one JSON object: each request as
               ``[started, kind, status or error, seconds]`` (``started`` in Unix time).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time

ADDRESS = "169.254.169.254"
TOKEN_PATH = "/latest/api/token"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"


def request(method: str, path: str, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    connection = http.client.HTTPConnection(ADDRESS, 80, timeout=timeout)
    try:
        connection.request(method, path, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace")
    finally:
        connection.close()


def new_token(timeout: float) -> tuple[int, str]:
    return request("PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, timeout)


def timed(kind: str, call: object, *args: object) -> tuple[list[object], str]:
    """One request as a record, and its body ('' when it failed)."""
    started = time.time()
    clock = time.monotonic()
    try:
        status, body = call(*args)  # type: ignore[operator]
    except Exception as error:  # refused, reset, timed out: recorded, never raised
        return [started, kind, f"{type(error).__name__}: {error}", time.monotonic() - clock], ""
    return [started, kind, status, time.monotonic() - clock], body


def loop(arguments: argparse.Namespace) -> int:
    path = CREDENTIALS_PATH + arguments.role
    records: list[list[object]] = []
    deadline = time.monotonic() + arguments.seconds
    while not os.path.exists(arguments.stop_file) and time.monotonic() < deadline:
        record, token = timed("put", new_token, arguments.timeout)
        records.append(record)
        if record[2] == 200:
            headers = {"X-aws-ec2-metadata-token": token}
            record, _ = timed("get", request, "GET", path, headers, arguments.timeout)
            records.append(record)
        headers = {"X-aws-ec2-metadata-token": arguments.token}
        record, _ = timed("get-old-token", request, "GET", path, headers, arguments.timeout)
        records.append(record)
        time.sleep(arguments.interval)
    json.dump({"records": records}, sys.stdout)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="guest.py")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token")
    token.add_argument("--timeout", type=float, default=10)
    get = commands.add_parser("get")
    get.add_argument("path")
    get.add_argument("--token", default="")
    get.add_argument("--timeout", type=float, default=10)
    repeat = commands.add_parser("loop")
    repeat.add_argument("--role", required=True)
    repeat.add_argument("--token", required=True)
    repeat.add_argument("--stop-file", required=True)
    repeat.add_argument("--seconds", type=float, default=120)
    repeat.add_argument("--interval", type=float, default=0.1)
    repeat.add_argument("--timeout", type=float, default=10)
    arguments = parser.parse_args()
    if arguments.command == "token":
        status, body = new_token(arguments.timeout)
        if status != 200:
            print(f"PUT {TOKEN_PATH}: {status} {body}", file=sys.stderr)
            return 1
        print(body)
        return 0
    if arguments.command == "get":
        headers = {"X-aws-ec2-metadata-token": arguments.token} if arguments.token else {}
        status, body = request("GET", arguments.path, headers, arguments.timeout)
        print(status)
        print(body)
        return 0
    return loop(arguments)


if __name__ == "__main__":
    sys.exit(main())
