"""``iam-role*`` and ``iam-instanceprofile*``: their flags, the calls they make, what they print,
and agreement with botocore on how those calls are serialized and their answers parsed."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import botocore.session
import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from botocore.validate import validate_parameters

from controller.tools import instance_profiles, instances, roles
from controller.tools.command import Tool, main
from controller.tools.policies import service_trust_policy, statement_policy
from controller.tools.xmldata import members, parse_error, parse_xml, result_data
from tests.unit.test_tools_client import (
    ENV,
    FakeService,
    Outcome,
    Reply,
    iam_error,
    iam_reply,
    run_tool,
)

ACCOUNT = "123456789012"
S3STAR = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":["*"]}]}'
)
EC2_TRUST = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow",'
    '"Principal":{"Service":["ec2.amazonaws.com"]},"Action":["sts:AssumeRole"]}]}'
)
ALL_TOOLS = (*roles.TOOLS, *instance_profiles.TOOLS, *instances.TOOLS)
IAM_MODEL = botocore.session.get_session().get_service_model("iam")


def role_xml(name: str = "s3access", path: str = "/", trust: str = EC2_TRUST) -> str:
    return (
        f"<Path>{path}</Path><RoleName>{name}</RoleName><RoleId>AROA{name.upper():0<17}</RoleId>"
        f"<Arn>arn:aws:iam::{ACCOUNT}:role{path}{name}</Arn>"
        "<CreateDate>2024-05-01T12:00:00Z</CreateDate>"
        f"<AssumeRolePolicyDocument>{quote(trust, safe='')}</AssumeRolePolicyDocument>"
        "<MaxSessionDuration>3600</MaxSessionDuration>"
    )


def profile_xml(name: str = "s3access", role_names: Sequence[str] = ()) -> str:
    members = "".join(f"<member>{role_xml(role)}</member>" for role in role_names)
    return (
        f"<Path>/</Path><InstanceProfileName>{name}</InstanceProfileName>"
        f"<InstanceProfileId>AIPA{name.upper():0<17}</InstanceProfileId>"
        f"<Arn>arn:aws:iam::{ACCOUNT}:instance-profile/{name}</Arn>"
        f"<CreateDate>2024-05-01T12:00:00Z</CreateDate><Roles>{members}</Roles>"
    )


def page(list_name: str, members: Sequence[str], marker: str | None = None) -> str:
    truncated = f"<IsTruncated>true</IsTruncated><Marker>{marker}</Marker>" if marker else ""
    items = "".join(f"<member>{member}</member>" for member in members)
    return f"<{list_name}>{items}</{list_name}>{truncated or '<IsTruncated>false</IsTruncated>'}"


def calls(outcome: Outcome) -> list[dict[str, str]]:
    """Each request sent, as its parameters without Version."""
    service = outcome.service
    return [
        {name: value for name, value in service.params(index) if name != "Version"}
        for index in range(len(service.sent))
    ]


def ok(tool: Tool, argv: Sequence[str], *replies: Reply) -> Outcome:
    outcome = run_tool(tool, argv, *replies)
    assert (outcome.code, outcome.stderr) == (0, ""), outcome.stderr
    assert outcome.service.replies == [], "the tool made fewer calls than expected"
    return outcome


def usage_error(tool: Tool, argv: Sequence[str]) -> str:
    outcome = run_tool(tool, argv)
    assert outcome.code == 2
    assert outcome.service.sent == []
    assert outcome.stderr.count("\n") == 1 and outcome.stderr.startswith(f"{tool.name}: ")
    return outcome.stderr


# Policy documents


def test_statement_policy_is_the_original_one_statement_document() -> None:
    assert statement_policy("Allow", ["s3:*"], ["*"]) == S3STAR


def test_statement_policy_keeps_every_action_and_resource_in_order() -> None:
    document = json.loads(
        statement_policy("deny", ["s3:GetObject", "s3:PutObject"], ["arn:aws:s3:::a/*", "*"])
    )
    assert document["Statement"] == [
        {
            "Effect": "Deny",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": ["arn:aws:s3:::a/*", "*"],
        }
    ]


def test_service_trust_policy_lets_the_service_assume_the_role() -> None:
    assert service_trust_policy("ec2.amazonaws.com") == EC2_TRUST


# iam-roleaddpolicy


def test_roleaddpolicy_puts_the_policy_and_with_o_prints_it_exactly() -> None:
    argv = ["-r", "s3access", "-e", "Allow", "-a", "s3:*", "-c", "*", "-p", "s3star", "-o"]
    outcome = ok(roles.ROLE_ADD_POLICY, argv, iam_reply("PutRolePolicy"))
    assert outcome.stdout == S3STAR + "\n"
    assert calls(outcome) == [
        {
            "Action": "PutRolePolicy",
            "RoleName": "s3access",
            "PolicyName": "s3star",
            "PolicyDocument": S3STAR,
        }
    ]


def test_roleaddpolicy_without_o_prints_nothing() -> None:
    argv = ["-r", "s3access", "-e", "Allow", "-a", "s3:*", "-c", "*", "-p", "s3star"]
    assert ok(roles.ROLE_ADD_POLICY, argv, iam_reply("PutRolePolicy")).stdout == ""


def test_roleaddpolicy_takes_repeated_actions_and_resources_and_any_case_of_effect() -> None:
    argv = ["-r", "r", "-p", "p", "-e", "DENY", "-a", "s3:Get*", "--action", "s3:List*"]
    argv += ["-c", "arn:aws:s3:::b", "--resource", "arn:aws:s3:::b/*", "-o"]
    outcome = ok(roles.ROLE_ADD_POLICY, argv, iam_reply("PutRolePolicy"))
    assert json.loads(outcome.stdout)["Statement"][0] == {
        "Effect": "Deny",
        "Action": ["s3:Get*", "s3:List*"],
        "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
    }


def test_roleaddpolicy_refuses_an_effect_other_than_allow_or_deny() -> None:
    message = usage_error(
        roles.ROLE_ADD_POLICY, ["-r", "r", "-p", "p", "-e", "Maybe", "-a", "x", "-c", "*"]
    )
    assert "effect must be Allow or Deny, not 'Maybe'" in message


@pytest.mark.parametrize("missing", ["-a", "-c", "-e", "-p", "-r"])
def test_roleaddpolicy_requires_role_name_effect_action_and_resource(missing: str) -> None:
    flags = {"-r": "r", "-p": "p", "-e": "Allow", "-a": "s3:*", "-c": "*"}
    argv = [part for flag, value in flags.items() if flag != missing for part in (flag, value)]
    assert "required" in usage_error(roles.ROLE_ADD_POLICY, argv)


# iam-rolecreate


def test_rolecreate_with_a_service_trusts_that_service_and_prints_nothing() -> None:
    argv = ["-r", "s3access", "-s", "ec2.amazonaws.com"]
    outcome = ok(roles.ROLE_CREATE, argv, iam_reply("CreateRole", f"<Role>{role_xml()}</Role>"))
    assert outcome.stdout == ""
    assert calls(outcome) == [
        {"Action": "CreateRole", "RoleName": "s3access", "AssumeRolePolicyDocument": EC2_TRUST}
    ]


def test_rolecreate_reads_the_trust_policy_file_and_sends_the_path(tmp_path: Path) -> None:
    trust = '{"Version":"2012-10-17","Statement":[]}'
    (tmp_path / "trust.json").write_text(trust)
    outcome = ok(
        roles.ROLE_CREATE,
        ["-r", "app", "-f", str(tmp_path / "trust.json"), "-p", "/app/"],
        iam_reply("CreateRole", f"<Role>{role_xml('app', '/app/', trust)}</Role>"),
    )
    assert calls(outcome)[0] == {
        "Action": "CreateRole",
        "RoleName": "app",
        "AssumeRolePolicyDocument": trust,
        "Path": "/app/",
    }


def test_rolecreate_verbose_prints_the_arn_id_and_trust_policy() -> None:
    argv = ["-r", "s3access", "-s", "ec2.amazonaws.com", "-v"]
    outcome = ok(roles.ROLE_CREATE, argv, iam_reply("CreateRole", f"<Role>{role_xml()}</Role>"))
    assert outcome.stdout.splitlines() == [
        f"arn:aws:iam::{ACCOUNT}:role/s3access",
        "AROAS3ACCESS000000000",
        EC2_TRUST,
    ]


@pytest.mark.parametrize(
    "argv",
    [["-r", "x"], ["-r", "x", "-s", "ec2.amazonaws.com", "-f", "t.json"], ["-s", "svc"]],
    ids=["neither-s-nor-f", "both-s-and-f", "no-role"],
)
def test_rolecreate_needs_a_role_and_exactly_one_of_service_or_policy_file(
    argv: list[str],
) -> None:
    usage_error(roles.ROLE_CREATE, argv)


def test_rolecreate_with_a_missing_policy_file_fails_before_calling() -> None:
    outcome = run_tool(roles.ROLE_CREATE, ["-r", "x", "-f", "/nonexistent/trust.json"])
    assert outcome.code == 1
    assert outcome.stderr == (
        "iam-rolecreate: cannot read /nonexistent/trust.json: No such file or directory\n"
    )
    assert outcome.service.sent == []


# iam-roledel


def test_roledel_deletes_only_the_role() -> None:
    outcome = ok(roles.ROLE_DELETE, ["-r", "s3access"], iam_reply("DeleteRole"))
    assert calls(outcome) == [{"Action": "DeleteRole", "RoleName": "s3access"}]


def test_roledel_recursive_deletes_policies_and_memberships_first_reading_every_page() -> None:
    outcome = ok(
        roles.ROLE_DELETE,
        ["-r", "s3access", "-c"],
        iam_reply("ListRolePolicies", page("PolicyNames", ["s3star"], marker="m1")),
        iam_reply("ListRolePolicies", page("PolicyNames", ["logs"])),
        iam_reply("ListInstanceProfilesForRole", page("InstanceProfiles", [profile_xml()])),
        iam_reply("DeleteRolePolicy"),
        iam_reply("DeleteRolePolicy"),
        iam_reply("RemoveRoleFromInstanceProfile"),
        iam_reply("DeleteRole"),
    )
    role = {"RoleName": "s3access"}
    assert calls(outcome) == [
        {"Action": "ListRolePolicies", **role},
        {"Action": "ListRolePolicies", **role, "Marker": "m1"},
        {"Action": "ListInstanceProfilesForRole", **role},
        {"Action": "DeleteRolePolicy", **role, "PolicyName": "s3star"},
        {"Action": "DeleteRolePolicy", **role, "PolicyName": "logs"},
        {"Action": "RemoveRoleFromInstanceProfile", "InstanceProfileName": "s3access", **role},
        {"Action": "DeleteRole", **role},
    ]


def test_roledel_stops_at_the_first_service_error_with_one_line() -> None:
    conflict = iam_error("DeleteConflict", "Cannot delete entity, must delete policies first.", 409)
    outcome = run_tool(roles.ROLE_DELETE, ["-r", "s3access"], conflict)
    assert outcome.code == 1
    assert outcome.stderr == (
        "iam-roledel: DeleteConflict: Cannot delete entity, must delete policies first.\n"
    )


# Listing and reading roles


def test_rolelistbypath_prints_one_arn_a_line_across_pages() -> None:
    outcome = ok(
        roles.ROLE_LIST_BY_PATH,
        ["-p", "/app/"],
        iam_reply("ListRoles", page("Roles", [role_xml("a", "/app/")], marker="next")),
        iam_reply("ListRoles", page("Roles", [role_xml("b", "/app/x/")])),
    )
    assert outcome.stdout == (
        f"arn:aws:iam::{ACCOUNT}:role/app/a\narn:aws:iam::{ACCOUNT}:role/app/x/b\n"
    )
    assert calls(outcome) == [
        {"Action": "ListRoles", "PathPrefix": "/app/"},
        {"Action": "ListRoles", "PathPrefix": "/app/", "Marker": "next"},
    ]


def test_rolelistbypath_with_no_roles_prints_nothing() -> None:
    outcome = ok(roles.ROLE_LIST_BY_PATH, [], iam_reply("ListRoles", page("Roles", [])))
    assert outcome.stdout == ""
    assert calls(outcome) == [{"Action": "ListRoles"}]


def test_rolegetattributes_prints_arn_id_and_the_decoded_trust_policy() -> None:
    outcome = ok(
        roles.ROLE_GET_ATTRIBUTES,
        ["-r", "s3access"],
        iam_reply("GetRole", f"<Role>{role_xml()}</Role>"),
    )
    assert outcome.stdout.splitlines() == [
        f"arn:aws:iam::{ACCOUNT}:role/s3access",
        "AROAS3ACCESS000000000",
        EC2_TRUST,
    ]


# Trust and inline policies


def test_roleupdateassumepolicy_sends_the_new_trust_and_with_o_prints_it() -> None:
    argv = ["-r", "s3access", "-s", "ec2.amazonaws.com", "-o"]
    outcome = ok(roles.ROLE_UPDATE_ASSUME_POLICY, argv, iam_reply("UpdateAssumeRolePolicy"))
    assert outcome.stdout == EC2_TRUST + "\n"
    assert calls(outcome) == [
        {"Action": "UpdateAssumeRolePolicy", "RoleName": "s3access", "PolicyDocument": EC2_TRUST}
    ]


@pytest.mark.parametrize("source", ["-o", "-f"])
def test_roleuploadpolicy_puts_the_policy_from_the_command_line_or_a_file(
    source: str, tmp_path: Path
) -> None:
    (tmp_path / "s3star.json").write_text(S3STAR)
    value = S3STAR if source == "-o" else str(tmp_path / "s3star.json")
    outcome = ok(
        roles.ROLE_UPLOAD_POLICY,
        ["-r", "s3access", "-p", "s3star", source, value],
        iam_reply("PutRolePolicy"),
    )
    assert outcome.stdout == ""
    assert calls(outcome) == [
        {
            "Action": "PutRolePolicy",
            "RoleName": "s3access",
            "PolicyName": "s3star",
            "PolicyDocument": S3STAR,
        }
    ]


def test_roleuploadpolicy_needs_exactly_one_source() -> None:
    usage_error(roles.ROLE_UPLOAD_POLICY, ["-r", "r", "-p", "p"])
    usage_error(roles.ROLE_UPLOAD_POLICY, ["-r", "r", "-p", "p", "-o", "{}", "-f", "x"])


def test_rolelistpolicies_prints_names_and_with_v_each_policy_after_its_name() -> None:
    names = iam_reply("ListRolePolicies", page("PolicyNames", ["s3star", "logs"]))
    plain = ok(roles.ROLE_LIST_POLICIES, ["-r", "s3access"], names)
    assert plain.stdout == "s3star\nlogs\n"
    verbose = ok(
        roles.ROLE_LIST_POLICIES,
        ["-r", "s3access", "-v"],
        names,
        iam_reply("GetRolePolicy", f"<PolicyDocument>{quote(S3STAR, safe='')}</PolicyDocument>"),
        iam_reply("GetRolePolicy", f"<PolicyDocument>{quote('{}', safe='')}</PolicyDocument>"),
    )
    assert verbose.stdout == f"s3star\n{S3STAR}\nlogs\n{{}}\n"
    assert calls(verbose)[1] == {
        "Action": "GetRolePolicy",
        "RoleName": "s3access",
        "PolicyName": "s3star",
    }


def test_rolelistpolicies_with_p_prints_only_that_policy() -> None:
    outcome = ok(
        roles.ROLE_LIST_POLICIES,
        ["-r", "s3access", "-p", "s3star"],
        iam_reply("GetRolePolicy", f"<PolicyDocument>{quote(S3STAR, safe='')}</PolicyDocument>"),
    )
    assert outcome.stdout == S3STAR + "\n"


def test_roledelpolicy_deletes_the_named_policy() -> None:
    outcome = ok(
        roles.ROLE_DELETE_POLICY, ["-r", "s3access", "-p", "s3star"], iam_reply("DeleteRolePolicy")
    )
    assert calls(outcome) == [
        {"Action": "DeleteRolePolicy", "RoleName": "s3access", "PolicyName": "s3star"}
    ]


# Instance profiles


def test_instanceprofilecreate_creates_adds_the_role_and_prints_the_arn() -> None:
    outcome = ok(
        instance_profiles.PROFILE_CREATE,
        ["-s", "s3access", "-r", "s3access"],
        iam_reply("CreateInstanceProfile", f"<InstanceProfile>{profile_xml()}</InstanceProfile>"),
        iam_reply("AddRoleToInstanceProfile"),
    )
    assert outcome.stdout == f"arn:aws:iam::{ACCOUNT}:instance-profile/s3access\n"
    assert calls(outcome) == [
        {"Action": "CreateInstanceProfile", "InstanceProfileName": "s3access"},
        {
            "Action": "AddRoleToInstanceProfile",
            "InstanceProfileName": "s3access",
            "RoleName": "s3access",
        },
    ]


def test_instanceprofilecreate_without_a_role_only_creates() -> None:
    outcome = ok(
        instance_profiles.PROFILE_CREATE,
        ["-s", "web", "-p", "/app/"],
        iam_reply(
            "CreateInstanceProfile", f"<InstanceProfile>{profile_xml('web')}</InstanceProfile>"
        ),
    )
    assert calls(outcome) == [
        {"Action": "CreateInstanceProfile", "InstanceProfileName": "web", "Path": "/app/"}
    ]


def test_instanceprofilecreate_says_the_profile_exists_when_adding_the_role_fails() -> None:
    outcome = run_tool(
        instance_profiles.PROFILE_CREATE,
        ["-s", "s3access", "-r", "nosuch"],
        iam_reply("CreateInstanceProfile", f"<InstanceProfile>{profile_xml()}</InstanceProfile>"),
        iam_error("NoSuchEntity", "The role with name nosuch cannot be found.", 404),
    )
    assert (outcome.code, outcome.stdout) == (1, "")
    assert outcome.stderr == (
        "iam-instanceprofilecreate: NoSuchEntity: The role with name nosuch cannot be found. "
        "(instance profile s3access was created without a role; add one with "
        "iam-instanceprofileaddrole)\n"
    )


def test_instanceprofiledel_recursive_removes_its_role_first() -> None:
    outcome = ok(
        instance_profiles.PROFILE_DELETE,
        ["-s", "s3access", "-c"],
        iam_reply(
            "GetInstanceProfile",
            f"<InstanceProfile>{profile_xml(role_names=['s3access'])}</InstanceProfile>",
        ),
        iam_reply("RemoveRoleFromInstanceProfile"),
        iam_reply("DeleteInstanceProfile"),
    )
    profile = {"InstanceProfileName": "s3access"}
    assert calls(outcome) == [
        {"Action": "GetInstanceProfile", **profile},
        {"Action": "RemoveRoleFromInstanceProfile", **profile, "RoleName": "s3access"},
        {"Action": "DeleteInstanceProfile", **profile},
    ]


def test_instanceprofiledel_alone_deletes_only_the_profile() -> None:
    outcome = ok(
        instance_profiles.PROFILE_DELETE, ["-s", "web"], iam_reply("DeleteInstanceProfile")
    )
    assert calls(outcome) == [{"Action": "DeleteInstanceProfile", "InstanceProfileName": "web"}]


def test_instanceprofilegetattributes_prints_arn_id_then_the_role_arn() -> None:
    outcome = ok(
        instance_profiles.PROFILE_GET_ATTRIBUTES,
        ["-s", "s3access"],
        iam_reply(
            "GetInstanceProfile",
            f"<InstanceProfile>{profile_xml(role_names=['s3access'])}</InstanceProfile>",
        ),
    )
    assert outcome.stdout.splitlines() == [
        f"arn:aws:iam::{ACCOUNT}:instance-profile/s3access",
        "AIPAS3ACCESS000000000",
        f"arn:aws:iam::{ACCOUNT}:role/s3access",
    ]


@pytest.mark.parametrize(
    ("tool", "action"),
    [
        (instance_profiles.PROFILE_ADD_ROLE, "AddRoleToInstanceProfile"),
        (instance_profiles.PROFILE_REMOVE_ROLE, "RemoveRoleFromInstanceProfile"),
    ],
)
def test_addrole_and_removerole_name_the_profile_and_the_role(tool: Tool, action: str) -> None:
    outcome = ok(tool, ["-s", "web", "-r", "s3access"], iam_reply(action))
    assert calls(outcome) == [
        {"Action": action, "InstanceProfileName": "web", "RoleName": "s3access"}
    ]
    assert outcome.stdout == ""


@pytest.mark.parametrize(
    ("tool", "argv", "action", "params"),
    [
        (
            instance_profiles.PROFILE_LIST_BY_PATH,
            ["-p", "/app/"],
            "ListInstanceProfiles",
            {"PathPrefix": "/app/"},
        ),
        (
            instance_profiles.PROFILE_LIST_FOR_ROLE,
            ["-r", "s3access"],
            "ListInstanceProfilesForRole",
            {"RoleName": "s3access"},
        ),
    ],
)
def test_profile_lists_print_one_arn_a_line_across_pages(
    tool: Tool, argv: list[str], action: str, params: dict[str, str]
) -> None:
    outcome = ok(
        tool,
        argv,
        iam_reply(action, page("InstanceProfiles", [profile_xml("a")], marker="m")),
        iam_reply(action, page("InstanceProfiles", [profile_xml("b")])),
    )
    assert outcome.stdout == (
        f"arn:aws:iam::{ACCOUNT}:instance-profile/a\narn:aws:iam::{ACCOUNT}:instance-profile/b\n"
    )
    assert calls(outcome) == [
        {"Action": action, **params},
        {"Action": action, **params, "Marker": "m"},
    ]


# Every tool


@pytest.mark.parametrize("tool", ALL_TOOLS, ids=lambda tool: tool.name)
def test_every_tool_has_help_with_its_name_and_an_example(
    tool: Tool, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run_tool(tool, ["--help"])
    shown = capsys.readouterr().out
    assert outcome.code == 0
    assert shown.startswith(f"usage: {tool.name} ")
    assert "example:" in shown and "--debug" in shown and "-U URL, --url URL" in shown


@pytest.mark.parametrize("tool", ALL_TOOLS, ids=lambda tool: tool.name)
def test_every_tool_refuses_an_unknown_flag_with_one_line(tool: Tool) -> None:
    valid = {case_tool.name: argv for case_tool, argv in SERIALIZER_CASES}
    valid.update({"euca-run-instances": ["emi-1"], "euca-describe-instances": []})
    valid["euca-terminate-instances"] = ["i-1"]
    valid["euca-modify-instance-placement"] = ["i-1", "--host-id", "node2"]
    outcome = run_tool(tool, [*valid[tool.name], "--no-such-flag"])
    assert outcome.code == 2
    assert outcome.stderr == (
        f"{tool.name}: unrecognized arguments: --no-such-flag (see {tool.name} --help)\n"
    )


def test_a_service_error_is_one_line_with_the_aws_code_and_nothing_on_stdout() -> None:
    outcome = run_tool(
        roles.ROLE_GET_ATTRIBUTES,
        ["-r", "x"],
        iam_error("NoSuchEntity", "The role with name x cannot be found.", 404),
    )
    assert (outcome.code, outcome.stdout) == (1, "")
    assert outcome.stderr == (
        "iam-rolegetattributes: NoSuchEntity: The role with name x cannot be found.\n"
    )


# Agreement with botocore


SERIALIZER_CASES = [
    (roles.ROLE_CREATE, ["-r", "s3access", "-s", "ec2.amazonaws.com", "-p", "/a/"]),
    (roles.ROLE_DELETE, ["-r", "s3access"]),
    (roles.ROLE_LIST_BY_PATH, ["-p", "/a b/"]),
    (roles.ROLE_GET_ATTRIBUTES, ["-r", "s3access"]),
    (roles.ROLE_UPDATE_ASSUME_POLICY, ["-r", "s3access", "-s", "ec2.amazonaws.com"]),
    (roles.ROLE_UPLOAD_POLICY, ["-r", "s3access", "-p", "s3star", "-o", S3STAR]),
    (roles.ROLE_ADD_POLICY, ["-r", "s3access", "-e", "Allow", "-a", "s3:*", "-c", "*", "-p", "p"]),
    (roles.ROLE_LIST_POLICIES, ["-r", "s3access", "-p", "s3star"]),
    (roles.ROLE_DELETE_POLICY, ["-r", "s3access", "-p", "s3star"]),
    (instance_profiles.PROFILE_CREATE, ["-s", "s3access", "-p", "/a/"]),
    (instance_profiles.PROFILE_DELETE, ["-s", "s3access"]),
    (instance_profiles.PROFILE_LIST_BY_PATH, ["-p", "/a/"]),
    (instance_profiles.PROFILE_GET_ATTRIBUTES, ["-s", "s3access"]),
    (instance_profiles.PROFILE_ADD_ROLE, ["-s", "s3access", "-r", "s3access"]),
    (instance_profiles.PROFILE_REMOVE_ROLE, ["-s", "s3access", "-r", "s3access"]),
    (instance_profiles.PROFILE_LIST_FOR_ROLE, ["-r", "s3access"]),
]


def _reply_for(action: str) -> bytes:
    results = {
        "CreateRole": f"<Role>{role_xml()}</Role>",
        "GetRole": f"<Role>{role_xml()}</Role>",
        "ListRoles": page("Roles", []),
        "GetRolePolicy": "<PolicyDocument>%7B%7D</PolicyDocument>",
        "CreateInstanceProfile": f"<InstanceProfile>{profile_xml()}</InstanceProfile>",
        "GetInstanceProfile": f"<InstanceProfile>{profile_xml()}</InstanceProfile>",
        "ListInstanceProfiles": page("InstanceProfiles", []),
        "ListInstanceProfilesForRole": page("InstanceProfiles", []),
    }
    return iam_reply(action, results.get(action, ""))


@pytest.mark.parametrize(
    ("tool", "argv"), SERIALIZER_CASES, ids=lambda case: getattr(case, "name", "")
)
def test_our_requests_are_the_ones_botocore_serializes_for_the_same_call(
    tool: Tool, argv: list[str]
) -> None:
    # Answer whatever the tool asks with a well-formed reply of that action.
    action = {
        "iam-rolecreate": "CreateRole",
        "iam-roledel": "DeleteRole",
        "iam-rolelistbypath": "ListRoles",
        "iam-rolegetattributes": "GetRole",
        "iam-roleupdateassumepolicy": "UpdateAssumeRolePolicy",
        "iam-roleuploadpolicy": "PutRolePolicy",
        "iam-roleaddpolicy": "PutRolePolicy",
        "iam-rolelistpolicies": "GetRolePolicy",
        "iam-roledelpolicy": "DeleteRolePolicy",
        "iam-instanceprofilecreate": "CreateInstanceProfile",
        "iam-instanceprofiledel": "DeleteInstanceProfile",
        "iam-instanceprofilelistbypath": "ListInstanceProfiles",
        "iam-instanceprofilegetattributes": "GetInstanceProfile",
        "iam-instanceprofileaddrole": "AddRoleToInstanceProfile",
        "iam-instanceprofileremoverole": "RemoveRoleFromInstanceProfile",
        "iam-instanceprofilelistforrole": "ListInstanceProfilesForRole",
    }[tool.name]
    outcome = ok(tool, argv, _reply_for(action))
    ours = dict(outcome.service.params(0))
    operation = IAM_MODEL.operation_model(ours["Action"])
    arguments = {name: value for name, value in ours.items() if name not in ("Action", "Version")}
    validate_parameters(arguments, operation.input_shape)  # names known, required ones present
    theirs = create_serializer("query").serialize_to_request(arguments, operation)["body"]
    assert ours == theirs


PARSER_CASES = [
    ("GetRole", f"<Role>{role_xml()}</Role>"),
    ("ListRoles", page("Roles", [role_xml("a"), role_xml("b", "/x/")], marker="m")),
    ("GetInstanceProfile", f"<InstanceProfile>{profile_xml(role_names=['r'])}</InstanceProfile>"),
    ("ListInstanceProfilesForRole", page("InstanceProfiles", [profile_xml()])),
    ("ListRolePolicies", page("PolicyNames", ["s3star", "logs"])),
    ("GetRolePolicy", f"<RoleName>r</RoleName><PolicyName>p</PolicyName>"
     f"<PolicyDocument>{quote(S3STAR, safe='')}</PolicyDocument>"),
]  # fmt: skip


def _same(ours: object, theirs: object) -> bool:
    """Our data (all text) holds what botocore parsed, compared as text."""
    if isinstance(theirs, dict):
        return isinstance(ours, dict) and all(
            _same(ours.get(key), value) for key, value in theirs.items()
        )
    if isinstance(theirs, list):
        listed = members(ours)
        return len(listed) == len(theirs) and all(map(_same, listed, theirs))
    if isinstance(theirs, bool):
        return ours == str(theirs).lower()
    if hasattr(theirs, "isoformat"):
        return ours == theirs.strftime("%Y-%m-%dT%H:%M:%SZ")
    return ours == str(theirs)


@pytest.mark.parametrize(("action", "result"), PARSER_CASES, ids=[case[0] for case in PARSER_CASES])
def test_botocore_parses_our_canned_answers_as_we_do(action: str, result: str) -> None:
    body = iam_reply(action, result)
    shape = IAM_MODEL.operation_model(action).output_shape
    theirs = create_parser("query").parse({"body": body, "headers": {}, "status_code": 200}, shape)
    theirs.pop("ResponseMetadata")
    root = parse_xml(body)
    assert root is not None
    ours = result_data(root, "iam")
    assert theirs and _same(ours, theirs), (ours, theirs)


def test_botocore_reads_an_iam_error_as_we_do() -> None:
    status, body = iam_error("NoSuchEntity", "The role with name x cannot be found.", 404)
    shape = IAM_MODEL.operation_model("GetRole").output_shape
    theirs = create_parser("query").parse(
        {"body": body, "headers": {}, "status_code": status}, shape
    )
    assert parse_error(body) == (theirs["Error"]["Code"], theirs["Error"]["Message"])


def test_a_mistyped_flag_is_named_rather_than_the_required_flag_it_hides() -> None:
    message = usage_error(roles.ROLE_CREATE, ["-r", "x", "--servce", "ec2.amazonaws.com"])
    assert message == (
        "iam-rolecreate: unrecognized arguments: --servce (see iam-rolecreate --help)\n"
    )


def test_long_flags_are_not_abbreviated() -> None:
    message = usage_error(roles.ROLE_CREATE, ["-r", "x", "-s", "ec2.amazonaws.com", "--verb"])
    assert "unrecognized arguments: --verb" in message


def test_a_policy_file_ending_in_a_newline_prints_without_a_blank_line() -> None:
    document = quote(S3STAR + "\n", safe="")
    outcome = ok(
        roles.ROLE_LIST_POLICIES,
        ["-r", "s3access", "-v"],
        iam_reply("ListRolePolicies", page("PolicyNames", ["s3star"])),
        iam_reply("GetRolePolicy", f"<PolicyDocument>{document}</PolicyDocument>"),
    )
    assert outcome.stdout == f"s3star\n{S3STAR}\n"


def test_instanceprofiledel_recursive_puts_the_role_back_if_the_profile_cannot_go() -> None:
    in_use = "Cannot delete entity, instances still use this instance profile."
    outcome = run_tool(
        instance_profiles.PROFILE_DELETE,
        ["-s", "s3access", "-c"],
        iam_reply(
            "GetInstanceProfile",
            f"<InstanceProfile>{profile_xml(role_names=['s3access'])}</InstanceProfile>",
        ),
        iam_reply("RemoveRoleFromInstanceProfile"),
        iam_error("DeleteConflict", in_use, 409),
        iam_reply("AddRoleToInstanceProfile"),
    )
    assert outcome.code == 1
    assert outcome.stderr == (
        f"iam-instanceprofiledel: DeleteConflict: {in_use} (its role s3access was put back)\n"
    )
    assert calls(outcome)[-1] == {
        "Action": "AddRoleToInstanceProfile",
        "InstanceProfileName": "s3access",
        "RoleName": "s3access",
    }


def test_instanceprofiledel_recursive_says_so_when_the_role_cannot_be_put_back() -> None:
    outcome = run_tool(
        instance_profiles.PROFILE_DELETE,
        ["-s", "s3access", "-c"],
        iam_reply(
            "GetInstanceProfile",
            f"<InstanceProfile>{profile_xml(role_names=['s3access'])}</InstanceProfile>",
        ),
        iam_reply("RemoveRoleFromInstanceProfile"),
        iam_error("DeleteConflict", "In use.", 409),
        iam_error("NoSuchEntity", "The role with name s3access cannot be found.", 404),
    )
    assert outcome.stderr == (
        "iam-instanceprofiledel: DeleteConflict: In use. (its role s3access was taken out and "
        "could not be put back: NoSuchEntity: The role with name s3access cannot be found.)\n"
    )


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError


def test_a_closed_pipe_on_stdout_ends_the_tool_quietly() -> None:
    service = FakeService(iam_reply("ListRoles", page("Roles", [role_xml()])))
    stderr = io.StringIO()
    code = main(
        roles.ROLE_LIST_BY_PATH,
        [],
        env=ENV,
        stdout=_ClosedPipe(),
        stderr=stderr,
        session=service.session(),
    )
    assert (code, stderr.getvalue()) == (141, "")
