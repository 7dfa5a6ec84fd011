"""What an instance's node is told of it (the node API's `InstanceAssignment`), and its identity
document: everything the instance's metadata service serves, built from the store.

The identity document is rendered once, at launch (`identity_of`), and signed then when the
controller has an identity key: the agent serves those exact bytes, so the signature holds.
"""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from typing import Final, Protocol

from common.identitydoc import identity_document
from common.nodemessages import (
    HttpEndpoint,
    HttpTokens,
    InstanceAssignment,
    InstanceIdentity,
    InstanceMetadata,
    InstanceProfile,
    MetadataOptions,
    NetworkInterface,
    PublicKey,
)
from common.timestamps import parse_timestamp
from controller.store.base import Transaction
from controller.store.records import REGION, Instance

AVAILABILITY_ZONE: Final = f"{REGION}a"
#: AWS's zone ids are per account; RoleCall's one zone has one id.
AVAILABILITY_ZONE_ID: Final = "use1-az1"
#: What a tag key in metadata may hold (AWS's rule); other tags are left out of the metadata.
METADATA_TAG_KEY: Final = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")
_NOT_TAG_KEYS: Final = frozenset({".", "..", "_index"})


class Signatures(Protocol):
    """The three signed forms the metadata service serves (`controller.identity`)."""

    @property
    def signature(self) -> str: ...
    @property
    def pkcs7(self) -> str: ...
    @property
    def rsa2048(self) -> str: ...


class DocumentSigner(Protocol):
    """Signs an identity document's exact bytes (`controller.identity.IdentitySigner`)."""

    def sign(self, document: bytes) -> Signatures: ...


def instance_metadata(instance: Instance) -> InstanceMetadata:
    """The standard metadata items the agent serves for an instance."""
    hostname = f"ip-{instance.private_ip.replace('.', '-')}.ec2.internal"
    return InstanceMetadata(
        instance_id=instance.instance_id,
        ami_id=instance.image_id,
        ami_launch_index=str(instance.launch_index),
        instance_type=instance.instance_type,
        reservation_id=instance.reservation_id,
        availability_zone=AVAILABILITY_ZONE,
        availability_zone_id=AVAILABILITY_ZONE_ID,
        region=REGION,
        local_ipv4=instance.private_ip,
        local_hostname=hostname,
        hostname=hostname,
        launch_time=parse_timestamp(instance.launched),
        account_id=instance.account_id,
    )


def identity_of(instance: Instance, signer: DocumentSigner | None) -> Instance:
    """`instance` with its identity document, signed when there is a signer."""
    document = identity_document(instance_metadata(instance))
    signed = signer.sign(document) if signer is not None else None
    return replace(
        instance,
        identity_document=document.decode("ascii"),
        identity_signature=signed.signature if signed else None,
        identity_pkcs7=signed.pkcs7 if signed else None,
        identity_rsa2048=signed.rsa2048 if signed else None,
    )


def metadata_tags(tags: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The tags the metadata service may show: those whose key AWS allows there."""
    return tuple(
        (key, value)
        for key, value in tags
        if METADATA_TAG_KEY.fullmatch(key) and key not in _NOT_TAG_KEYS
    )


def assignment(tx: Transaction, instance: Instance) -> InstanceAssignment:
    """What the instance's node is told of it."""
    profile = tx.get_instance_profile_by_id(instance.profile_id) if instance.profile_id else None
    role = tx.get_role_by_id(profile.role_id) if profile and profile.role_id else None
    key_name, public_key = instance.key_name, instance.public_key
    return InstanceAssignment(
        instance_id=instance.instance_id,
        account_id=instance.account_id,
        netns=instance.netns,
        instance_profile=(
            InstanceProfile(profile.arn, profile.profile_id, role.name if role else None)
            if profile is not None
            else None
        ),
        metadata_options=MetadataOptions(
            HttpTokens(instance.http_tokens),
            instance.hop_limit,
            HttpEndpoint(instance.http_endpoint),
        ),
        metadata=instance_metadata(instance),
        user_data=(
            base64.b64decode(instance.user_data) if instance.user_data is not None else None
        ),
        public_keys=(
            (PublicKey(key_name, public_key),) if key_name is not None and public_key else ()
        ),
        network=(
            NetworkInterface(
                mac=instance.mac,
                interface_id=instance.interface_id,
                subnet_cidr=instance.subnet,
                security_groups=instance.group_names,
            )
            if instance.mac is not None
            else None
        ),
        tags=(
            metadata_tags([(tag.key, tag.value) for tag in tx.get_tags(instance.instance_id)])
            if instance.tags_in_metadata
            else None
        ),
        identity=(
            InstanceIdentity(
                instance.identity_document,
                instance.identity_signature,
                instance.identity_pkcs7,
                instance.identity_rsa2048,
            )
            if instance.identity_document is not None
            else None
        ),
    )
