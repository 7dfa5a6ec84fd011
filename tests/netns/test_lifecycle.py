"""The agent's namespaces over an instance's life and the agent's own, and the agent without its
controller (DESIGN.md "Namespaces"; spec/imds.md 25, 28)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

from agent import netns
from tests.netns.harness import (
    ACCOUNT_ID,
    BIN,
    METADATA_ADDRESS,
    TOKEN_HEADER,
    TTL_HEADER,
    Cloud,
    Guest,
    add_namespace,
    delete_namespace,
    imds,
    link,
    loopback_addresses,
    namespace_of,
    namespaces,
    remove_guest,
    unique,
    wait_until,
)

INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
ATTEMPTS = "rolecall_agent_credential_refresh_attempts_total"


def owned(cloud: Cloud) -> dict[str, dict[str, object]]:
    """The agent's ownership file: namespace -> what it made there."""
    if not cloud.agent.ownership_file.exists():
        return {}
    entries = json.loads(cloud.agent.ownership_file.read_text())
    return {entry["namespace"]: entry for entry in entries}


def _served_token(guest: Guest) -> str:
    status, token = guest.token(max_time=1)
    return token if status == 200 else ""


def test_terminating_an_instance_removes_the_namespace_the_agent_made(cloud: Cloud) -> None:
    instance_id = cloud.launch()
    namespace = namespace_of(instance_id)
    guest = cloud.guest(instance_id)
    assert guest.token()[0] == 200
    assert owned(cloud)[namespace]["created_namespace"] is True
    remove_guest(guest)  # its veth's end is in the namespace: see the next test

    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    wait_until(lambda: namespace not in namespaces(), 10, f"{namespace} to be removed")
    assert cloud.agent.metrics()["rolecall_agent_instances"] == 0
    assert namespace not in owned(cloud)


def test_a_namespace_the_agent_made_is_left_in_place_while_it_holds_a_guests_link(
    cloud: Cloud,
) -> None:
    """Issue 13, item 3: removing it would destroy the link (a VM's tap, here a guest's veth
    end). It stays, without the address, recorded as released, and goes at the first
    reconcile once the link is gone."""
    instance_id = cloud.launch()
    namespace = namespace_of(instance_id)
    guest = cloud.guest(instance_id)
    assert guest.token()[0] == 200

    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    assert cloud.agent.process is not None
    cloud.agent.process.wait_for(f"left namespace {namespace} in place: it holds link rcv", 10)
    assert netns.exists(namespace)
    assert guest.token(max_time=1)[0] == 0  # nothing answers: no address, no socket
    assert METADATA_ADDRESS not in loopback_addresses(namespace)
    assert netns.OwnershipRecord(cloud.agent.ownership_file).load()[namespace].released

    remove_guest(guest)
    cloud.wait_served(cloud.launch())  # a reconcile
    wait_until(lambda: namespace not in namespaces(), 10, f"{namespace} to be removed")
    assert namespace not in owned(cloud)


def test_a_restarted_agent_adopts_its_namespace_and_still_removes_it_on_termination(
    cloud: Cloud,
) -> None:
    instance_id = cloud.launch()
    namespace = namespace_of(instance_id)
    guest = cloud.guest(instance_id)
    assert guest.token()[0] == 200

    cloud.agent.stop()
    assert netns.exists(namespace)
    assert f"{METADATA_ADDRESS}/32" in loopback_addresses(namespace)
    assert guest.token(max_time=1)[0] == 0  # nothing listens while the agent is away

    cloud.agent.start()
    token = wait_until(lambda: _served_token(guest), 15, "the restarted agent to serve again")
    assert guest.get(INSTANCE_ID_PATH, token) == (200, instance_id)
    assert loopback_addresses(namespace).count(METADATA_ADDRESS) == 1

    remove_guest(guest)
    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    # The ownership file says the agent made it, so it goes even though this agent adopted it.
    wait_until(lambda: namespace not in namespaces(), 10, f"{namespace} to be removed")


def test_a_namespace_made_before_the_agent_is_left_in_place_on_termination(
    cloud: Cloud,
) -> None:
    cloud.agent.stop()
    instance_id = cloud.launch()
    namespace = add_namespace(namespace_of(instance_id))  # as a hypervisor would, for its tap
    cloud.agent.start()
    guest = cloud.guest(instance_id)
    assert guest.token()[0] == 200
    assert owned(cloud)[namespace]["created_namespace"] is False

    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    wait_until(
        lambda: METADATA_ADDRESS not in loopback_addresses(namespace),
        10,
        f"the agent to remove {METADATA_ADDRESS} from {namespace}",
    )
    assert netns.exists(namespace)
    assert guest.token(max_time=1)[0] == 0
    assert namespace not in owned(cloud)


def test_an_instance_terminated_while_the_agent_was_away_loses_its_namespace_on_return(
    cloud: Cloud,
) -> None:
    instance_id = cloud.launch()
    namespace = cloud.wait_served(instance_id)
    cloud.agent.stop()
    cloud.ec2.terminate_instances(InstanceIds=[instance_id])

    cloud.agent.start()
    # The ownership file says this agent made the namespace and no assignment names it any more.
    wait_until(
        lambda: namespace not in namespaces(),
        10,
        f"the returning agent to remove {namespace} (its ownership file:"
        f" {cloud.agent.ownership_file.read_text()})",
    )
    assert namespace not in owned(cloud)


