"""EC2 key pairs (controller/ec2/keypairs.py): ImportKeyPair, CreateKeyPair, DescribeKeyPairs,
DeleteKeyPair and RunInstances' KeyName, run as the API runs them (one store transaction per
call) on a real SQLite store. Authorization is the API's and is tested end to end in
tests/e2e/test_key_pairs.py; here the resource each action authorizes is checked."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from controller.actions import Caller, Context, Result, Services
from controller.compose import api_registry
from controller.ec2 import instances, keypairs, sshkeys
from controller.ec2.limits import Ec2Limits
from controller.errors import (
    ApiError,
    DryRunOperation,
    InvalidKeyPairDuplicate,
    InvalidKeyPairFormat,
    InvalidKeyPairNotFound,
    InvalidParameterCombination,
    InvalidParameterValue,
    KeyPairLimitExceeded,
    MissingParameter,
    TagLimitExceeded,
)
from controller.store.records import Account, Node
from controller.store.sqlite import SQLiteStore
from tests.unit.callers import root

ACCOUNT = "111111111111"
OTHER = "222222222222"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
KEY_PAIR_ID = re.compile(r"key-[0-9a-f]{17}")


def ed25519_line(comment: str = "me@laptop") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{line.decode()} {comment}"


def rsa_line(bits: int = 2048) -> str:
    key = rsa.generate_private_key(65537, bits).public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def material(line: str) -> str:
    """PublicKeyMaterial as an SDK sends it: base64 of the file's bytes."""
    return base64.b64encode(line.encode()).decode()


class Api:
    """Calls handlers as the API does: each call one transaction, as one caller, with limits."""

    def __init__(self, store: SQLiteStore, caller: Caller, limits: Ec2Limits) -> None:
        self.store, self.caller, self.limits = store, caller, limits

    def __call__(self, handler: Callable[[Context, dict[str, Any]], Result], **params: Any) -> Any:
        with self.store.transaction() as tx:
            context = Context(tx, self.caller, NOW, services=Services(ec2_limits=self.limits))
            return handler(context, params)

    def import_key(self, name: str, line: str | None = None, **params: Any) -> Any:
        line = line or ed25519_line()
        return self(
            keypairs.import_key_pair, KeyName=name, PublicKeyMaterial=material(line), **params
        )

    def names(self, **params: Any) -> list[str]:
        return [item["keyName"] for item in self(keypairs.describe_key_pairs, **params)["keySet"]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "rolecall.db")
    with opened.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "first", "2026-01-01T00:00:00Z"))
        tx.insert_account(Account(OTHER, "second", "2026-01-02T00:00:00Z"))
        tx.insert_node(Node("hv1", "00", "2026-01-01T00:00:00Z", None, None, 0))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def api(store: SQLiteStore) -> Api:
    return Api(store, root(ACCOUNT), Ec2Limits())


@pytest.fixture
def other(store: SQLiteStore) -> Api:
    return Api(store, root(OTHER), Ec2Limits())


# ImportKeyPair


def test_an_imported_key_is_kept_as_an_openssh_line_named_for_the_key_pair(api: Api) -> None:
    line = ed25519_line("me@laptop")
    result = api.import_key("deploy", line)
    assert KEY_PAIR_ID.fullmatch(result["keyPairId"])
    assert result["keyName"] == "deploy"
    expected = sshkeys.import_fingerprint(sshkeys.parse_public_key(line.encode()))
    assert result["keyFingerprint"] == expected
    assert "tagSet" not in result or result["tagSet"] is None
    with api.store.transaction() as tx:
        stored = tx.get_key_pair(ACCOUNT, "deploy")
    assert stored is not None
    assert stored.public_key == " ".join(line.split()[:2]) + " deploy"
    assert (stored.key_type, stored.created) == ("ed25519", "2026-12-07T12:00:00Z")


def test_an_imported_rsa_key_is_an_rsa_key_pair(api: Api) -> None:
    api.import_key("rsa", rsa_line())
    described = api(keypairs.describe_key_pairs)["keySet"]
    assert [(item["keyName"], item["keyType"]) for item in described] == [("rsa", "rsa")]


def test_importing_a_name_that_exists_is_invalid_key_pair_duplicate(api: Api) -> None:
    api.import_key("deploy")
    with pytest.raises(InvalidKeyPairDuplicate) as raised:
        api.import_key("deploy")
    assert raised.value.message == "The keypair 'deploy' already exists."
    assert (raised.value.code, raised.value.status) == ("InvalidKeyPair.Duplicate", 400)


