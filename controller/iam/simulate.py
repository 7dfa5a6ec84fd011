"""The IAM policy simulator: the policy engine's answer, for operators and for other services."""

from __future__ import annotations

from typing import Any

from controller.actions import Context, Result
from controller.authorize import parsed
from controller.errors import InvalidInput, NoSuchEntity
from controller.iam import registry
from controller.iam.common import DEFAULT_MAX_ITEMS, decode_marker, page_fields
from controller.iam.shapes import ARN, MARKER, MAX_ITEMS, POLICY_DOCUMENT, Field, struct
from controller.policy.document import PolicyDocument, PolicyKind
from controller.policy.evaluate import Decision, RequestContext, evaluate
from controller.query import ListOf, Str, Struct

_DECISIONS = {"Allow": "allowed", "Deny": "explicitDeny", "ImplicitDeny": "implicitDeny"}
CONTEXT_ENTRY = Struct(
    (
        Field("ContextKeyName", Str(5, 256)),
        Field("ContextKeyValues", ListOf(Str())),
        Field(
            "ContextKeyType",
            Str(
                enum=tuple(
                    f"{kind}{suffix}"
                    for kind in ("string", "numeric", "boolean", "ip", "binary", "date")
                    for suffix in ("", "List")
                )
            ),
        ),
    )
)
COMMON = (
    Field("ActionNames", ListOf(Str(3, 128)), required=True),
    Field("ResourceArns", ListOf(Str(1, 2048))),
    Field("ResourcePolicy", POLICY_DOCUMENT),
    Field("ResourceOwner", Str(1, 2048)),
    Field("CallerArn", Str(1, 2048)),
    Field("ContextEntries", ListOf(CONTEXT_ENTRY)),
    Field("ResourceHandlingOption", Str(1, 64)),
    Field("MaxItems", MAX_ITEMS),
    Field("Marker", MARKER),
)
POLICY_INPUT = ListOf(POLICY_DOCUMENT)


def _input_policies(params: dict[str, Any]) -> list[tuple[str, PolicyDocument, str]]:
    return [
        (f"PolicyInputList.{index}", parsed(text, PolicyKind.IDENTITY), "none")
        for index, text in enumerate(params.get("PolicyInputList", []), start=1)
    ]


def _source_policies(context: Context, arn: str) -> list[tuple[str, PolicyDocument, str]]:
    prefix = f"arn:aws:iam::{context.account_id}:"
    kind, _, rest = arn.removeprefix(prefix).partition("/")
    name = rest.rpartition("/")[2]
    if arn.startswith(prefix) and kind == "role":
        role = context.tx.get_role(context.account_id, name)
        if role is not None and role.arn == arn:
            role_policies = context.tx.list_role_policies(role.role_id)
            return [(p.name, parsed(p.document), "role") for p in role_policies]
    if arn.startswith(prefix) and kind == "user":
        user = context.tx.get_user(context.account_id, name)
        if user is not None and user.arn == arn:
            user_policies = context.tx.list_user_policies(user.user_id)
            return [(p.name, parsed(p.document), "user") for p in user_policies]
    raise NoSuchEntity(f"PolicySourceArn {arn} is not a user or role of this account.")


def _context_keys(params: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    keys: dict[str, tuple[str, ...]] = {}
    for entry in params.get("ContextEntries", []):
        if "ContextKeyName" not in entry:
            raise InvalidInput("Every ContextEntries member needs a ContextKeyName.")
        keys[entry["ContextKeyName"]] = tuple(entry.get("ContextKeyValues", []))
    return keys


def _simulate(
    context: Context,
    params: dict[str, Any],
    policies: list[tuple[str, PolicyDocument, str]],
    principal_arn: str,
) -> Result:
    if params.get("ResourcePolicy") is not None:
        raise InvalidInput("ResourcePolicy is not supported by RoleCall's simulator.")
    kinds = {name: kind for name, _, kind in policies}
    documents = [(name, document) for name, document, _ in policies]
    keys = _context_keys(params)
    results = []
    for action in params["ActionNames"]:
        for resource in params.get("ResourceArns") or ["*"]:
            request = RequestContext(action, resource, principal_arn, context.account_id, keys)
            decision = evaluate(documents, request)
            results.append(_result(action, resource, decision, kinds))
    start = int(decode_marker(params.get("Marker")) or 0)
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    shown = results[start : start + limit]
    more = start + limit < len(results)
    return {
        "EvaluationResults": shown,
        **page_fields(shown, more, str(start + limit) if more else None),
    }


def _result(
    action: str, resource: str, decision: Decision, kinds: dict[str, str]
) -> dict[str, Any]:
    matched = []
    if decision.policy_name is not None:
        matched.append(
            {
                "SourcePolicyId": decision.policy_name,
                "SourcePolicyType": kinds.get(decision.policy_name, "none"),
            }
        )
    return {
        "EvalActionName": action,
        "EvalResourceName": resource,
        "EvalDecision": _DECISIONS[decision.effect],
        "MatchedStatements": matched,
        "MissingContextValues": list(decision.missing_keys),
    }


def _policy_source(context: Context, params: dict[str, Any]) -> str:
    return str(params["PolicySourceArn"])


@registry.action(
    "iam",
    "SimulatePrincipalPolicy",
    struct(
        Field("PolicySourceArn", ARN, required=True),
        Field("PolicyInputList", POLICY_INPUT),
        *COMMON,
    ),
    resource=_policy_source,
)
def simulate_principal_policy(context: Context, params: dict[str, Any]) -> Result:
    source = params["PolicySourceArn"]
    policies = _source_policies(context, source) + _input_policies(params)
    return _simulate(context, params, policies, params.get("CallerArn", source))


@registry.action(
    "iam",
    "SimulateCustomPolicy",
    struct(Field("PolicyInputList", POLICY_INPUT, required=True), *COMMON),
)
def simulate_custom_policy(context: Context, params: dict[str, Any]) -> Result:
    principal = params.get("CallerArn", context.caller.arn)
    return _simulate(context, params, _input_policies(params), principal)
