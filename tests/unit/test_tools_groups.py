"""``iam-group*``: their flags, the calls they make, what they print, and agreement with botocore
on how those calls are serialized."""

from __future__ import annotations

import configparser
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import pytest
from botocore.serialize import create_serializer
from botocore.validate import validate_parameters

from controller.tools import groups
from controller.tools.command import Tool
from tests.unit.test_tools_client import iam_error, iam_reply, run_tool
from tests.unit.test_tools_iam import ACCOUNT, IAM_MODEL, calls, ok, page, usage_error

S3GET = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:Get*"],'
    '"Resource":["*"]}]}'
)
DEVS = {"GroupName": "devs"}


def group_xml(name: str = "devs", path: str = "/") -> str:
    return (
        f"<Path>{path}</Path><GroupName>{name}</GroupName><GroupId>AGPA{name.upper():0<17}"
        f"</GroupId><Arn>arn:aws:iam::{ACCOUNT}:group{path}{name}</Arn>"
        "<CreateDate>2024-05-01T12:00:00Z</CreateDate>"
    )


def user_xml(name: str) -> str:
    return (
        f"<Path>/</Path><UserName>{name}</UserName><UserId>AIDA{name.upper():0<17}</UserId>"
        f"<Arn>arn:aws:iam::{ACCOUNT}:user/{name}</Arn>"
        "<CreateDate>2024-05-01T12:00:00Z</CreateDate>"
    )


def get_group(users: Sequence[str], marker: str | None = None) -> bytes:
    listed = page("Users", [user_xml(user) for user in users], marker)
    return iam_reply("GetGroup", f"<Group>{group_xml()}</Group>{listed}")


# iam-groupcreate


def test_groupcreate_sends_name_and_path_and_with_v_prints_arn_and_id() -> None:
    reply = iam_reply("CreateGroup", f"<Group>{group_xml('devs', '/eng/')}</Group>")
    outcome = ok(groups.GROUP_CREATE, ["-g", "devs", "-p", "/eng/", "-v"], reply)
    assert calls(outcome) == [{"Action": "CreateGroup", "GroupName": "devs", "Path": "/eng/"}]
    assert outcome.stdout.splitlines() == [
        f"arn:aws:iam::{ACCOUNT}:group/eng/devs",
        "AGPADEVS0000000000000",
    ]


def test_groupcreate_without_v_prints_nothing() -> None:
    reply = iam_reply("CreateGroup", f"<Group>{group_xml()}</Group>")
    assert ok(groups.GROUP_CREATE, ["-g", "devs"], reply).stdout == ""


# iam-groupdel


def test_groupdel_deletes_only_the_group() -> None:
    outcome = ok(groups.GROUP_DELETE, ["-g", "devs"], iam_reply("DeleteGroup"))
    assert calls(outcome) == [{"Action": "DeleteGroup", **DEVS}]


def test_groupdel_recursive_empties_the_group_reading_every_page_first() -> None:
    attached = (
        "<AttachedPolicies><member><PolicyName>ro</PolicyName>"
        "<PolicyArn>arn:aws:iam::aws:policy/ReadOnlyAccess</PolicyArn></member>"
        "</AttachedPolicies><IsTruncated>false</IsTruncated>"
    )
    outcome = ok(
        groups.GROUP_DELETE,
        ["-g", "devs", "-r"],
        get_group(["alice"], marker="m1"),
        get_group(["bob"]),
        iam_reply("ListGroupPolicies", page("PolicyNames", ["s3get"])),
        iam_reply("ListAttachedGroupPolicies", attached),
        iam_reply("RemoveUserFromGroup"),
        iam_reply("RemoveUserFromGroup"),
        iam_reply("DeleteGroupPolicy"),
        iam_reply("DetachGroupPolicy"),
        iam_reply("DeleteGroup"),
    )
    assert calls(outcome) == [
        {"Action": "GetGroup", **DEVS},
        {"Action": "GetGroup", **DEVS, "Marker": "m1"},
        {"Action": "ListGroupPolicies", **DEVS},
        {"Action": "ListAttachedGroupPolicies", **DEVS},
        {"Action": "RemoveUserFromGroup", **DEVS, "UserName": "alice"},
        {"Action": "RemoveUserFromGroup", **DEVS, "UserName": "bob"},
        {"Action": "DeleteGroupPolicy", **DEVS, "PolicyName": "s3get"},
        {
            "Action": "DetachGroupPolicy",
            **DEVS,
            "PolicyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess",
        },
        {"Action": "DeleteGroup", **DEVS},
    ]


