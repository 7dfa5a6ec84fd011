"""The IAM policy simulator: the policy engine's answer, for operators and for other services.

Every list it takes is bounded, and only the requested page of ActionNames x ResourceArns is
evaluated, within a work budget (issue 16, item 4): a request's cost never grows with the product
of its lists, whose results were all kept in memory before.
"""

from __future__ import annotations

from typing import Any

from controller.actions import Context, Result
from controller.authorize import parsed
from controller.errors import InvalidInput, NoSuchEntity
from controller.iam import registry
from controller.iam.common import DEFAULT_MAX_ITEMS, decode_marker, encode_marker
from controller.iam.shapes import ARN, MARKER, MAX_ITEMS, POLICY_DOCUMENT, Field, struct
from controller.policy.document import PolicyDocument, PolicyKind, parse_policy
from controller.policy.evaluate import Decision, RequestContext, evaluate
from controller.query import ListOf, Str, Struct

_DECISIONS = {"Allow": "allowed", "Deny": "explicitDeny", "ImplicitDeny": "implicitDeny"}

# RoleCall's bounds where botocore's model sets none (AWS documents none either). The lists are
# refused over them with ValidationError before any member is read (controller/query.py).
MAX_ACTION_NAMES = 1000
MAX_RESOURCE_ARNS = 1000
#: Each document may hold up to 131,072 characters (the model's policyDocumentType).
MAX_POLICY_INPUTS = 10
MAX_CONTEXT_ENTRIES = 100
MAX_CONTEXT_KEY_VALUES = 100
#: How much matching one page may do: evaluations x (characters of policy + 1) x (the most values
#: of a context key + 1). A page stops early when the next evaluation would exceed it (AWS may
#: return fewer than MaxItems results with IsTruncated); it always holds at least one result.
PAGE_WORK_BUDGET = 50_000_000

CONTEXT_ENTRY = Struct(
    (
        Field("ContextKeyName", Str(5, 256)),
        Field("ContextKeyValues", ListOf(Str(), cap=MAX_CONTEXT_KEY_VALUES)),
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
    Field("ActionNames", ListOf(Str(3, 128), cap=MAX_ACTION_NAMES), required=True),
    Field("ResourceArns", ListOf(Str(1, 2048), cap=MAX_RESOURCE_ARNS)),
    Field("ResourcePolicy", POLICY_DOCUMENT),
    Field("ResourceOwner", Str(1, 2048)),
    Field("CallerArn", Str(1, 2048)),
    Field("ContextEntries", ListOf(CONTEXT_ENTRY, cap=MAX_CONTEXT_ENTRIES)),
    Field("ResourceHandlingOption", Str(1, 64)),
    Field("MaxItems", MAX_ITEMS),
    Field("Marker", MARKER),
)
#: Each member is refused over 131,072 characters by the parser, before any is parsed as JSON.
POLICY_INPUT = ListOf(POLICY_DOCUMENT, cap=MAX_POLICY_INPUTS)

#: ``(name, document, kind, characters)``: kind is SourcePolicyType; characters weigh its work.
_Policy = tuple[str, PolicyDocument, str, int]
_BAD_MARKER = "Invalid Marker: it was not returned by a previous call of this action."


def _input_policies(params: dict[str, Any]) -> list[_Policy]:
    """The request's own documents: parsed for this request alone, outside the cache of stored
    documents (see controller.authorize.ParsedDocuments)."""
    return [
        (f"PolicyInputList.{index}", parse_policy(text, PolicyKind.IDENTITY), "none", len(text))
        for index, text in enumerate(params.get("PolicyInputList", []), start=1)
    ]


def _source_policies(context: Context, arn: str) -> list[_Policy]:
    prefix = f"arn:aws:iam::{context.account_id}:"
    kind, _, rest = arn.removeprefix(prefix).partition("/")
    name = rest.rpartition("/")[2]
    if arn.startswith(prefix) and kind == "role":
        role = context.tx.get_role(context.account_id, name)
        if role is not None and role.arn == arn:
            role_policies = context.tx.list_role_policies(role.role_id)
            return [(p.name, parsed(p.document), "role", len(p.document)) for p in role_policies]
    if arn.startswith(prefix) and kind == "user":
        user = context.tx.get_user(context.account_id, name)
        if user is not None and user.arn == arn:
            user_policies = context.tx.list_user_policies(user.user_id)
            return [(p.name, parsed(p.document), "user", len(p.document)) for p in user_policies]
    raise NoSuchEntity(f"PolicySourceArn {arn} is not a user or role of this account.")


def _context_keys(params: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    keys: dict[str, tuple[str, ...]] = {}
    for entry in params.get("ContextEntries", []):
        if "ContextKeyName" not in entry:
            raise InvalidInput("Every ContextEntries member needs a ContextKeyName.")
        keys[entry["ContextKeyName"]] = tuple(entry.get("ContextKeyValues", []))
    return keys


def _start(marker: str | None, total: int) -> int:
    """The index of the first pair of a page; a marker this action did not hand out is refused."""
    text = decode_marker(marker)
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not 0 < int(text) < total:
        raise InvalidInput(_BAD_MARKER)
    return int(text)


def _simulate(
    context: Context,
    params: dict[str, Any],
    policies: list[_Policy],
    principal_arn: str,
) -> Result:
    if params.get("ResourcePolicy") is not None:
        raise InvalidInput("ResourcePolicy is not supported by RoleCall's simulator.")
    kinds = {name: kind for name, _, kind, _ in policies}
    documents = [(name, document) for name, document, _, _ in policies]
    keys = _context_keys(params)
    actions = params["ActionNames"]
    resources = params.get("ResourceArns") or ["*"]
    total = len(actions) * len(resources)
    start = _start(params.get("Marker"), total)
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    widest = max((len(values) for values in keys.values()), default=0)
    work = (sum(size for *_, size in policies) + 1) * (widest + 1)
    # Only this page is evaluated: pair number i is action i // len(resources) on resource
    # i % len(resources), in the order AWS lists them.
    end = min(total, start + limit, start + max(1, PAGE_WORK_BUDGET // work))
    results = []
    for index in range(start, end):
        action, resource = actions[index // len(resources)], resources[index % len(resources)]
        request = RequestContext(action, resource, principal_arn, context.account_id, keys)
        results.append(_result(action, resource, evaluate(documents, request), kinds))
    more = end < total
    page: dict[str, Any] = {"EvaluationResults": results, "IsTruncated": more}
    if more:
        page["Marker"] = encode_marker(str(end))
    return page


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
