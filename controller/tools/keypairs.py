"""``euca-create-keypair``, ``euca-import-keypair``, ``euca-describe-keypairs``,
``euca-delete-keypair``: EC2 key pairs, printed as euca2ools prints them.

Each key pair is a tab-separated ``KEYPAIR name fingerprint`` line. ``euca-create-keypair`` prints
the private key after its line, or writes it to ``-f FILE`` (created 0600, never over an existing
file, and opened before the key pair is made, so a key is never made that cannot be kept).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
from typing import TextIO

from controller.tools.client import Client
from controller.tools.command import Tool, entry_point
from controller.tools.errors import ToolError
from controller.tools.instances import add_filter_argument, filter_params, tabbed, value_at
from controller.tools.xmldata import members

#: More than any public key file (sshkeys.MAX_MATERIAL_BYTES is the controller's bound).
MAX_PUBLIC_KEY_FILE = 64 * 1024


def keypair_line(data: object) -> str:
    return tabbed("KEYPAIR", value_at(data, "keyName"), value_at(data, "keyFingerprint"))


# euca-create-keypair


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="KEYPAIR", help="name of the new key pair")
    parser.add_argument(
        "-f",
        "--filename",
        metavar="FILE",
        help="write the private key to FILE (made 0600; an existing file is not overwritten)",
    )
    parser.add_argument(
        "-t",
        "--type",
        dest="key_type",
        choices=("rsa", "ed25519"),
        help="key type (default: rsa, 2048 bits)",
    )


def _open_private_file(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ToolError(
            f"-f/--filename: {path} exists; not overwriting it with a new private key"
        ) from None
    except OSError as error:
        raise ToolError(f"-f/--filename: cannot create {path}: {error.strerror}") from None


def _create(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    params = [("KeyName", args.name)]
    if args.key_type:
        params.append(("KeyType", args.key_type))
    descriptor = _open_private_file(args.filename) if args.filename else None
    try:
        result = client.call("CreateKeyPair", params)
    except BaseException:
        if descriptor is not None:
            os.close(descriptor)
            with contextlib.suppress(OSError):
                os.unlink(args.filename)
        raise
    material = value_at(result, "keyMaterial").strip("\n") + "\n"
    if descriptor is not None:
        _write_private_key(descriptor, args.filename, material, args.name, client)
    print(keypair_line(result), file=out)
    if descriptor is None:
        out.write(material)


def _write_private_key(
    descriptor: int, path: str, material: str, name: str, client: Client
) -> None:
    """Write the key to the file opened for it; if that fails, delete the key pair again rather
    than leave one whose private key nobody has."""
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as stream:
            os.fchmod(stream.fileno(), 0o600)  # whatever the umask made of the mode
            stream.write(material)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(path)
        client.call("DeleteKeyPair", [("KeyName", name)])
        raise ToolError(
            f"-f/--filename: cannot write {path}: {error.strerror}; the key pair {name} was"
            " deleted again"
        ) from None


CREATE_KEYPAIR = Tool(
    name="euca-create-keypair",
    service="ec2",
    summary="Create a key pair; print its name and fingerprint, then its private key (or write "
    "the key to -f FILE). The private key is shown this once: EC2 does not keep it.",
    add_arguments=_create_arguments,
    run=_create,
    example="  $ euca-create-keypair deploy -f deploy.pem\n"
    "  KEYPAIR\tdeploy\t1f:51:ae:28:bf:89:e9:d8:1f:25:5d:37:2d:7d:b8:ca:9f:f5:f1:6f",
)


# euca-import-keypair


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="KEYPAIR", help="name for the new key pair")
    parser.add_argument(
        "-f",
        "--public-key-file",
        dest="public_key_file",
        metavar="FILE",
        required=True,
        help="the public key to import, e.g. ~/.ssh/id_ed25519.pub (OpenSSH or RFC 4716)",
    )


def read_public_key(path: str) -> bytes:
    """The public key file named by -f, as bytes for PublicKeyMaterial."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_PUBLIC_KEY_FILE + 1)
    except OSError as error:
        raise ToolError(f"-f/--public-key-file: cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_PUBLIC_KEY_FILE:
        raise ToolError(f"-f/--public-key-file: {path} is too large to be a public key")
    if b"PRIVATE KEY" in data:
        raise ToolError(
            f"-f/--public-key-file: {path} is a private key; give its .pub file (ssh-keygen -y"
            " prints it)"
        )
    return data


def _import(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    material = base64.b64encode(read_public_key(args.public_key_file)).decode("ascii")
    result = client.call("ImportKeyPair", [("KeyName", args.name), ("PublicKeyMaterial", material)])
    print(keypair_line(result), file=out)


IMPORT_KEYPAIR = Tool(
    name="euca-import-keypair",
    service="ec2",
    summary="Import an SSH public key (ssh-rsa of 2048-4096 bits, or ssh-ed25519) as a key pair.",
    add_arguments=_import_arguments,
    run=_import,
    example="  $ euca-import-keypair laptop -f ~/.ssh/id_ed25519.pub\n"
    "  KEYPAIR\tlaptop\tz/5m5sHpHwn7ojr1TAd6Uu0Ev/gLiIZbRjz8i5vNSQU=",
)


# euca-describe-keypairs


def _describe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names", metavar="KEYPAIR", nargs="*", help="names of the key pairs (default: all)"
    )
    add_filter_argument(parser, "key pairs", "key-type=ed25519 or fingerprint=…")


def _describe(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    params = [(f"KeyName.{index}", name) for index, name in enumerate(args.names, 1)]
    result = client.call("DescribeKeyPairs", params + filter_params(args.filters))
    for key_pair in members(result.get("keySet")):
        print(keypair_line(key_pair), file=out)


DESCRIBE_KEYPAIRS = Tool(
    name="euca-describe-keypairs",
    service="ec2",
    summary="Show key pairs: a KEYPAIR line with the name and fingerprint of each.",
    add_arguments=_describe_arguments,
    run=_describe,
    example="  $ euca-describe-keypairs\n"
    "  KEYPAIR\tdeploy\t1f:51:ae:28:bf:89:e9:d8:1f:25:5d:37:2d:7d:b8:ca:9f:f5:f1:6f",
)


# euca-delete-keypair


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="KEYPAIR", help="name of the key pair to delete")


def _delete(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call("DeleteKeyPair", [("KeyName", args.name)])
    print(tabbed("KEYPAIR", args.name), file=out)


DELETE_KEYPAIR = Tool(
    name="euca-delete-keypair",
    service="ec2",
    summary="Delete a key pair (instances launched with it keep its public key).",
    add_arguments=_delete_arguments,
    run=_delete,
    example="  $ euca-delete-keypair deploy\n  KEYPAIR\tdeploy",
)


TOOLS = (CREATE_KEYPAIR, IMPORT_KEYPAIR, DESCRIBE_KEYPAIRS, DELETE_KEYPAIR)

create_keypair = entry_point(CREATE_KEYPAIR)
import_keypair = entry_point(IMPORT_KEYPAIR)
describe_keypairs = entry_point(DESCRIBE_KEYPAIRS)
delete_keypair = entry_point(DELETE_KEYPAIR)
