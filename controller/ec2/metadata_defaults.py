"""EC2 ModifyInstanceMetadataDefaults and GetInstanceMetadataDefaults: the instance metadata
defaults of an account (issue 15), and the options RunInstances launches with.

An option's value at launch is, in order: RunInstances' own MetadataOptions, the account's
default, RoleCall's default (`ROLECALL_DEFAULTS`: IMDSv2 required, see docs/decisions.md).
Instances launched before a change keep their options, as in EC2.
"""

from __future__ import annotations

from typing import Any, Final

from controller.actions import Context, Result
from controller.ec2 import registry
from controller.ec2.common import DRY_RUN, check_dry_run, now_text
from controller.errors import InvalidParameterValue
from controller.query import Field, Int, Str, Struct
from controller.store.records import MetadataDefaults

NO_PREFERENCE: Final = "no-preference"
NO_HOP_LIMIT_PREFERENCE: Final = -1
MIN_HOP_LIMIT, MAX_HOP_LIMIT = 1, 64

#: RoleCall's own defaults, where neither the request nor the account says otherwise.
ROLECALL_DEFAULTS: Final[dict[str, Any]] = {
    "HttpTokens": "required",  # IMDSv2 only unless asked: see docs/decisions.md
    "HttpPutResponseHopLimit": 1,
    "HttpEndpoint": "enabled",
    "InstanceMetadataTags": "disabled",
}


def launch_options(context: Context, requested: dict[str, Any]) -> dict[str, Any]:
    """The metadata options of instances RunInstances launches now: ``requested`` (its
    MetadataOptions) over the account's defaults over `ROLECALL_DEFAULTS`."""
    options = dict(ROLECALL_DEFAULTS)
    defaults = context.tx.get_metadata_defaults(context.account_id)
    if defaults is not None:
        options.update(_set_fields(defaults))
    options.update((key, value) for key, value in requested.items() if key in options)
    return options


def _set_fields(defaults: MetadataDefaults) -> dict[str, Any]:
    """The account's defaults that express a preference, by their API names."""
    fields = {
        "HttpTokens": defaults.http_tokens,
        "HttpPutResponseHopLimit": defaults.hop_limit,
        "HttpEndpoint": defaults.http_endpoint,
        "InstanceMetadataTags": defaults.metadata_tags,
    }
    return {key: value for key, value in fields.items() if value is not None}


@registry.action(
    "ec2",
    "ModifyInstanceMetadataDefaults",
    Struct(
        (
            Field("HttpTokens", Str(enum=("optional", "required", NO_PREFERENCE))),
            Field("HttpPutResponseHopLimit", Int()),
            Field("HttpEndpoint", Str(enum=("disabled", "enabled", NO_PREFERENCE))),
            Field("InstanceMetadataTags", Str(enum=("disabled", "enabled", NO_PREFERENCE))),
            DRY_RUN,
        ),
        refused={
            "HttpTokensEnforced": "enforcing IMDSv2 at launch is not implemented; RoleCall's"
            " default is HttpTokens required",
        },
    ),
)
def modify_instance_metadata_defaults(context: Context, params: dict[str, Any]) -> Result:
    hop_limit = params.get("HttpPutResponseHopLimit")
    if hop_limit is not None and not (
        hop_limit == NO_HOP_LIMIT_PREFERENCE or MIN_HOP_LIMIT <= hop_limit <= MAX_HOP_LIMIT
    ):
        raise InvalidParameterValue(
            f"Value ({hop_limit}) for parameter HttpPutResponseHopLimit is invalid."
            f" It must be an integer from {MIN_HOP_LIMIT} to {MAX_HOP_LIMIT}, or"
            f" {NO_HOP_LIMIT_PREFERENCE} for no preference."
        )
    check_dry_run(params)
    current = context.tx.get_metadata_defaults(context.account_id) or MetadataDefaults(
        context.account_id, None, None, None, None, now_text(context)
    )

    def chosen(name: str, kept: Any, none: object = NO_PREFERENCE) -> Any:
        if name not in params:
            return kept
        return None if params[name] == none else params[name]

    context.tx.put_metadata_defaults(
        MetadataDefaults(
            account_id=context.account_id,
            http_tokens=chosen("HttpTokens", current.http_tokens),
            hop_limit=chosen("HttpPutResponseHopLimit", current.hop_limit, NO_HOP_LIMIT_PREFERENCE),
            http_endpoint=chosen("HttpEndpoint", current.http_endpoint),
            metadata_tags=chosen("InstanceMetadataTags", current.metadata_tags),
            changed=now_text(context),
        )
    )
    return {"return": True}


@registry.action("ec2", "GetInstanceMetadataDefaults", Struct((DRY_RUN,), refused={}))
def get_instance_metadata_defaults(context: Context, params: dict[str, Any]) -> Result:
    check_dry_run(params)
    defaults = context.tx.get_metadata_defaults(context.account_id)
    fields = _set_fields(defaults) if defaults is not None else {}
    wire = {key[0].lower() + key[1:]: value for key, value in fields.items()}
    # No declarative policies in RoleCall: the account manages its defaults.
    return {"accountLevel": {**wire, "managedBy": "account"}}