def test_key_names_differing_in_case_are_two_key_pairs(api: Api) -> None:
    api.import_key("Deploy")
    api.import_key("deploy")
    assert api.names() == ["Deploy", "deploy"]


def test_the_same_name_in_another_account_is_another_key_pair(api: Api, other: Api) -> None:
    api.import_key("deploy")
    other.import_key("deploy")
    assert api.names() == other.names() == ["deploy"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("garbage", "expected an OpenSSH public key"),
        ("ssh-rsa AAAAB3NzaC1yc2E", "does not decode"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAJ0aXctVwbN6VB81gpo8R7DUk8zXRjZvrkg8", "ssh-dss keys"),
    ],
)
def test_material_that_is_no_key_is_invalid_key_pair_format_saying_why(
    api: Api, line: str, reason: str
) -> None:
    with pytest.raises(InvalidKeyPairFormat) as raised:
        api.import_key("bad", line)
    assert raised.value.message.startswith("Key is not in valid OpenSSH public key format: ")
    assert reason in raised.value.message
    assert api.names() == []


def test_material_sent_without_base64_is_invalid_key_pair_format(api: Api) -> None:
    with pytest.raises(InvalidKeyPairFormat, match="base64"):
        api(keypairs.import_key_pair, KeyName="raw", PublicKeyMaterial=ed25519_line())


@pytest.mark.parametrize(
    "name",
    ["", "x" * 256, "two\nlines", " leading", "trailing ", "tab\there", "caf\u00e9"],
    ids=["empty", "256", "newline", "leading", "trailing", "tab", "non-ascii"],
)
def test_a_key_name_ec2_would_not_take_is_invalid_parameter_value(api: Api, name: str) -> None:
    with pytest.raises(InvalidParameterValue, match="for parameter KeyName is invalid"):
        api.import_key(name)
    with pytest.raises(InvalidParameterValue, match="for parameter KeyName is invalid"):
        api(keypairs.create_key_pair, KeyName=name, KeyType="ed25519")


def test_a_name_of_255_printable_characters_with_spaces_inside_is_taken(api: Api) -> None:
    name = "a b!~" + "x" * 250
    api.import_key(name)
    assert api.names() == [name]


def test_an_account_at_its_key_pair_quota_gets_key_pair_limit_exceeded(store: SQLiteStore) -> None:
    api = Api(store, root(ACCOUNT), Ec2Limits(max_key_pairs_per_account=2))
    api.import_key("one")
    api(keypairs.create_key_pair, KeyName="two", KeyType="ed25519")
    with pytest.raises(KeyPairLimitExceeded) as raised:
        api.import_key("three")
    assert (raised.value.code, raised.value.status) == ("KeyPairLimitExceeded", 400)
    assert "limit of 2 key pairs" in raised.value.message
    with pytest.raises(KeyPairLimitExceeded):
        api(keypairs.create_key_pair, KeyName="three", KeyType="ed25519")
    api(keypairs.delete_key_pair, KeyName="one")
    api.import_key("three")
    assert api.names() == ["three", "two"]


def test_the_quota_counts_each_account_apart(store: SQLiteStore) -> None:
    first = Api(store, root(ACCOUNT), Ec2Limits(max_key_pairs_per_account=1))
    second = Api(store, root(OTHER), Ec2Limits(max_key_pairs_per_account=1))
    first.import_key("mine")
    second.import_key("mine")


def test_a_dry_run_import_checks_and_stores_nothing(api: Api) -> None:
    with pytest.raises(DryRunOperation):
        api.import_key("dry", DryRun="true")
    assert api.names() == []


def test_an_import_dry_run_with_bad_material_is_the_format_error(api: Api) -> None:
    with pytest.raises(InvalidKeyPairFormat):
        api.import_key("dry", "garbage", DryRun="true")


# Tags


def test_tags_given_on_import_and_create_are_kept_and_described(api: Api) -> None:
    tags = [{"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "web"}]}]
    imported = api.import_key("imported", TagSpecifications=tags)
    created = api(keypairs.create_key_pair, KeyName="created", TagSpecifications=tags)
    assert imported["tagSet"] == created["tagSet"] == [{"key": "team", "value": "web"}]
    described = api(keypairs.describe_key_pairs)["keySet"]
    assert [item["tagSet"] for item in described] == [[{"key": "team", "value": "web"}]] * 2


def test_a_tag_specification_for_another_resource_type_is_refused(api: Api) -> None:
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}]
    with pytest.raises(InvalidParameterValue, match="It must be key-pair"):
        api.import_key("k", TagSpecifications=tags)
    assert api.names() == []


