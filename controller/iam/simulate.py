"""The IAM policy simulator: the policy engine's answer, for operators and for other services.

Every list it takes is bounded, and only the requested page of ActionNames x ResourceArns is
evaluated, within a work budget (issue 16, item 4): a request's cost never grows with the product
of its lists, whose results were all kept in memory before.
"""

from __future__ import annotations

from typing import Any

from controller.actions import Context, Result
from controller.authorize import PolicySource, boundary_source, identity_sources
from controller.errors import InvalidInput, NoSuchEntity
from controller.iam import registry
from controller.iam.common import DEFAULT_MAX_ITEMS, decode_marker, encode_marker
from controller.iam.shapes import ARN, MARKER, MAX_ITEMS, POLICY_DOCUMENT, Field, struct
from controller.permissions import Policies
from controller.policy.document import PolicyKind, parse_policy
from controller.policy.evaluate import Decision, RequestContext, evaluate, evaluate_layers
from controller.query import ListOf, Str, Struct
from controller.store.records import Group, Role, User

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
#: Each member is refused over 131,072 characters by the parser, before any is parsed as JSON.
POLICY_INPUT = ListOf(POLICY_DOCUMENT, cap=MAX_POLICY_INPUTS)
COMMON = (
    Field("PermissionsBoundaryPolicyInputList", POLICY_INPUT),
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

_BAD_MARKER = "Invalid Marker: it was not returned by a previous call of this action."


def _input_policies(params: dict[str, Any], parameter: str) -> list[PolicySource]:
    """The request's own documents: parsed for this request alone, outside the cache of stored
    documents (see controller.authorize.ParsedDocuments). Their SourcePolicyType is "none"."""
    return [
        PolicySource(
            "none", f"{parameter}.{index}", parse_policy(text, PolicyKind.IDENTITY), len(text)
        )
        for index, text in enumerate(params.get(parameter, []), start=1)
    ]


def _input_boundary(params: dict[str, Any]) -> PolicySource | None:
    """PermissionsBoundaryPolicyInputList: one boundary, as an entity has at most one."""
    given = _input_policies(params, "PermissionsBoundaryPolicyInputList")
    if len(given) > 1:
        raise InvalidInput("PermissionsBoundaryPolicyInputList takes one permissions boundary.")
    return given[0] if given else None


def _source(context: Context, arn: str) -> tuple[list[PolicySource], PolicySource | None]:
    """The identity policies and the permissions boundary of the user, group or role ``arn``
    names, read as a request of that identity would read them (`controller.authorize`)."""
    prefix = f"arn:aws:iam::{context.account_id}:"
    kind, _, rest = arn.removeprefix(prefix).partition("/")
    name = rest.rpartition("/")[2]
    entity: User | Role | Group | None = None
    if arn.startswith(prefix) and kind == "role":
        entity = context.tx.get_role(context.account_id, name)
    elif arn.startswith(prefix) and kind == "user":
        entity = context.tx.get_user(context.account_id, name)
    elif arn.startswith(prefix) and kind == "group":
        entity = context.tx.get_group(context.account_id, name)
    if entity is not None and entity.arn == arn:
        boundary = None
        if not isinstance(entity, Group):
            boundary = boundary_source(context.tx, entity.permissions_boundary)
        return identity_sources(context.tx, entity), boundary
    raise NoSuchEntity(f"PolicySourceArn {arn} is not a user, group or role of this account.")


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
    policies: list[PolicySource],
    boundary: PolicySource | None,
    principal_arn: str,
) -> Result:
    if params.get("ResourcePolicy") is not None:
        raise InvalidInput("ResourcePolicy is not supported by RoleCall's simulator.")
    # Decisions name a policy by its place here: names alone may repeat (a user's inline
    # policy and its group's of the same name).
    sources = {f"identity {index}": source for index, source in enumerate(policies)}
    identity: Policies = tuple((key, source.document) for key, source in sources.items())
    bounded: Policies | None = None
    if boundary is not None:
        sources["boundary"] = boundary
        bounded = (("boundary", boundary.document),)
    keys = _context_keys(params)
    actions = params["ActionNames"]
    resources = params.get("ResourceArns") or ["*"]
    total = len(actions) * len(resources)
    start = _start(params.get("Marker"), total)
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    widest = max((len(values) for values in keys.values()), default=0)
    characters = sum(source.characters for source in sources.values())
    work = (characters + 1) * (widest + 1)
    # Only this page is evaluated: pair number i is action i // len(resources) on resource
    # i % len(resources), in the order AWS lists them.
    end = min(total, start + limit, start + max(1, PAGE_WORK_BUDGET // work))
    results = []
    for index in range(start, end):
        action, resource = actions[index // len(resources)], resources[index % len(resources)]
        request = RequestContext(action, resource, principal_arn, context.account_id, keys)
        if bounded is None:
            results.append(_result(action, resource, evaluate(identity, request), sources))
            continue
        decision = evaluate_layers((identity, bounded), request)
        result = _result(action, resource, decision, sources)
        result["PermissionsBoundaryDecisionDetail"] = {
            "AllowedByPermissionsBoundary": _boundary_allows(decision, bounded, request)
        }
        results.append(result)
    more = end < total
    page: dict[str, Any] = {"EvaluationResults": results, "IsTruncated": more}
    if more:
        page["Marker"] = encode_marker(str(end))
    return page


def _boundary_allows(decision: Decision, boundary: Policies, request: RequestContext) -> bool:
    """Whether the boundary alone allows the request (AllowedByPermissionsBoundary)."""
    if decision.effect == "Allow":
        return True
    if decision.layer == 1:  # the boundary is what denied
        return False
    return evaluate(boundary, request).effect == "Allow"


def _result(
    action: str, resource: str, decision: Decision, sources: dict[str, PolicySource]
) -> dict[str, Any]:
    matched = []
    source = sources.get(decision.policy_name or "")
    if source is not None:
        matched.append({"SourcePolicyId": _policy_id(source), "SourcePolicyType": source.kind})
    return {
        "EvalActionName": action,
        "EvalResourceName": resource,
        "EvalDecision": _DECISIONS[decision.effect],
        "MatchedStatements": matched,
        "MissingContextValues": list(decision.missing_keys),
    }


def _policy_id(source: PolicySource) -> str:
    """SourcePolicyId: an inline or input policy's name, a managed policy's name."""
    if source.kind in ("user-managed", "aws-managed"):
        return source.name.rpartition("/")[2]
    return source.name


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
    policies, boundary = _source(context, source)
    policies += _input_policies(params, "PolicyInputList")
    # A boundary given as input replaces the entity's own, as in IAM.
    boundary = _input_boundary(params) or boundary
    return _simulate(context, params, policies, boundary, params.get("CallerArn", source))


@registry.action(
    "iam",
    "SimulateCustomPolicy",
    struct(Field("PolicyInputList", POLICY_INPUT, required=True), *COMMON),
)
def simulate_custom_policy(context: Context, params: dict[str, Any]) -> Result:
    principal = params.get("CallerArn", context.caller.arn)
    policies = _input_policies(params, "PolicyInputList")
    return _simulate(context, params, policies, _input_boundary(params), principal)
