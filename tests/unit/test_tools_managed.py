"""``iam-policy*`` and the attach, detach and list tools of managed policies: their flags, the
calls they make, what they print, a policy NAME turned into the caller's account's ARN, and
agreement with botocore on how those calls are serialized and their answers parsed."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import botocore.session
import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from botocore.validate import validate_parameters

from controller.tools import managed, roles
from controller.tools.command import Tool
from controller.tools.xmldata import parse_xml, result_data
from tests.unit.test_tools_client import iam_error, iam_reply, run_tool
from tests.unit.test_tools_iam import ACCOUNT, _same, calls, ok, page, usage_error

ARN = f"arn:aws:iam::{ACCOUNT}:policy/s3read"
S3READ = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}'
)
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
IAM_MODEL = botocore.session.get_session().get_service_model("iam")
STS_MODEL = botocore.session.get_session().get_service_model("sts")


def sts_identity(account: str = ACCOUNT, partition: str = "aws") -> bytes:
    return (
        f'<GetCallerIdentityResponse xmlns="{STS_NS}"><GetCallerIdentityResult>'
        f"<Arn>arn:{partition}:iam::{account}:user/alice</Arn><UserId>AIDAALICE</UserId>"
        f"<Account>{account}</Account></GetCallerIdentityResult><ResponseMetadata>"
        "<RequestId>0b9e4b3a-2f0e-4d4e-9e2c-EXAMPLE</RequestId></ResponseMetadata>"
        "</GetCallerIdentityResponse>"
    ).encode()


def policy_xml(name: str = "s3read", path: str = "/", default: str = "v1") -> str:
    return (
        f"<PolicyName>{name}</PolicyName><PolicyId>ANPA{name.upper():0<17}</PolicyId>"
        f"<Arn>arn:aws:iam::{ACCOUNT}:policy{path}{name}</Arn><Path>{path}</Path>"
        f"<DefaultVersionId>{default}</DefaultVersionId><AttachmentCount>0</AttachmentCount>"
        "<PermissionsBoundaryUsageCount>0</PermissionsBoundaryUsageCount>"
        "<IsAttachable>true</IsAttachable><CreateDate>2026-12-07T20:00:00Z</CreateDate>"
        "<UpdateDate>2026-12-07T20:00:00Z</UpdateDate>"
    )


def version_xml(version: str, default: bool, document: str | None = None) -> str:
    text = f"<Document>{quote(document, safe='')}</Document>" if document is not None else ""
    return (
        f"{text}<VersionId>{version}</VersionId>"
        f"<IsDefaultVersion>{'true' if default else 'false'}</IsDefaultVersion>"
        "<CreateDate>2026-12-07T20:00:00Z</CreateDate>"
    )


def entities_page(
    groups: tuple[str, ...] = (),
    users: tuple[str, ...] = (),
    roles: tuple[str, ...] = (),
    marker: str | None = None,
) -> str:
    def listed(key: str, word: str, prefix: str, names: tuple[str, ...]) -> str:
        items = "".join(
            f"<member><{word}Name>{name}</{word}Name><{word}Id>{prefix}{name.upper()}</{word}Id>"
            "</member>"
            for name in names
        )
        return f"<{key}>{items}</{key}>"

    truncated = f"<IsTruncated>true</IsTruncated><Marker>{marker}</Marker>" if marker else ""
    return (
        listed("PolicyGroups", "Group", "AGPA", groups)
        + listed("PolicyUsers", "User", "AIDA", users)
        + listed("PolicyRoles", "Role", "AROA", roles)
        + (truncated or "<IsTruncated>false</IsTruncated>")
    )


def attached_xml(name: str = "s3read") -> str:
    arn = f"arn:aws:iam::{ACCOUNT}:policy/{name}"
    return f"<PolicyName>{name}</PolicyName><PolicyArn>{arn}</PolicyArn>"


# iam-policycreate


def test_policycreate_sends_name_document_path_and_description_and_prints_the_arn() -> None:
    outcome = ok(
        managed.POLICY_CREATE,
        ["-p", "s3read", "-o", S3READ, "--path", "/team/", "-d", "read S3"],
        iam_reply("CreatePolicy", f"<Policy>{policy_xml(path='/team/')}</Policy>"),
    )
    assert outcome.stdout == f"arn:aws:iam::{ACCOUNT}:policy/team/s3read\n"
    assert calls(outcome) == [
        {
            "Action": "CreatePolicy",
            "PolicyName": "s3read",
            "PolicyDocument": S3READ,
            "Path": "/team/",
            "Description": "read S3",
        }
    ]


def test_policycreate_verbose_prints_the_arn_id_and_document() -> None:
    outcome = ok(
        managed.POLICY_CREATE,
        ["-p", "s3read", "-o", S3READ + "\n", "-v"],
        iam_reply("CreatePolicy", f"<Policy>{policy_xml()}</Policy>"),
    )
    assert outcome.stdout.splitlines() == [ARN, "ANPAS3READ00000000000", S3READ]


@pytest.mark.parametrize(
    "source", ["-f", "--policy-file", "-o", "--policy-content", "--policy-document"]
)
def test_policycreate_takes_the_document_from_a_file_or_the_command_line(
    source: str, tmp_path: Path
) -> None:
    (tmp_path / "s3read.json").write_text(S3READ)
    value = S3READ if source in ("-o", "--policy-content") else str(tmp_path / "s3read.json")
    outcome = ok(
        managed.POLICY_CREATE,
        ["-p", "s3read", source, value],
        iam_reply("CreatePolicy", f"<Policy>{policy_xml()}</Policy>"),
    )
    assert calls(outcome)[0]["PolicyDocument"] == S3READ


def test_policy_document_flag_takes_json_text_as_the_first_tools_did() -> None:
    outcome = ok(
        managed.POLICY_CREATE,
        ["-p", "s3read", "--policy-document", f"  {S3READ}"],
        iam_reply("CreatePolicy", f"<Policy>{policy_xml()}</Policy>"),
    )
    assert calls(outcome)[0]["PolicyDocument"] == f"  {S3READ}"


def test_policycreate_needs_exactly_one_document_source() -> None:
    assert "one of the arguments -f/--policy-file" in usage_error(
        managed.POLICY_CREATE, ["-p", "s3read"]
    )
    message = usage_error(managed.POLICY_CREATE, ["-p", "s3read", "-o", "{}", "-f", "x.json"])
    assert "not allowed with argument" in message


@pytest.mark.parametrize(
    ("flag", "shown"), [("-f", "-f/--policy-file"), ("--policy-document", "--policy-document")]
)
def test_an_unreadable_policy_file_is_named_with_its_flag_before_any_call(
    flag: str, shown: str
) -> None:
    outcome = run_tool(managed.POLICY_CREATE, ["-p", "s3read", flag, "/nonexistent/p.json"])
    assert (outcome.code, outcome.service.sent) == (1, [])
    assert outcome.stderr == (
        f"iam-policycreate: {shown}: cannot read /nonexistent/p.json: No such file or directory\n"
    )


def test_a_service_error_is_printed_as_the_other_tools_print_it() -> None:
    outcome = run_tool(
        managed.POLICY_CREATE,
        ["-p", "s3read", "-o", S3READ],
        iam_error("EntityAlreadyExists", "A policy called s3read already exists.", 409),
    )
    assert (outcome.code, outcome.stdout) == (1, "")
    assert outcome.stderr == (
        "iam-policycreate: EntityAlreadyExists: A policy called s3read already exists.\n"
    )


# A policy named by NAME instead of ARN


def test_a_policy_name_becomes_the_callers_account_arn() -> None:
    outcome = ok(
        managed.ROLE_ATTACH_POLICY,
        ["-r", "s3access", "-a", "s3read"],
        sts_identity(),
        iam_reply("AttachRolePolicy"),
    )
    assert calls(outcome) == [
        {"Action": "GetCallerIdentity"},
        {"Action": "AttachRolePolicy", "RoleName": "s3access", "PolicyArn": ARN},
    ]
    # The identity is asked of STS: signed for sts, with STS's API version.
    first = outcome.service.sent[0]
    assert "/us-east-1/sts/aws4_request" in str(first.headers["Authorization"])
    assert dict(outcome.service.params(0))["Version"] == "2011-06-15"


@pytest.mark.parametrize("name", ["team/s3read", "/team/s3read"])
def test_a_path_and_name_become_the_arn_with_that_path(name: str) -> None:
    outcome = ok(
        managed.POLICY_GET_ATTRIBUTES,
        ["-a", name],
        sts_identity(account="210987654321", partition="aws-cn"),
        iam_reply("GetPolicy", f"<Policy>{policy_xml(path='/team/')}</Policy>"),
        iam_reply(
            "GetPolicyVersion", f"<PolicyVersion>{version_xml('v1', True, S3READ)}</PolicyVersion>"
        ),
    )
    assert calls(outcome)[1]["PolicyArn"] == "arn:aws-cn:iam::210987654321:policy/team/s3read"


def test_an_arn_is_used_as_it_is_without_asking_who_the_caller_is() -> None:
    aws_managed = "arn:aws:iam::aws:policy/ReadOnlyAccess"
    outcome = ok(
        managed.USER_ATTACH_POLICY,
        ["-u", "alice", "-a", aws_managed],
        iam_reply("AttachUserPolicy"),
    )
    assert calls(outcome) == [
        {"Action": "AttachUserPolicy", "UserName": "alice", "PolicyArn": aws_managed}
    ]


@pytest.mark.parametrize(
    "value", ["arn:aws:iam::123456789012:role/s3access", "s3 read", "team/", "", "a" * 129]
)
def test_something_neither_a_policy_arn_nor_a_name_is_refused_naming_the_flag(value: str) -> None:
    message = usage_error(managed.POLICY_DELETE, ["-a", value])
    assert "argument -a/--policy-arn: " in message and "is neither a policy ARN" in message


def test_when_sts_refuses_the_error_is_its_one_line() -> None:
    outcome = run_tool(
        managed.ROLE_DETACH_POLICY,
        ["-r", "s3access", "-a", "s3read"],
        iam_error(
            "InvalidClientTokenId", "The security token included in the request is invalid.", 403
        ),
    )
    assert outcome.code == 1
    assert outcome.stderr == (
        "iam-roledetachpolicy: InvalidClientTokenId: "
        "The security token included in the request is invalid.\n"
    )


# iam-policydel


def test_policydel_deletes_only_the_policy() -> None:
    outcome = ok(managed.POLICY_DELETE, ["-a", ARN], iam_reply("DeletePolicy"))
    assert calls(outcome) == [{"Action": "DeletePolicy", "PolicyArn": ARN}]


def test_policydel_recursive_deletes_other_versions_and_detaches_everywhere_first() -> None:
    outcome = ok(
        managed.POLICY_DELETE,
        ["-a", ARN, "-r"],
        iam_reply("ListPolicyVersions", page("Versions", [version_xml("v3", False)], marker="m")),
        iam_reply(
            "ListPolicyVersions",
            page("Versions", [version_xml("v2", True), version_xml("v1", False)]),
        ),
        iam_reply("ListEntitiesForPolicy", entities_page(groups=("dev",), marker="e")),
        iam_reply("ListEntitiesForPolicy", entities_page(users=("alice",), roles=("s3access",))),
        iam_reply("DeletePolicyVersion"),
        iam_reply("DeletePolicyVersion"),
        iam_reply("DetachGroupPolicy"),
        iam_reply("DetachUserPolicy"),
        iam_reply("DetachRolePolicy"),
        iam_reply("DeletePolicy"),
    )
    policy = {"PolicyArn": ARN}
    usage = {"PolicyUsageFilter": "PermissionsPolicy"}
    assert calls(outcome) == [
        {"Action": "ListPolicyVersions", **policy},
        {"Action": "ListPolicyVersions", **policy, "Marker": "m"},
        {"Action": "ListEntitiesForPolicy", **policy, **usage},
        {"Action": "ListEntitiesForPolicy", **policy, **usage, "Marker": "e"},
        {"Action": "DeletePolicyVersion", **policy, "VersionId": "v3"},
        {"Action": "DeletePolicyVersion", **policy, "VersionId": "v1"},
        {"Action": "DetachGroupPolicy", "GroupName": "dev", **policy},
        {"Action": "DetachUserPolicy", "UserName": "alice", **policy},
        {"Action": "DetachRolePolicy", "RoleName": "s3access", **policy},
        {"Action": "DeletePolicy", **policy},
    ]


def test_policydel_recursive_attaches_again_when_the_policy_cannot_go() -> None:
    refused = "User: alice is not authorized to perform: iam:DeletePolicy"
    outcome = run_tool(
        managed.POLICY_DELETE,
        ["-a", ARN, "-r"],
        iam_reply("ListPolicyVersions", page("Versions", [version_xml("v1", True)])),
        iam_reply("ListEntitiesForPolicy", entities_page(roles=("s3access",))),
        iam_reply("DetachRolePolicy"),
        iam_error("AccessDenied", refused, 403),
        iam_reply("AttachRolePolicy"),
    )
    assert outcome.code == 1
    assert outcome.stderr == (
        f"iam-policydel: AccessDenied: {refused} (it was attached again to role s3access)\n"
    )
    assert calls(outcome)[-1] == {
        "Action": "AttachRolePolicy",
        "RoleName": "s3access",
        "PolicyArn": ARN,
    }


def test_policydel_recursive_says_so_when_it_cannot_attach_again() -> None:
    outcome = run_tool(
        managed.POLICY_DELETE,
        ["-a", ARN, "-r"],
        iam_reply("ListPolicyVersions", page("Versions", [version_xml("v1", True)])),
        iam_reply("ListEntitiesForPolicy", entities_page(users=("alice",))),
        iam_reply("DetachUserPolicy"),
        iam_error("DeleteConflict", "In use.", 409),
        iam_error("NoSuchEntity", "The user with name alice cannot be found.", 404),
    )
    assert outcome.stderr == (
        "iam-policydel: DeleteConflict: In use. (it was detached from user alice and could not "
        "be attached again: NoSuchEntity: The user with name alice cannot be found.)\n"
    )


# iam-policylistbypath


def test_policylistbypath_sends_scope_only_attached_and_path_and_reads_every_page() -> None:
    outcome = ok(
        managed.POLICY_LIST_BY_PATH,
        ["-p", "/team/", "--scope", "local", "--only-attached"],
        iam_reply("ListPolicies", page("Policies", [policy_xml("a", "/team/")], marker="m")),
        iam_reply("ListPolicies", page("Policies", [policy_xml("b", "/team/x/")])),
    )
    assert outcome.stdout == (
        f"arn:aws:iam::{ACCOUNT}:policy/team/a\narn:aws:iam::{ACCOUNT}:policy/team/x/b\n"
    )
    params = {"PathPrefix": "/team/", "Scope": "Local", "OnlyAttached": "true"}
    assert calls(outcome) == [
        {"Action": "ListPolicies", **params},
        {"Action": "ListPolicies", **params, "Marker": "m"},
    ]


def test_policylistbypath_alone_sends_no_filter() -> None:
    outcome = ok(managed.POLICY_LIST_BY_PATH, [], iam_reply("ListPolicies", page("Policies", [])))
    assert (outcome.stdout, calls(outcome)) == ("", [{"Action": "ListPolicies"}])


def test_policylistbypath_refuses_an_unknown_scope_naming_the_flag() -> None:
    message = usage_error(managed.POLICY_LIST_BY_PATH, ["--scope", "Mine"])
    assert "argument --scope: the scope is All, AWS or Local, not 'Mine'" in message


# iam-policygetattributes


def test_policygetattributes_prints_arn_id_default_version_and_its_document() -> None:
    outcome = ok(
        managed.POLICY_GET_ATTRIBUTES,
        ["-a", ARN],
        iam_reply("GetPolicy", f"<Policy>{policy_xml(default='v2')}</Policy>"),
        iam_reply(
            "GetPolicyVersion",
            f"<PolicyVersion>{version_xml('v2', True, S3READ + chr(10))}</PolicyVersion>",
        ),
    )
    assert outcome.stdout.splitlines() == [ARN, "ANPAS3READ00000000000", "v2", S3READ]
    assert calls(outcome)[1] == {"Action": "GetPolicyVersion", "PolicyArn": ARN, "VersionId": "v2"}


# Versions


def test_policyversioncreate_sends_set_as_default_and_prints_the_new_version() -> None:
    outcome = ok(
        managed.POLICY_VERSION_CREATE,
        ["-a", ARN, "-o", S3READ, "--set-as-default"],
        iam_reply(
            "CreatePolicyVersion", f"<PolicyVersion>{version_xml('v2', True)}</PolicyVersion>"
        ),
    )
    assert outcome.stdout == "v2\n"
    assert calls(outcome) == [
        {
            "Action": "CreatePolicyVersion",
            "PolicyArn": ARN,
            "PolicyDocument": S3READ,
            "SetAsDefault": "true",
        }
    ]


def test_policyversioncreate_without_set_as_default_leaves_it_out() -> None:
    outcome = ok(
        managed.POLICY_VERSION_CREATE,
        ["-a", ARN, "-o", S3READ],
        iam_reply(
            "CreatePolicyVersion", f"<PolicyVersion>{version_xml('v2', False)}</PolicyVersion>"
        ),
    )
    assert "SetAsDefault" not in calls(outcome)[0]


def test_policyversionlist_prints_id_default_and_date_tab_separated_across_pages() -> None:
    outcome = ok(
        managed.POLICY_VERSION_LIST,
        ["-a", ARN],
        iam_reply("ListPolicyVersions", page("Versions", [version_xml("v2", True)], marker="m")),
        iam_reply("ListPolicyVersions", page("Versions", [version_xml("v1", False)])),
    )
    assert outcome.stdout == "v2\ttrue\t2026-12-07T20:00:00Z\nv1\tfalse\t2026-12-07T20:00:00Z\n"


@pytest.mark.parametrize(
    ("tool", "action"),
    [
        (managed.POLICY_VERSION_DELETE, "DeletePolicyVersion"),
        (managed.POLICY_SET_DEFAULT_VERSION, "SetDefaultPolicyVersion"),
    ],
)
@pytest.mark.parametrize("given", ["v2", "2"])
def test_version_tools_name_the_policy_and_the_version(tool: Tool, action: str, given: str) -> None:
    outcome = ok(tool, ["-a", ARN, "-v", given], iam_reply(action))
    assert (outcome.stdout, calls(outcome)) == (
        "",
        [{"Action": action, "PolicyArn": ARN, "VersionId": "v2"}],
    )


@pytest.mark.parametrize("version", ["v0", "version2", "latest", "v"])
def test_a_version_that_is_not_vN_is_refused_naming_the_flag(version: str) -> None:
    message = usage_error(managed.POLICY_VERSION_DELETE, ["-a", ARN, "-v", version])
    assert "argument -v/--version-id: a version is v1, v2… (as iam-policyversionlist " in message
    assert f"prints), not {version!r}" in message


# iam-policylistentities


def test_policylistentities_prints_kind_name_and_id_of_each_across_pages() -> None:
    outcome = ok(
        managed.POLICY_LIST_ENTITIES,
        ["-a", ARN, "--usage", "permissionsboundary"],
        iam_reply("ListEntitiesForPolicy", entities_page(groups=("dev",), marker="m")),
        iam_reply("ListEntitiesForPolicy", entities_page(users=("alice",), roles=("s3access",))),
    )
    assert outcome.stdout.splitlines() == [
        "GROUP\tdev\tAGPADEV",
        "USER\talice\tAIDAALICE",
        "ROLE\ts3access\tAROAS3ACCESS",
    ]
    assert calls(outcome)[0] == {
        "Action": "ListEntitiesForPolicy",
        "PolicyArn": ARN,
        "PolicyUsageFilter": "PermissionsBoundary",
    }


# Attaching to roles, users and groups

ENTITIES = [
    ("role", "-r", "--role-name", "Role", "RoleName"),
    ("user", "-u", "--user-name", "User", "UserName"),
    ("group", "-g", "--group-name", "Group", "GroupName"),
]
TOOLS_BY_NAME = {tool.name: tool for tool in managed.TOOLS}


@pytest.mark.parametrize(("kind", "flag", "long_flag", "word", "parameter"), ENTITIES)
@pytest.mark.parametrize("verb", ["attach", "detach"])
def test_attach_and_detach_name_the_entity_and_the_policy(
    kind: str, flag: str, long_flag: str, word: str, parameter: str, verb: str
) -> None:
    tool = TOOLS_BY_NAME[f"iam-{kind}{verb}policy"]
    action = f"{verb.title()}{word}Policy"
    for entity_flag in (flag, long_flag):
        outcome = ok(tool, [entity_flag, "web", "-a", ARN], iam_reply(action))
        assert (outcome.stdout, calls(outcome)) == (
            "",
            [{"Action": action, parameter: "web", "PolicyArn": ARN}],
        )


@pytest.mark.parametrize(("kind", "flag", "long_flag", "word", "parameter"), ENTITIES)
def test_listattachedpolicies_prints_one_arn_a_line_across_pages(
    kind: str, flag: str, long_flag: str, word: str, parameter: str
) -> None:
    action = f"ListAttached{word}Policies"
    outcome = ok(
        TOOLS_BY_NAME[f"iam-{kind}listattachedpolicies"],
        [flag, "web"],
        iam_reply(action, page("AttachedPolicies", [attached_xml("a")], marker="m")),
        iam_reply(action, page("AttachedPolicies", [attached_xml("b")])),
    )
    assert outcome.stdout == (f"arn:aws:iam::{ACCOUNT}:policy/a\narn:aws:iam::{ACCOUNT}:policy/b\n")
    assert calls(outcome) == [
        {"Action": action, parameter: "web"},
        {"Action": action, parameter: "web", "Marker": "m"},
    ]


def test_attach_without_the_entity_names_the_missing_flag() -> None:
    message = usage_error(managed.GROUP_ATTACH_POLICY, ["-a", ARN])
    assert "the following arguments are required: -g/--group-name" in message


# iam-roleuploadpolicy, as Euca2ools had it


@pytest.mark.parametrize("source", ["--policy-content", "--policy-document"])
def test_roleuploadpolicy_takes_euca2ools_long_flags(source: str, tmp_path: Path) -> None:
    (tmp_path / "s3read.json").write_text(S3READ)
    value = S3READ if source == "--policy-content" else str(tmp_path / "s3read.json")
    outcome = ok(
        roles.ROLE_UPLOAD_POLICY,
        ["--role-name", "s3access", "--policy-name", "s3read", source, value],
        iam_reply("PutRolePolicy"),
    )
    assert calls(outcome)[0]["PolicyDocument"] == S3READ


# Every tool

CASES = [
    (managed.POLICY_CREATE, ["-p", "s3read", "-o", S3READ, "--path", "/a/", "-d", "x"]),
    (managed.POLICY_DELETE, ["-a", ARN]),
    (managed.POLICY_LIST_BY_PATH, ["-p", "/a/", "--scope", "AWS", "--only-attached"]),
    (managed.POLICY_GET_ATTRIBUTES, ["-a", ARN]),
    (managed.POLICY_VERSION_CREATE, ["-a", ARN, "-o", S3READ, "--set-as-default"]),
    (managed.POLICY_VERSION_LIST, ["-a", ARN]),
    (managed.POLICY_VERSION_DELETE, ["-a", ARN, "-v", "v2"]),
    (managed.POLICY_SET_DEFAULT_VERSION, ["-a", ARN, "-v", "v2"]),
    (managed.POLICY_LIST_ENTITIES, ["-a", ARN, "--usage", "PermissionsPolicy"]),
    (managed.ROLE_ATTACH_POLICY, ["-r", "s3access", "-a", ARN]),
    (managed.ROLE_DETACH_POLICY, ["-r", "s3access", "-a", ARN]),
    (managed.ROLE_LIST_ATTACHED_POLICIES, ["-r", "s3access"]),
    (managed.USER_ATTACH_POLICY, ["-u", "alice", "-a", ARN]),
    (managed.USER_DETACH_POLICY, ["-u", "alice", "-a", ARN]),
    (managed.USER_LIST_ATTACHED_POLICIES, ["-u", "alice"]),
    (managed.GROUP_ATTACH_POLICY, ["-g", "dev", "-a", ARN]),
    (managed.GROUP_DETACH_POLICY, ["-g", "dev", "-a", ARN]),
    (managed.GROUP_LIST_ATTACHED_POLICIES, ["-g", "dev"]),
]
#: A well-formed answer to each action the tools' first calls make.
ANSWERS = {
    "CreatePolicy": f"<Policy>{policy_xml()}</Policy>",
    "GetPolicy": f"<Policy>{policy_xml()}</Policy>",
    "GetPolicyVersion": f"<PolicyVersion>{version_xml('v1', True, S3READ)}</PolicyVersion>",
    "CreatePolicyVersion": f"<PolicyVersion>{version_xml('v2', True)}</PolicyVersion>",
    "ListPolicies": page("Policies", [policy_xml()]),
    "ListPolicyVersions": page("Versions", [version_xml("v1", True)]),
    "ListEntitiesForPolicy": entities_page(("dev",), ("alice",), ("s3access",)),
    "ListAttachedRolePolicies": page("AttachedPolicies", [attached_xml()]),
    "ListAttachedUserPolicies": page("AttachedPolicies", [attached_xml()]),
    "ListAttachedGroupPolicies": page("AttachedPolicies", [attached_xml()]),
}


def test_every_tool_is_a_console_script_of_the_same_name() -> None:
    scripts = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    for tool in managed.TOOLS:
        function = tool.name.removeprefix("iam-")
        assert f"    {tool.name} = controller.tools.managed:{function}\n" in scripts
        assert getattr(managed, function).__doc__ == tool.summary
    assert {tool.name for tool, _ in CASES} == set(TOOLS_BY_NAME)


@pytest.mark.parametrize("tool", managed.TOOLS, ids=lambda tool: tool.name)
def test_every_tool_has_help_with_its_name_an_example_and_says_a_name_is_taken(
    tool: Tool, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run_tool(tool, ["--help"])
    shown = capsys.readouterr().out
    assert outcome.code == 0
    assert shown.startswith(f"usage: {tool.name} ")
    assert "example:" in shown and "--debug" in shown
    if "-a ARN|NAME" in shown:
        assert "account's own policies" in " ".join(shown.split())


@pytest.mark.parametrize(("tool", "argv"), CASES, ids=[case[0].name for case in CASES])
def test_every_tool_refuses_an_unknown_flag_with_one_line(tool: Tool, argv: list[str]) -> None:
    outcome = run_tool(tool, [*argv, "--no-such-flag"])
    assert outcome.code == 2
    assert outcome.stderr == (
        f"{tool.name}: unrecognized arguments: --no-such-flag (see {tool.name} --help)\n"
    )


@pytest.mark.parametrize(("tool", "argv"), CASES, ids=[case[0].name for case in CASES])
def test_our_requests_are_the_ones_botocore_serializes_for_the_same_call(
    tool: Tool, argv: list[str]
) -> None:
    # Answer the first call, then fail the next: only the first request is compared.
    outcome = run_tool(tool, argv, _first_answer(tool, argv), iam_error("Stop", "stop", 400))
    ours = dict(outcome.service.params(0))
    operation = IAM_MODEL.operation_model(ours["Action"])
    arguments: dict[str, object] = {
        name: value for name, value in ours.items() if name not in ("Action", "Version")
    }
    for name, value in list(arguments.items()):
        if operation.input_shape.members[name].type_name == "boolean":
            arguments[name] = value == "true"
    validate_parameters(arguments, operation.input_shape)  # names known, required ones present
    theirs = create_serializer("query").serialize_to_request(arguments, operation)["body"]
    assert ours == theirs


def _first_answer(tool: Tool, argv: list[str]) -> bytes:
    """A well-formed answer to the first call the tool makes."""
    action = dict(run_tool(tool, argv, iam_error("Stop", "stop", 400)).service.params(0))["Action"]
    return iam_reply(action, ANSWERS.get(action, ""))


@pytest.mark.parametrize("action", sorted(ANSWERS))
def test_botocore_parses_our_canned_answers_as_we_do(action: str) -> None:
    body = iam_reply(action, ANSWERS[action])
    shape = IAM_MODEL.operation_model(action).output_shape
    theirs = create_parser("query").parse({"body": body, "headers": {}, "status_code": 200}, shape)
    theirs.pop("ResponseMetadata")
    root = parse_xml(body)
    assert root is not None
    ours = result_data(root, "iam")
    assert theirs and _same(ours, theirs), (ours, theirs)


def test_botocore_parses_the_caller_identity_as_we_do() -> None:
    body = sts_identity()
    shape = STS_MODEL.operation_model("GetCallerIdentity").output_shape
    theirs = create_parser("query").parse({"body": body, "headers": {}, "status_code": 200}, shape)
    root = parse_xml(body)
    assert root is not None
    assert result_data(root, "sts") == {key: theirs[key] for key in ("Arn", "UserId", "Account")}