def test_groupdel_recursive_skips_managed_policies_where_the_service_has_none() -> None:
    outcome = ok(
        groups.GROUP_DELETE,
        ["-g", "devs", "-r"],
        get_group([]),
        iam_reply("ListGroupPolicies", page("PolicyNames", [])),
        iam_error("InvalidAction", "The action ListAttachedGroupPolicies is not valid.", 400),
        iam_reply("DeleteGroup"),
    )
    assert calls(outcome)[-1] == {"Action": "DeleteGroup", **DEVS}


def test_groupdel_stops_at_a_conflict_with_one_line() -> None:
    conflict = "Cannot delete entity, must remove users from group first."
    outcome = run_tool(
        groups.GROUP_DELETE, ["-g", "devs"], iam_error("DeleteConflict", conflict, 409)
    )
    assert (outcome.code, outcome.stderr) == (1, f"iam-groupdel: DeleteConflict: {conflict}\n")


# Listing


def test_grouplistbypath_prints_one_arn_a_line_across_pages() -> None:
    outcome = ok(
        groups.GROUP_LIST_BY_PATH,
        ["-p", "/eng/"],
        iam_reply("ListGroups", page("Groups", [group_xml("a", "/eng/")], marker="n")),
        iam_reply("ListGroups", page("Groups", [group_xml("b", "/eng/x/")])),
    )
    assert outcome.stdout == (
        f"arn:aws:iam::{ACCOUNT}:group/eng/a\narn:aws:iam::{ACCOUNT}:group/eng/x/b\n"
    )
    assert calls(outcome) == [
        {"Action": "ListGroups", "PathPrefix": "/eng/"},
        {"Action": "ListGroups", "PathPrefix": "/eng/", "Marker": "n"},
    ]


def test_grouplistusers_prints_each_users_arn_across_pages() -> None:
    outcome = ok(
        groups.GROUP_LIST_USERS,
        ["-g", "devs"],
        get_group(["alice"], marker="m"),
        get_group(["bob"]),
    )
    assert outcome.stdout == (
        f"arn:aws:iam::{ACCOUNT}:user/alice\narn:aws:iam::{ACCOUNT}:user/bob\n"
    )


@pytest.mark.parametrize(
    ("tool", "action"),
    [
        (groups.GROUP_ADD_USER, "AddUserToGroup"),
        (groups.GROUP_REMOVE_USER, "RemoveUserFromGroup"),
    ],
)
def test_adduser_and_removeuser_name_the_group_and_the_user(tool: Tool, action: str) -> None:
    outcome = ok(tool, ["-g", "devs", "-u", "alice"], iam_reply(action))
    assert calls(outcome) == [{"Action": action, **DEVS, "UserName": "alice"}]
    assert outcome.stdout == ""


# Inline policies


def test_groupaddpolicy_builds_one_statement_and_with_o_prints_it() -> None:
    argv = ["-g", "devs", "-p", "s3get", "-e", "allow", "-a", "s3:Get*", "-r", "*", "-o"]
    outcome = ok(groups.GROUP_ADD_POLICY, argv, iam_reply("PutGroupPolicy"))
    assert outcome.stdout == S3GET + "\n"
    assert calls(outcome) == [
        {"Action": "PutGroupPolicy", **DEVS, "PolicyName": "s3get", "PolicyDocument": S3GET}
    ]


