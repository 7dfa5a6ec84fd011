"""IAM (2010-05-08): roles, users, groups, inline and managed policies, boundaries, instance
profiles."""

from controller.actions import Registry

registry = Registry()

from controller.iam import (  # noqa: E402,F401
    boundaries,
    groups,
    instance_profiles,
    managed,
    roles,
    simulate,
    users,
)
