"""IAM (2010-05-08): roles, their inline policies, instance profiles."""

from controller.actions import Registry

registry = Registry()

from controller.iam import instance_profiles, roles, simulate, users  # noqa: E402,F401