def test_groupaddpolicy_takes_repeated_actions_and_resources() -> None:
    argv = ["-g", "devs", "-p", "p", "-e", "Deny", "-a", "s3:Put*", "--action", "s3:Delete*"]
    argv += ["-r", "arn:aws:s3:::b", "--resource", "arn:aws:s3:::b/*"]
    outcome = ok(groups.GROUP_ADD_POLICY, argv, iam_reply("PutGroupPolicy"))
    assert json.loads(calls(outcome)[0]["PolicyDocument"])["Statement"] == [
        {
            "Effect": "Deny",
            "Action": ["s3:Put*", "s3:Delete*"],
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
        }
    ]


def test_groupaddpolicy_names_the_flag_of_a_bad_effect() -> None:
    message = usage_error(
        groups.GROUP_ADD_POLICY, ["-g", "g", "-p", "p", "-e", "Maybe", "-a", "x", "-r", "*"]
    )
    assert "argument -e/--effect: effect must be Allow or Deny, not 'Maybe'" in message


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("-g", "-g/--group-name"),
        ("-p", "-p/--policy-name"),
        ("-e", "-e/--effect"),
        ("-a", "-a/--action"),
        ("-r", "-r/--resource"),
    ],
)
def test_groupaddpolicy_names_a_missing_flag(missing: str, named: str) -> None:
    flags = {"-g": "g", "-p": "p", "-e": "Allow", "-a": "s3:*", "-r": "*"}
    argv = [part for flag, value in flags.items() if flag != missing for part in (flag, value)]
    assert named in usage_error(groups.GROUP_ADD_POLICY, argv)


@pytest.mark.parametrize(
    "source", ["-o", "-f", "--policy-content", "--policy-document", "--policy-document FILE"]
)
def test_groupuploadpolicy_puts_the_policy_from_the_command_line_or_a_file(
    source: str, tmp_path: Path
) -> None:
    """The flags of Euca2ools' euare-groupuploadpolicy, and RoleCall's -f."""
    (tmp_path / "p.json").write_text(S3GET)
    from_file = source in ("-f", "--policy-document FILE")
    value = str(tmp_path / "p.json") if from_file else S3GET
    source = source.split()[0]
    outcome = ok(
        groups.GROUP_UPLOAD_POLICY,
        ["-g", "devs", "-p", "s3get", source, value],
        iam_reply("PutGroupPolicy"),
    )
    assert calls(outcome) == [
        {"Action": "PutGroupPolicy", **DEVS, "PolicyName": "s3get", "PolicyDocument": S3GET}
    ]


def test_groupuploadpolicy_needs_exactly_one_source() -> None:
    usage_error(groups.GROUP_UPLOAD_POLICY, ["-g", "g", "-p", "p"])
    usage_error(groups.GROUP_UPLOAD_POLICY, ["-g", "g", "-p", "p", "-o", "{}", "-f", "x"])


def test_grouplistpolicies_prints_names_and_with_v_each_policy_after_its_name() -> None:
    names = iam_reply("ListGroupPolicies", page("PolicyNames", ["s3get", "logs"]))
    assert ok(groups.GROUP_LIST_POLICIES, ["-g", "devs"], names).stdout == "s3get\nlogs\n"
    verbose = ok(
        groups.GROUP_LIST_POLICIES,
        ["-g", "devs", "-v"],
        names,
        iam_reply("GetGroupPolicy", f"<PolicyDocument>{quote(S3GET, safe='')}</PolicyDocument>"),
        iam_reply("GetGroupPolicy", f"<PolicyDocument>{quote('{}', safe='')}</PolicyDocument>"),
    )
    assert verbose.stdout == f"s3get\n{S3GET}\nlogs\n{{}}\n"
    assert calls(verbose)[1] == {"Action": "GetGroupPolicy", **DEVS, "PolicyName": "s3get"}


