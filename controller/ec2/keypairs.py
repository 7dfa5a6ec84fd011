"""EC2 key pairs: import a public key or have a key pair made, describe them, delete them; and the
key pair RunInstances names (``KeyName``).

Only the public half is kept, as an OpenSSH line whose comment is the key pair's name (what EC2's
metadata service serves at ``public-keys/0/openssh-key``). The private key CreateKeyPair makes
is in its answer, once, and nowhere else: not in the store, not in a log line, not in an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller.actions import Context, Result
from controller.ec2 import registry, sshkeys
from controller.ec2.common import (
    DRY_RUN,
    FILTERS,
    TAG_SPECIFICATIONS,
    check_dry_run,
    new_hex_id,
    now_text,
    tag_specification_tags,
)
from controller.ec2.limits import Ec2Limits, check_key_pair_count, check_tag_count
from controller.errors import (
    InvalidKeyPairDuplicate,
    InvalidKeyPairFormat,
    InvalidKeyPairNotFound,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
)
from controller.query import Bool, Field, ListOf, Str, Struct
from controller.store.base import Conflict
from controller.store.records import REGION, KeyPair, Tag

#: EC2's bound on a key name: "up to 255 ASCII characters".
MAX_KEY_NAME = 255
DEFAULT_KEY_TYPE = "rsa"
KEY_FORMATS = ("pem", "ppk")


def key_pair_arn(account_id: str, name: str) -> str:
    return f"arn:aws:ec2:{REGION}:{account_id}:key-pair/{name}"


def check_key_name(name: str) -> None:
    """A name EC2 would take, and one safe as the comment of an authorized_keys line: 1 to 255
    printable ASCII characters, no leading or trailing space (see docs/decisions.md)."""
    printable = all(" " <= char <= "~" for char in name)
    if not name or len(name) > MAX_KEY_NAME or not printable or name != name.strip(" "):
        shown = name if printable else name.encode("ascii", "backslashreplace").decode()
        raise InvalidParameterValue(
            f"Value ({shown[:MAX_KEY_NAME]}) for parameter KeyName is invalid. A key name is 1 to"
            f" {MAX_KEY_NAME} printable ASCII characters without leading or trailing spaces."
        )


def require_key_pair(context: Context, name: str) -> KeyPair:
    """The caller's key pair of exactly this name (RunInstances, DescribeKeyPairs)."""
    key_pair = context.tx.get_key_pair(context.account_id, name)
    if key_pair is None:
        raise InvalidKeyPairNotFound(f"The key pair '{name}' does not exist")
    return key_pair


def _find_by_id(context: Context, key_pair_id: str) -> KeyPair | None:
    key_pair = context.tx.get_key_pair_by_id(key_pair_id)
    return key_pair if key_pair is not None and key_pair.account_id == context.account_id else None


def _named_resource(context: Context, params: dict[str, Any]) -> str:
    return key_pair_arn(context.account_id, params["KeyName"])


def _deleted_resources(context: Context, params: dict[str, Any]) -> tuple[str, ...]:
    """Each key pair DeleteKeyPair names, by its stored name when named by id."""
    names = []
    if "KeyName" in params:
        names.append(params["KeyName"])
    if "KeyPairId" in params:
        found = _find_by_id(context, params["KeyPairId"])
        names.append(found.name if found is not None else "*")
    return tuple(dict.fromkeys(key_pair_arn(context.account_id, name) for name in names)) or (
        key_pair_arn(context.account_id, "*"),
    )


def _key_pair_tags(params: dict[str, Any]) -> list[Tag]:
    tags = tag_specification_tags(params, "key-pair")
    check_tag_count(len(tags), "key pair")
    return tags


def _check_room(context: Context, name: str) -> None:
    """The name is free in the account and the account is under its quota."""
    if context.tx.get_key_pair(context.account_id, name) is not None:
        raise InvalidKeyPairDuplicate(f"The keypair '{name}' already exists.")
    limits = context.services.ec2_limits or Ec2Limits()
    check_key_pair_count(
        context.tx.count_key_pairs(context.account_id), limits.max_key_pairs_per_account
    )


