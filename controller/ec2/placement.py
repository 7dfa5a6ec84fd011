"""EC2 ModifyInstancePlacement: move an instance to another node, as a live migration does.

RoleCall runs no VMs: the operator tells the controller first (this action), then migrates the
VM (``virsh migrate --live``). In one transaction the instance's node changes and both nodes'
assignment revisions move, so the source's long poll answers without the instance (its agent
releases it) and the destination's with it (its agent prepares the namespace and fetches the
credentials). The instance keeps everything else: its address (a live-migrated VM keeps it, so
the destination node's subnet must be able to hold it), MAC, interface, and its identity
document, which names the region and zone but no node, so its signature still holds.

Only the operator (the bootstrap account's root) may move an instance, as only it may name a
node at launch; and it may move any account's instance, since live migration is the cloud's
business, not the tenant's. See docs/decisions.md, "Moving an instance: ModifyInstancePlacement".
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.logger import Logger

from controller.actions import Context, Result
from controller.ec2 import registry
from controller.ec2.common import assignment_changed, instance_resource, require_instance
from controller.ec2.instances import candidate_nodes, check_may_choose_node
from controller.ec2.limits import Ec2Limits, place
from controller.ec2.network import may_hold
from controller.errors import IncorrectInstanceState, InvalidParameterValue
from controller.query import Field, Str, Struct

log = Logger(namespace="rolecall.ec2")

_NO_PLACEMENT_GROUPS = "placement groups are not implemented"
_NO_DEDICATED_HOSTS = "dedicated hosts are not implemented; HostId names a node"
#: ModifyInstancePlacement's other members (the botocore model's), each refused with why.
MODIFY_PLACEMENT_REFUSED = {
    "Affinity": _NO_DEDICATED_HOSTS,
    "GroupId": _NO_PLACEMENT_GROUPS,
    "GroupName": _NO_PLACEMENT_GROUPS,
    "HostResourceGroupArn": _NO_DEDICATED_HOSTS,
    "PartitionNumber": _NO_PLACEMENT_GROUPS,
    "Tenancy": "tenancy is always default in RoleCall",
}


@registry.action(
    "ec2",
    "ModifyInstancePlacement",
    Struct(
        (
            Field("InstanceId", Str(), required=True),
            # EC2 needs one of its attributes; HostId is the only one RoleCall honours.
            Field("HostId", Str(1, 128), required=True),
        ),
        refused=MODIFY_PLACEMENT_REFUSED,
    ),
    resource=instance_resource,
)
def modify_instance_placement(context: Context, params: dict[str, Any]) -> Result:
    check_may_choose_node(context, "HostId")
    # The operator moves the cloud's VMs, most of them tenants': any account's instance.
    instance = require_instance(context, params["InstanceId"], any_account=True)
    if instance.state == "terminated":
        raise IncorrectInstanceState(
            f"The instance '{instance.instance_id}' is not in a state from which it can be"
            " modified."
        )
    (destination,) = candidate_nodes(context, params["HostId"], "hostId")
    if destination.name == instance.node_name:
        return {"return": True}  # already there: as EC2, success, and nothing changes
    limits = context.services.ec2_limits or Ec2Limits()
    place([destination], context.tx.active_instance_counts(), limits.node_capacity, 1, 1)
    subnet = destination.subnet or limits.subnet
    # Free there as well as fitting: two live instances never share an address whose subnets
    # overlap (RunInstances takes every such address as used), and this subnet and the one the
    # address came from overlap at the address itself.
    if not may_hold(subnet, instance.private_ip):
        raise InvalidParameterValue(
            f"Value ({destination.name}) for parameter hostId is invalid. The instance's"
            f" private address {instance.private_ip} is not one the node's subnet {subnet}"
            " gives, and a live-migrated instance keeps its address."
        )
    source = instance.node_name
    context.tx.update_instance(
        replace(instance, node_name=destination.name, subnet=subnet, previous_node=source)
    )
    assignment_changed(context, source)
    assignment_changed(context, destination.name)
    context.on_commit.append(
        lambda: log.info(
            "moved {instance_id} from node {source} to node {destination}",
            instance_id=instance.instance_id,
            source=source,
            destination=destination.name,
        )
    )
    return {"return": True}