def _document(namespace: str, path: str) -> tuple[dict[str, str], float]:
    """The JSON document at `path` (asked with a fresh token) and how long the answer took."""
    token = imds(namespace, "PUT", "/latest/api/token", {TTL_HEADER: "60"}).body
    started = time.monotonic()
    answer = imds(namespace, "GET", path, {TOKEN_HEADER: token})
    elapsed = time.monotonic() - started
    assert answer.status == 200, answer
    return json.loads(answer.body), elapsed


def _credentials(namespace: str, role: str) -> tuple[dict[str, str], float]:
    """The credential document served in `namespace`, and how long the answer took."""
    return _document(namespace, f"/latest/meta-data/iam/security-credentials/{role}")


def _credentials_served(namespace: str, role: str) -> bool:
    try:
        _credentials(namespace, role)
    except (AssertionError, OSError, netns.NamespaceError):
        return False
    return True


def test_without_its_controller_the_agent_keeps_serving_and_resumes_when_it_returns(
    cloud: Cloud,
) -> None:
    profile, _ = cloud.profile()
    instance_id = cloud.launch(profile)
    guest = cloud.guest(instance_id)
    wait_until(lambda: _credentials_served(guest.name, profile), 10, "credentials to be served")
    before, _ = _credentials(guest.name, profile)
    attempts = cloud.agent.metrics()[ATTEMPTS]

    output_at_stop = len(cloud.agent.process.lines) if cloud.agent.process else 0
    cloud.controller.stop()
    assert cloud.agent.process is not None
    cloud.agent.process.wait_for(r"assignments unavailable", timeout=15, start=output_at_stop)
    for _ in range(3):
        during, elapsed = _credentials(guest.name, profile)
        assert during == before  # the same set, from memory
        assert elapsed < 0.5  # the Go SDK gives up after 500 ms (spec 25)
    assert _document(guest.name, "/latest/meta-data/iam/info")[0]["Code"] == "Success"

    cloud.controller.start()  # serve again: same state directory, same ports
    relay = cloud.relay(guest)
    # The set issued before the restart is still good at the restarted controller.
    whoami = guest.run(
        [str(BIN / "python"), "-c",
         "import boto3\n"
         f"sts = boto3.client('sts', endpoint_url='{relay.url}')\n"
         "print(sts.get_caller_identity()['Arn'])\n"
         "print(boto3.Session().get_credentials().access_key)"],
        env={"AWS_DEFAULT_REGION": "us-east-1"},
    )  # fmt: skip
    assert whoami.stdout.split() == [
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{profile}/{instance_id}",
        before["AccessKeyId"],
    ], whoami
    # The long poll is back: an instance launched now is served, with fresh credentials.
    second = cloud.launch(profile)
    wait_until(
        lambda: _credentials_served(namespace_of(second), profile),
        30,
        f"the agent to serve {second} after the controller's restart:\n{cloud.agent.output}",
    )
    assert cloud.agent.metrics()[ATTEMPTS] > attempts
    log = cloud.agent.output
    assert f"serving {second}" in log  # the log was captured, and...
    assert before["SecretAccessKey"] not in log and before["Token"] not in log  # ...no secrets


def test_namespaces_nothing_names_are_removed_at_start_unless_they_hold_something(
    cloud: Cloud,
) -> None:
    """A namespace with the agent's prefix that neither an assignment nor the agent's record
    names (its record lost, its instance terminated meanwhile) is removed when the agent starts,
    if it holds nothing foreign; one with a link or a listening socket in it stays."""
    cloud.agent.stop()
    empty = add_namespace(f"rc-i-{uuid.uuid4().hex[:8]}")
    linked = add_namespace(f"rc-i-{uuid.uuid4().hex[:8]}")
    peer = add_namespace(unique("rcg-"))
    link(linked, peer)
    serving = add_namespace(f"rc-i-{uuid.uuid4().hex[:8]}")
    with netns.inside(serving):
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        cloud.agent.start()
        wait_until(lambda: empty not in namespaces(), 15, f"the agent to remove {empty}")
        # The agent goes through the namespaces one by one: the others' lines may come later.
        wait_until(
            lambda: (
                f"left namespace {serving} in place" in cloud.agent.output
                and f"left namespace {linked} in place" in cloud.agent.output
            ),
            15,
            f"the agent to say it left {linked} and {serving} in place",
        )
        assert {linked, serving, peer} <= namespaces()
        output = cloud.agent.output
        assert f"removed namespace {empty}: no instance of this node, nothing in it" in output
        assert f"left namespace {linked} in place: no instance of this node, but it holds link" in (
            output
        )
        assert f"left namespace {serving} in place" in output
        assert "1 listening TCP socket(s)" in output
    finally:
        listening.close()
        for name in (empty, linked, peer, serving):
            delete_namespace(name)


def test_a_namespace_whose_record_was_lost_is_removed_with_its_instance(cloud: Cloud) -> None:
    """Adopted after its record was lost, a namespace with the agent's prefix that holds nothing
    foreign goes when its instance is terminated, as one the agent knew it made does."""
    instance_id = cloud.launch()
    namespace = cloud.wait_served(instance_id)
    cloud.agent.stop()
    for path in (cloud.agent.ownership_file, Path(f"{cloud.agent.ownership_file}.journal")):
        path.unlink(missing_ok=True)
    cloud.agent.start()
    cloud.wait_served(instance_id)
    assert owned(cloud)[namespace]["created_namespace"] is False

    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    wait_until(lambda: namespace not in namespaces(), 10, f"{namespace} to be removed")
    cloud.agent.logged(f"removed namespace {namespace}")