def test_a_fifty_first_tag_on_a_key_pair_is_tag_limit_exceeded(api: Api) -> None:
    tags = [{"Key": f"k{number}", "Value": "v"} for number in range(51)]
    with pytest.raises(TagLimitExceeded, match="each key pair 51"):
        api.import_key("k", TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}])


# CreateKeyPair


def test_create_key_pair_makes_a_2048_bit_rsa_key_by_default(api: Api) -> None:
    result = api(keypairs.create_key_pair, KeyName="made")
    assert re.fullmatch(r"([0-9a-f]{2}:){19}[0-9a-f]{2}", result["keyFingerprint"])
    private = serialization.load_pem_private_key(result["keyMaterial"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    with api.store.transaction() as tx:
        stored = tx.get_key_pair(ACCOUNT, "made")
    assert stored is not None and stored.key_type == "rsa"
    public = sshkeys.PublicKey(private.public_key()).openssh_line("made")
    assert stored.public_key == public


def test_create_key_pair_makes_an_ed25519_key_matching_what_is_kept(api: Api) -> None:
    result = api(keypairs.create_key_pair, KeyName="made", KeyType="ed25519")
    private = serialization.load_ssh_private_key(result["keyMaterial"].encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    public = sshkeys.PublicKey(private.public_key())
    with api.store.transaction() as tx:
        stored = tx.get_key_pair(ACCOUNT, "made")
    assert stored is not None
    assert stored.public_key == public.openssh_line("made")
    assert stored.fingerprint == result["keyFingerprint"] == sshkeys.import_fingerprint(public)


@pytest.mark.parametrize("key_type", sshkeys.KEY_TYPES)
def test_a_created_private_key_is_nowhere_in_the_store(
    api: Api, tmp_path: Path, key_type: str
) -> None:
    result = api(keypairs.create_key_pair, KeyName="secret", KeyType=key_type)
    body_lines = result["keyMaterial"].splitlines()[1:-1]
    api.store.close()  # everything on disk: database and write-ahead log
    on_disk = b"".join(path.read_bytes() for path in tmp_path.glob("rolecall.db*"))
    assert b"secret" in on_disk  # the name is there, so the store was read
    assert [line for line in body_lines if line.encode() in on_disk] == []
    assert b"PRIVATE KEY" not in on_disk


def test_a_ppk_key_format_is_refused_with_how_to_convert(api: Api) -> None:
    with pytest.raises(InvalidParameterValue, match="puttygen"):
        api(keypairs.create_key_pair, KeyName="putty", KeyFormat="ppk")
    assert api.names() == []


def test_creating_a_name_that_exists_is_invalid_key_pair_duplicate(api: Api) -> None:
    api.import_key("taken")
    with pytest.raises(InvalidKeyPairDuplicate, match=r"The keypair 'taken' already exists\."):
        api(keypairs.create_key_pair, KeyName="taken")


def test_a_refused_or_dry_run_create_makes_no_key(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.import_key("taken")

    def never(key_type: str) -> sshkeys.NewKeyPair:
        raise AssertionError("a key was made for a request that was not going to keep it")

    monkeypatch.setattr(sshkeys, "generate", never)
    with pytest.raises(DryRunOperation):
        api(keypairs.create_key_pair, KeyName="dry", DryRun="true")
    with pytest.raises(InvalidKeyPairDuplicate):
        api(keypairs.create_key_pair, KeyName="taken")
    assert api.names() == ["taken"]


# DescribeKeyPairs


def test_describe_lists_the_accounts_key_pairs_by_name_without_public_keys(
    api: Api, other: Api
) -> None:
    for name in ("web", "db"):
        api.import_key(name)
    other.import_key("theirs")
    described = api(keypairs.describe_key_pairs)["keySet"]
    assert [item["keyName"] for item in described] == ["db", "web"]
    assert all(item.get("publicKey") is None for item in described)
    assert all(item["createTime"] == "2026-12-07T12:00:00Z" for item in described)


def test_include_public_key_adds_the_openssh_line(api: Api) -> None:
    line = ed25519_line()
    api.import_key("deploy", line)
    (item,) = api(keypairs.describe_key_pairs, IncludePublicKey=True)["keySet"]
    assert item["publicKey"] == " ".join(line.split()[:2]) + " deploy"


def test_describe_by_name_and_by_id_returns_each_once(api: Api) -> None:
    first = api.import_key("first")
    api.import_key("second")
    api.import_key("third")
    chosen = api.names(KeyNames=["second", "first"], KeyPairIds=[first["keyPairId"]])
    assert chosen == ["first", "second"]


def test_an_unknown_name_is_invalid_key_pair_not_found_in_ec2_words(api: Api) -> None:
    api.import_key("known")
    with pytest.raises(InvalidKeyPairNotFound) as raised:
        api.names(KeyNames=["known", "nosuch"])
    assert raised.value.message == "The key pair 'nosuch' does not exist"
    assert (raised.value.code, raised.value.status) == ("InvalidKeyPair.NotFound", 400)


def test_an_unknown_id_is_invalid_key_pair_not_found(api: Api) -> None:
    with pytest.raises(InvalidKeyPairNotFound) as raised:
        api.names(KeyPairIds=["key-0123456789abcdef0"])
    assert raised.value.message == "The key pair ID 'key-0123456789abcdef0' does not exist"


def test_another_accounts_key_pair_is_not_found_by_id(api: Api, other: Api) -> None:
    theirs = other.import_key("theirs")
    with pytest.raises(InvalidKeyPairNotFound):
        api.names(KeyPairIds=[theirs["keyPairId"]])


def test_describe_filters_by_name_id_fingerprint_type_and_tags(api: Api) -> None:
    tags = [{"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "web"}]}]
    web = api.import_key("web", TagSpecifications=tags)
    api.import_key("rsa", rsa_line())
    api.import_key("plain")

    def filtered(name: str, *values: str) -> list[str]:
        return api.names(Filters=[{"Name": name, "Values": list(values)}])

    assert filtered("key-name", "web", "plain") == ["plain", "web"]
    assert filtered("key-pair-id", web["keyPairId"]) == ["web"]
    assert filtered("fingerprint", web["keyFingerprint"]) == ["web"]
    assert filtered("key-type", "rsa") == ["rsa"]
    assert filtered("tag:team", "web") == ["web"]
    assert filtered("tag-key", "team") == ["web"]
    assert filtered("tag:team", "db") == []
    both = [{"Name": "key-type", "Values": ["ed25519"]}, {"Name": "tag-key", "Values": ["team"]}]
    assert api.names(Filters=both) == ["web"]


def test_an_unknown_filter_is_invalid_parameter_value(api: Api) -> None:
    api.import_key("k")
    with pytest.raises(InvalidParameterValue, match="The filter 'owner-id' is invalid"):
        api.names(Filters=[{"Name": "owner-id", "Values": ["x"]}])


def test_a_dry_run_describe_is_dry_run_operation(api: Api) -> None:
    with pytest.raises(DryRunOperation):
        api.names(DryRun="true")


# DeleteKeyPair


def test_delete_by_name_or_by_id_removes_the_key_pair(api: Api) -> None:
    by_name = api.import_key("by-name")
    by_id = api.import_key("by-id")
    assert api(keypairs.delete_key_pair, KeyName="by-name") == {
        "return": True,
        "keyPairId": by_name["keyPairId"],
    }
    assert api(keypairs.delete_key_pair, KeyPairId=by_id["keyPairId"])["return"] is True
    assert api.names() == []


def test_deleting_a_key_pair_that_does_not_exist_succeeds_as_in_ec2(api: Api) -> None:
    assert api(keypairs.delete_key_pair, KeyName="nosuch") == {"return": True, "keyPairId": None}
    assert api(keypairs.delete_key_pair, KeyPairId="key-0123456789abcdef0")["return"] is True


def test_deleting_another_accounts_key_pair_by_id_leaves_it(api: Api, other: Api) -> None:
    theirs = other.import_key("theirs")
    api(keypairs.delete_key_pair, KeyPairId=theirs["keyPairId"])
    assert other.names() == ["theirs"]


def test_delete_needs_a_name_or_an_id(api: Api) -> None:
    with pytest.raises(MissingParameter, match="KeyName or KeyPairId"):
        api(keypairs.delete_key_pair)


def test_a_name_and_an_id_of_different_key_pairs_are_refused(api: Api) -> None:
    api.import_key("one")
    two = api.import_key("two")
    with pytest.raises(InvalidParameterCombination):
        api(keypairs.delete_key_pair, KeyName="one", KeyPairId=two["keyPairId"])
    assert api.names() == ["one", "two"]


def test_a_dry_run_delete_deletes_nothing(api: Api) -> None:
    api.import_key("kept")
    with pytest.raises(DryRunOperation):
        api(keypairs.delete_key_pair, KeyName="kept", DryRun="true")
    assert api.names() == ["kept"]


# The resources authorized


def resource_of(api: Api, action: str, **params: Any) -> str | tuple[str, ...]:
    found = api_registry().get("ec2", action)
    assert found is not None and found.resource is not None
    with api.store.transaction() as tx:
        return found.resource(Context(tx, api.caller, NOW), params)


def test_import_and_create_authorize_the_named_key_pair(api: Api) -> None:
    arn = f"arn:aws:ec2:us-east-1:{ACCOUNT}:key-pair/deploy"
    assert resource_of(api, "ImportKeyPair", KeyName="deploy") == arn
    assert resource_of(api, "CreateKeyPair", KeyName="deploy") == arn


def test_delete_by_id_authorizes_the_key_pair_by_its_stored_name(api: Api) -> None:
    made = api.import_key("Deploy")
    assert resource_of(api, "DeleteKeyPair", KeyPairId=made["keyPairId"]) == (
        f"arn:aws:ec2:us-east-1:{ACCOUNT}:key-pair/Deploy",
    )
    assert resource_of(api, "DeleteKeyPair", KeyPairId="key-0123456789abcdef0") == (
        f"arn:aws:ec2:us-east-1:{ACCOUNT}:key-pair/*",
    )


def test_describe_authorizes_every_key_pair_as_ec2_describe_actions_do(api: Api) -> None:
    assert resource_of(api, "DescribeKeyPairs") == "*"


# RunInstances' KeyName


def launch(api: Api, **params: Any) -> dict[str, Any]:
    result = api(instances.run_instances, ImageId="emi-1", MinCount=1, MaxCount=1, **params)
    instance: dict[str, Any] = result["instancesSet"][0]
    return instance


def test_run_instances_with_a_key_name_keeps_the_name_and_a_copy_of_the_key(api: Api) -> None:
    api.import_key("deploy")
    launched = launch(api, KeyName="deploy")
    assert launched["keyName"] == "deploy"
    with api.store.transaction() as tx:
        key_pair = tx.get_key_pair(ACCOUNT, "deploy")
        instance = tx.get_instance(launched["instanceId"])
    assert key_pair is not None and instance is not None
    assert (instance.key_name, instance.public_key) == ("deploy", key_pair.public_key)


def test_an_instance_keeps_its_key_after_the_key_pair_is_deleted(api: Api) -> None:
    api.import_key("deploy")
    launched = launch(api, KeyName="deploy")
    api(keypairs.delete_key_pair, KeyName="deploy")
    described = api(instances.describe_instances, InstanceIds=[launched["instanceId"]])
    assert described["reservationSet"][0]["instancesSet"][0]["keyName"] == "deploy"
    with api.store.transaction() as tx:
        instance = tx.get_instance(launched["instanceId"])
    assert instance is not None and instance.public_key is not None


def test_run_instances_with_an_unknown_key_is_invalid_key_pair_not_found(api: Api) -> None:
    with pytest.raises(InvalidKeyPairNotFound) as raised:
        launch(api, KeyName="nosuch")
    assert raised.value.message == "The key pair 'nosuch' does not exist"
    with api.store.transaction() as tx:
        assert tx.account_instance_count(ACCOUNT) == 0


def test_run_instances_cannot_use_another_accounts_key_pair(api: Api, other: Api) -> None:
    other.import_key("theirs")
    with pytest.raises(InvalidKeyPairNotFound):
        launch(api, KeyName="theirs")


def test_without_a_key_name_an_instance_has_no_key(api: Api) -> None:
    launched = launch(api)
    assert launched.get("keyName") is None
    with api.store.transaction() as tx:
        instance = tx.get_instance(launched["instanceId"])
    assert instance is not None and (instance.key_name, instance.public_key) == (None, None)


def test_describe_instances_filters_by_key_name(api: Api) -> None:
    api.import_key("deploy")
    with_key = launch(api, KeyName="deploy")["instanceId"]
    launch(api)
    found = api(instances.describe_instances, Filters=[{"Name": "key-name", "Values": ["deploy"]}])
    ids = [i["instanceId"] for r in found["reservationSet"] for i in r["instancesSet"]]
    assert ids == [with_key]


def test_every_key_pair_error_is_an_ec2_error_of_status_400() -> None:
    for error in (
        InvalidKeyPairNotFound,
        InvalidKeyPairDuplicate,
        InvalidKeyPairFormat,
        KeyPairLimitExceeded,
    ):
        assert issubclass(error, ApiError) and error.status == 400