def _store(context: Context, key_pair: KeyPair, tags: list[Tag]) -> None:
    try:
        context.tx.insert_key_pair(key_pair)
    except Conflict as error:  # another request took the name since _check_room
        raise InvalidKeyPairDuplicate(f"The keypair '{key_pair.name}' already exists.") from error
    if tags:
        context.tx.put_tags(key_pair.key_pair_id, tags)


def _tag_set(tags: list[Tag]) -> list[dict[str, str]]:
    return [{"key": tag.key, "value": tag.value} for tag in tags]


@registry.action(
    "ec2",
    "ImportKeyPair",
    Struct(
        (
            Field("KeyName", Str(), required=True),
            Field("PublicKeyMaterial", Str(), required=True),
            Field("TagSpecifications", TAG_SPECIFICATIONS, wire_name="TagSpecification"),
            DRY_RUN,
        )
    ),
    resource=_named_resource,
)
def import_key_pair(context: Context, params: dict[str, Any]) -> Result:
    name = params["KeyName"]
    check_key_name(name)
    try:
        public = sshkeys.parse_public_key(sshkeys.decode_material(params["PublicKeyMaterial"]))
    except sshkeys.KeyFormatError as error:
        raise InvalidKeyPairFormat(
            f"Key is not in valid OpenSSH public key format: {error}."
        ) from error
    tags = _key_pair_tags(params)
    _check_room(context, name)
    check_dry_run(params)
    key_pair = KeyPair(
        key_pair_id=new_hex_id("key-"),
        account_id=context.account_id,
        name=name,
        key_type=public.key_type,
        fingerprint=sshkeys.import_fingerprint(public),
        public_key=public.openssh_line(name),
        created=now_text(context),
    )
    _store(context, key_pair, tags)
    return {
        "keyFingerprint": key_pair.fingerprint,
        "keyName": key_pair.name,
        "keyPairId": key_pair.key_pair_id,
        "tagSet": _tag_set(tags) or None,
    }


@registry.action(
    "ec2",
    "CreateKeyPair",
    Struct(
        (
            Field("KeyName", Str(), required=True),
            Field("KeyType", Str(enum=sshkeys.KEY_TYPES)),
            Field("KeyFormat", Str(enum=KEY_FORMATS)),
            Field("TagSpecifications", TAG_SPECIFICATIONS, wire_name="TagSpecification"),
            DRY_RUN,
        )
    ),
    resource=_named_resource,
)
def create_key_pair(context: Context, params: dict[str, Any]) -> Result:
    name = params["KeyName"]
    check_key_name(name)
    if params.get("KeyFormat", "pem") != "pem":
        raise InvalidParameterValue(
            "Value (ppk) for parameter KeyFormat is invalid. RoleCall returns private keys as pem"
            " only; PuTTY's puttygen converts one: puttygen KEY.pem -o KEY.ppk."
        )
    tags = _key_pair_tags(params)
    _check_room(context, name)
    check_dry_run(params)
    # The private key lives in this answer only. Made after every check, so that a refused or
    # dry-run request costs no key generation (some 40 ms for RSA, on the reactor thread).
    made = sshkeys.generate(params.get("KeyType", DEFAULT_KEY_TYPE))
    key_pair = KeyPair(
        key_pair_id=new_hex_id("key-"),
        account_id=context.account_id,
        name=name,
        key_type=made.public.key_type,
        fingerprint=made.fingerprint,
        public_key=made.public.openssh_line(name),
        created=now_text(context),
    )
    _store(context, key_pair, tags)
    return {
        "keyFingerprint": key_pair.fingerprint,
        "keyMaterial": made.private_key,
        "keyName": key_pair.name,
        "keyPairId": key_pair.key_pair_id,
        "tagSet": _tag_set(tags) or None,
    }


