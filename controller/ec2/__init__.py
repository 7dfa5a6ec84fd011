"""EC2 (2016-11-15): instances with instance profiles, placed on enrolled nodes; key pairs."""

from controller.actions import Registry

registry = Registry()

from controller.ec2 import (  # noqa: E402,F401
    associations,
    attributes,
    instances,
    keypairs,
    metadata_defaults,
    placement,
)