def test_groupdelpolicy_deletes_the_named_policy() -> None:
    outcome = ok(
        groups.GROUP_DELETE_POLICY, ["-g", "devs", "-p", "s3get"], iam_reply("DeleteGroupPolicy")
    )
    assert calls(outcome) == [{"Action": "DeleteGroupPolicy", **DEVS, "PolicyName": "s3get"}]


# Every tool

CASES = [
    (groups.GROUP_CREATE, ["-g", "devs", "-p", "/a/"], "CreateGroup"),
    (groups.GROUP_DELETE, ["-g", "devs"], "DeleteGroup"),
    (groups.GROUP_LIST_BY_PATH, ["-p", "/a b/"], "ListGroups"),
    (groups.GROUP_ADD_USER, ["-g", "devs", "-u", "alice"], "AddUserToGroup"),
    (groups.GROUP_REMOVE_USER, ["-g", "devs", "-u", "alice"], "RemoveUserFromGroup"),
    (groups.GROUP_LIST_USERS, ["-g", "devs"], "GetGroup"),
    (groups.GROUP_ADD_POLICY, ["-g", "d", "-p", "p", "-e", "Allow", "-a", "s3:*", "-r", "*"],
     "PutGroupPolicy"),
    (groups.GROUP_UPLOAD_POLICY, ["-g", "devs", "-p", "p", "-o", S3GET], "PutGroupPolicy"),
    (groups.GROUP_LIST_POLICIES, ["-g", "devs", "-p", "p"], "GetGroupPolicy"),
    (groups.GROUP_DELETE_POLICY, ["-g", "devs", "-p", "p"], "DeleteGroupPolicy"),
]  # fmt: skip
REPLIES = {
    "CreateGroup": f"<Group>{group_xml()}</Group>",
    "ListGroups": page("Groups", []),
    "GetGroup": f"<Group>{group_xml()}</Group>{page('Users', [])}",
    "GetGroupPolicy": "<PolicyDocument>%7B%7D</PolicyDocument>",
}


def test_every_group_tool_is_covered_here() -> None:
    assert {tool.name for tool, _, _ in CASES} == {tool.name for tool in groups.TOOLS}


@pytest.mark.parametrize(("tool", "argv", "action"), CASES, ids=[case[0].name for case in CASES])
def test_our_requests_are_the_ones_botocore_serializes_for_the_same_call(
    tool: Tool, argv: list[str], action: str
) -> None:
    outcome = ok(tool, argv, iam_reply(action, REPLIES.get(action, "")))
    ours = dict(outcome.service.params(0))
    assert ours["Action"] == action
    operation = IAM_MODEL.operation_model(action)
    arguments = {name: value for name, value in ours.items() if name not in ("Action", "Version")}
    validate_parameters(arguments, operation.input_shape)
    assert ours == create_serializer("query").serialize_to_request(arguments, operation)["body"]


@pytest.mark.parametrize(("tool", "argv", "action"), CASES, ids=[case[0].name for case in CASES])
def test_every_group_tool_refuses_an_unknown_flag_naming_it(
    tool: Tool, argv: list[str], action: str
) -> None:
    message = usage_error(tool, [*argv, "--no-such-flag"])
    assert message == (
        f"{tool.name}: unrecognized arguments: --no-such-flag (see {tool.name} --help)\n"
    )


@pytest.mark.parametrize("tool", groups.TOOLS, ids=lambda tool: tool.name)
def test_every_group_tool_has_help_with_its_name_and_an_example(
    tool: Tool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_tool(tool, ["--help"]).code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: {tool.name} ")
    assert "example:" in shown and "-U URL, --url URL" in shown


def test_setup_cfg_installs_every_group_tool() -> None:
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    declared = config["options.entry_points"]["console_scripts"].strip().splitlines()
    targets = dict(line.replace(" ", "").split("=") for line in declared)
    for tool in groups.TOOLS:
        module, function = targets[tool.name].split(":")
        assert module == "controller.tools.groups"
        assert getattr(groups, function).__name__ == tool.name.replace("-", "_")