#: A filter's values for one key pair (``tag:KEY`` and ``tag-key`` read its tags).
_FILTERS: dict[str, Callable[[KeyPair], list[str]]] = {
    "key-name": lambda key_pair: [key_pair.name],
    "key-pair-id": lambda key_pair: [key_pair.key_pair_id],
    "fingerprint": lambda key_pair: [key_pair.fingerprint],
    "key-type": lambda key_pair: [key_pair.key_type],
}


def _matches(key_pair: KeyPair, tags: list[Tag], filters: list[dict[str, Any]]) -> bool:
    for item in filters:
        name = item.get("Name", "")
        if name.startswith("tag:"):
            values = [tag.value for tag in tags if tag.key == name[4:]]
        elif name == "tag-key":
            values = [tag.key for tag in tags]
        elif name in _FILTERS:
            values = _FILTERS[name](key_pair)
        else:
            raise InvalidParameterValue(f"The filter '{name}' is invalid")
        if not set(item.get("Values", [])).intersection(values):
            return False
    return True


@registry.action(
    "ec2",
    "DescribeKeyPairs",
    Struct(
        (
            Field("KeyNames", ListOf(Str()), wire_name="KeyName"),
            Field("KeyPairIds", ListOf(Str()), wire_name="KeyPairId"),
            Field("IncludePublicKey", Bool()),
            Field("Filters", FILTERS, wire_name="Filter"),
            DRY_RUN,
        )
    ),
)
def describe_key_pairs(context: Context, params: dict[str, Any]) -> Result:
    names, ids = params.get("KeyNames"), params.get("KeyPairIds")
    if names or ids:
        chosen: dict[str, KeyPair] = {}
        for name in names or []:
            key_pair = require_key_pair(context, name)
            chosen[key_pair.key_pair_id] = key_pair
        for key_pair_id in ids or []:
            found = _find_by_id(context, key_pair_id)
            if found is None:
                raise InvalidKeyPairNotFound(f"The key pair ID '{key_pair_id}' does not exist")
            chosen[found.key_pair_id] = found
        listed = sorted(chosen.values(), key=lambda key_pair: key_pair.name)
    else:
        listed = context.tx.list_key_pairs(context.account_id)
    check_dry_run(params)
    include_public_key = params.get("IncludePublicKey", False)
    described = []
    for key_pair in listed:
        tags = context.tx.get_tags(key_pair.key_pair_id)
        if not _matches(key_pair, tags, params.get("Filters", [])):
            continue
        described.append(
            {
                "keyPairId": key_pair.key_pair_id,
                "keyName": key_pair.name,
                "keyFingerprint": key_pair.fingerprint,
                "keyType": key_pair.key_type,
                "tagSet": _tag_set(tags),
                "publicKey": key_pair.public_key if include_public_key else None,
                "createTime": key_pair.created,
            }
        )
    return {"keySet": described}


@registry.action(
    "ec2",
    "DeleteKeyPair",
    Struct((Field("KeyName", Str()), Field("KeyPairId", Str()), DRY_RUN)),
    resource=_deleted_resources,
)
def delete_key_pair(context: Context, params: dict[str, Any]) -> Result:
    """As EC2: deleting a key pair that does not exist succeeds (DeleteKeyPair is idempotent);
    instances launched with the key keep it."""
    name, key_pair_id = params.get("KeyName"), params.get("KeyPairId")
    if name is None and key_pair_id is None:
        raise MissingParameter("The request must contain the parameter KeyName or KeyPairId")
    by_name = context.tx.get_key_pair(context.account_id, name) if name is not None else None
    by_id = _find_by_id(context, key_pair_id) if key_pair_id is not None else None
    if name is not None and key_pair_id is not None and by_name != by_id:
        raise InvalidParameterCombination(
            f"The parameters KeyName ({name}) and KeyPairId ({key_pair_id}) do not name the same"
            " key pair."
        )
    check_dry_run(params)
    found = by_name or by_id
    if found is not None:
        context.tx.delete_key_pair(found.key_pair_id)
    return {"return": True, "keyPairId": found.key_pair_id if found is not None else None}
