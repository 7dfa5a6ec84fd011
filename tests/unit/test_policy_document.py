"""Policy documents are parsed and validated like AWS: one table row per grammar rule."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import MalformedPolicyDocument
from controller.policy.document import (
    EVERYONE,
    VERSION_2008,
    VERSION_2012,
    Condition,
    PolicyDocument,
    PolicyKind,
    Principal,
    parse_policy,
    policy_size,
)

IDENTITY = PolicyKind.IDENTITY
TRUST = PolicyKind.TRUST

ORIGINAL_IDENTITY = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":["*"]}]}'
)
ORIGINAL_TRUST = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":'
    '{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
)


def identity(**statement: object) -> str:
    """An identity policy with one statement: Allow s3:GetObject on * unless overridden."""
    body: dict[str, object] = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    body.update(statement)
    return json.dumps({"Version": VERSION_2012, "Statement": [body]})


def trust(**statement: object) -> str:
    """A trust policy: Allow ec2.amazonaws.com to sts:AssumeRole unless overridden."""
    body: dict[str, object] = {
        "Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }
    body.update(statement)
    return json.dumps({"Version": VERSION_2012, "Statement": [body]})


def without(text: str, field: str) -> str:
    """``text`` with ``field`` removed from its first statement."""
    document = json.loads(text)
    del document["Statement"][0][field]
    return json.dumps(document)


# (rule, kind, document) rows that must parse.
ACCEPTED = [
    ("original identity example", IDENTITY, ORIGINAL_IDENTITY),
    ("original EC2 trust example", TRUST, ORIGINAL_TRUST),
    ("Latin-1 characters are allowed", IDENTITY, identity(Resource="arn:aws:s3:::caf\u00e9")),
    ("tab, CR and LF are allowed", IDENTITY, "{\t\r\n" + identity()[1:]),
    ("absent Version", IDENTITY, '{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}'),
    (
        "Id is an optional string",
        IDENTITY,
        '{"Id":"x","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}',
    ),
    ("Statement as a single object", IDENTITY, identity().replace("[", "").replace("]", "")),
    ("Sid alphanumeric in identity policies", IDENTITY, identity(Sid="AllowRead1")),
    ("Sid may hold spaces in trust policies", TRUST, trust(Sid="EC2 may assume")),
    ("Deny effect", IDENTITY, identity(Effect="Deny")),
    ("NotAction instead of Action", IDENTITY, without(identity(NotAction="iam:*"), "Action")),
    ("Action list", IDENTITY, identity(Action=["s3:Get*", "ec2:Describe?nstances"])),
    ("Action * alone", IDENTITY, identity(Action="*")),
    ("vendor with a hyphen", IDENTITY, identity(Action="execute-api:Invoke")),
    ("NotResource instead of Resource", IDENTITY, without(identity(NotResource="*"), "Resource")),
    ("ARN with empty region/account", IDENTITY, identity(Resource="arn:aws:s3:::bucket/*")),
    ("ARN with colons in resource", IDENTITY, identity(Resource="arn:aws:logs:*:*:log-group:a:*")),
    ("ARN cut short by a trailing *", IDENTITY, identity(Resource="arn:aws:ec2:*")),
    ("ARN with variable", IDENTITY, identity(Resource="arn:aws:iam::*:user/${aws:username}")),
    ("Principal *", TRUST, trust(Principal="*")),
    ("Principal AWS account id", TRUST, trust(Principal={"AWS": "123456789012"})),
    ("Principal AWS ARN list", TRUST, trust(Principal={"AWS": ["arn:aws:iam::1:root", "*"]})),
    (
        "Principal Federated",
        TRUST,
        trust(Principal={"Federated": "cognito-identity.amazonaws.com"}),
    ),
    ("Principal CanonicalUser", TRUST, trust(Principal={"CanonicalUser": "79a59df900b949e5"})),
    (
        "Deny with NotPrincipal in trust policy",
        TRUST,
        without(trust(Effect="Deny", NotPrincipal={"AWS": "123456789012"}), "Principal"),
    ),
    ("trust action wildcard sts:*", TRUST, trust(Action="sts:*")),
    ("trust action wildcard *", TRUST, trust(Action="*")),
    ("trust action case-insensitive", TRUST, trust(Action=["sts:assumerole", "sts:TagSession"])),
    ("trust action pattern", TRUST, trust(Action="sts:AssumeRoleWith*")),
    ("trust actions SetSourceIdentity", TRUST, trust(Action="sts:SetSourceIdentity")),
    ("trust NotAction may name any action", TRUST, without(trust(NotAction="s3:*"), "Action")),
    ("Condition string", IDENTITY, identity(Condition={"StringEquals": {"aws:username": "bob"}})),
    ("Condition list", IDENTITY, identity(Condition={"StringLike": {"s3:prefix": ["a", "b*"]}})),
    (
        "Condition number/bool",
        IDENTITY,
        identity(Condition={"Bool": {"aws:SecureTransport": True}}),
    ),
    (
        "Condition with set prefix and IfExists",
        IDENTITY,
        identity(Condition={"ForAnyValue:StringLikeIfExists": {"aws:TagKeys": "a*"}}),
    ),
    (
        "unknown operator name is accepted (fails closed at evaluation)",
        IDENTITY,
        identity(Condition={"StringFrobnicates": {"aws:username": "bob"}}),
    ),
    ("empty Condition object", IDENTITY, identity(Condition={})),
    (
        "Condition in trust policy",
        TRUST,
        trust(Condition={"StringEquals": {"sts:ExternalId": "x"}}),
    ),
]


@pytest.mark.parametrize(("rule", "kind", "text"), ACCEPTED, ids=[row[0] for row in ACCEPTED])
def test_accepted_documents_parse(rule: str, kind: PolicyKind, text: str) -> None:
    document = parse_policy(text, kind)
    assert isinstance(document, PolicyDocument)
    assert document.statements


# (rule, kind, document, fragment the message must contain) rows that must be rejected.
REJECTED = [
    ("character above U+00FF", IDENTITY, identity(Resource="arn:aws:s3:::\u0100"), "U+0100"),
    ("control character", IDENTITY, identity(Sid="a\x01b").replace("\\u0001", "\x01"), "U+0001"),
    (
        "escaped character above U+00FF",
        IDENTITY,
        identity(Resource="arn:aws:s3:::\u4e2d"),  # json.dumps escapes it as \u4e2d
        "U+4E2D",
    ),
    ("JSON syntax error", IDENTITY, '{\n  "Version": "2012-10-17",\n  "Statement" [', "line 3"),
    ("empty text", IDENTITY, "", "Syntax error"),
    ("NaN is not JSON", IDENTITY, '{"Version": NaN}', "NaN"),
    ("top level must be an object", IDENTITY, "[]", "must be a JSON object"),
    ("duplicate JSON keys", IDENTITY, '{"Statement": [], "Statement": []}', "Duplicate key"),
    (
        "duplicate keys in a statement",
        IDENTITY,
        '{"Statement":{"Effect":"Allow","Effect":"Deny","Action":"*","Resource":"*"}}',
        "Duplicate key 'Effect'",
    ),
    ("unknown Version", IDENTITY, identity().replace(VERSION_2012, "2020-01-01"), "Version"),
    ("Version must be a string", IDENTITY, '{"Version":2012,"Statement":[]}', "Version"),
    ("unknown top-level key", IDENTITY, '{"Statement":[],"Extra":1}', "Unknown field 'Extra'"),
    ("Id must be a string", IDENTITY, '{"Id":1,"Statement":[]}', "Id must be a string"),
    ("missing Statement", IDENTITY, '{"Version":"2012-10-17"}', "Statement"),
    ("empty Statement list", IDENTITY, '{"Statement":[]}', "non-empty"),
    ("Statement a string", IDENTITY, '{"Statement":"x"}', "Statement must be"),
    ("statement not an object", IDENTITY, '{"Statement":[1]}', "Statement 1 must be"),
    ("unknown statement key", IDENTITY, identity(Foo="x"), "Unknown field 'Foo' in statement 1"),
    ("Sid not a string", IDENTITY, identity(Sid=1), "Sid"),
    ("Sid not alphanumeric in identity", IDENTITY, identity(Sid="a b"), "alpha-numeric"),
    (
        "duplicate Sid",
        IDENTITY,
        json.dumps(
            {
                "Statement": [
                    {"Sid": "A", "Effect": "Allow", "Action": "*", "Resource": "*"},
                    {"Sid": "A", "Effect": "Deny", "Action": "*", "Resource": "*"},
                ]
            }
        ),
        "must be unique",
    ),
    ("missing Effect", IDENTITY, without(identity(), "Effect"), "Missing required field Effect"),
    ("lower-case effect", IDENTITY, identity(Effect="allow"), "Invalid effect: allow"),
    ("effect not a string", IDENTITY, identity(Effect=True), "Invalid effect: true"),
    ("missing Action", IDENTITY, without(identity(), "Action"), "Missing required field Action"),
    ("Action and NotAction", IDENTITY, identity(NotAction="s3:*"), "both Action and NotAction"),
    ("empty Action list", IDENTITY, identity(Action=[]), "empty list"),
    ("Action not a string", IDENTITY, identity(Action=[1]), "list of strings"),
    ("Action without vendor", IDENTITY, identity(Action="GetObject"), "Invalid action"),
    ("Action empty name", IDENTITY, identity(Action="s3:"), "Invalid action"),
    ("Action vendor with dot", IDENTITY, identity(Action="s3.x:Get"), "Invalid action"),
    (
        "missing Resource in statement 2",
        IDENTITY,
        json.dumps(
            {
                "Statement": [
                    {"Effect": "Allow", "Action": "*", "Resource": "*"},
                    {"Effect": "Allow", "Action": "*"},
                ]
            }
        ),
        "Missing required field Resource in statement 2",
    ),
    ("Resource and NotResource", IDENTITY, identity(NotResource="*"), "both Resource"),
    ("Resource not ARN-shaped", IDENTITY, identity(Resource="bucket"), "must be '*' or an ARN"),
    ("Resource too few ARN parts", IDENTITY, identity(Resource="arn:aws:s3:::"), "ARN"),
    ("Resource empty service", IDENTITY, identity(Resource="arn:aws::::x"), "ARN"),
    ("Resource short without *", IDENTITY, identity(Resource="arn:aws:ec2:x"), "ARN"),
    ("Resource wildcard service", IDENTITY, identity(Resource="arn:aws:*:::x"), "fully qualified"),
    ("Resource not a string", IDENTITY, identity(Resource={"a": 1}), "list of strings"),
    ("Principal in identity", IDENTITY, identity(Principal="*"), "should not specify a principal"),
    ("NotPrincipal in identity", IDENTITY, identity(NotPrincipal="*"), "should not specify"),
    ("Resource in trust", TRUST, trust(Resource="*"), "prohibited field Resource"),
    ("NotResource in trust", TRUST, trust(NotResource="*"), "prohibited field NotResource"),
    ("missing Principal in trust", TRUST, without(trust(), "Principal"), "field Principal"),
    ("Principal and NotPrincipal", TRUST, trust(NotPrincipal="*"), "both Principal"),
    (
        "Allow with NotPrincipal trusts everyone else",
        TRUST,
        without(trust(NotPrincipal={"AWS": "123456789012"}), "Principal"),
        "NotPrincipal with Effect Allow is not supported",
    ),
    ("trust action not STS", TRUST, trust(Action="s3:GetObject"), "'s3:GetObject'"),
    ("trust action other STS", TRUST, trust(Action="sts:GetCallerIdentity"), "not an STS action"),
    ("trust wildcard no match", TRUST, trust(Action="sts:Get*"), "'sts:Get*' in statement 1"),
    ("Principal string not *", TRUST, trust(Principal="ec2.amazonaws.com"), "Principal"),
    ("Principal empty object", TRUST, trust(Principal={}), "at least one"),
    ("Principal unknown type", TRUST, trust(Principal={"User": "x"}), "Invalid principal type"),
    ("Principal AWS bad value", TRUST, trust(Principal={"AWS": "bob"}), "Invalid principal"),
    ("Principal AWS short id", TRUST, trust(Principal={"AWS": "12345"}), "12-digit"),
    ("Principal empty list", TRUST, trust(Principal={"Service": []}), "empty list"),
    ("Principal number", TRUST, trust(Principal={"Service": 1}), "list of strings"),
    ("Condition not an object", IDENTITY, identity(Condition=[]), "Condition"),
    ("operator empty", IDENTITY, identity(Condition={"": {"aws:x": "1"}}), "Invalid condition"),
    (
        "operator bad prefix",
        IDENTITY,
        identity(Condition={"ForSomeValues:StringEquals": {"aws:x": "1"}}),
        "Invalid condition operator",
    ),
    (
        "operator block not an object",
        IDENTITY,
        identity(Condition={"StringEquals": "x"}),
        "must map keys",
    ),
    ("operator block empty", IDENTITY, identity(Condition={"StringEquals": {}}), "no condition"),
    (
        "condition key without vendor",
        IDENTITY,
        identity(Condition={"StringEquals": {"username": "x"}}),
        "prefaced by a vendor",
    ),
    (
        "condition value null",
        IDENTITY,
        identity(Condition={"StringEquals": {"aws:x": None}}),
        "found null",
    ),
    (
        "condition value object",
        IDENTITY,
        identity(Condition={"StringEquals": {"aws:x": {"a": "b"}}}),
        "found an object",
    ),
    (
        "condition value empty list",
        IDENTITY,
        identity(Condition={"StringEquals": {"aws:x": []}}),
        "empty list",
    ),
    (
        "condition value nested list",
        IDENTITY,
        identity(Condition={"StringEquals": {"aws:x": [["a"]]}}),
        "found a list",
    ),
]


@pytest.mark.parametrize(
    ("rule", "kind", "text", "fragment"), REJECTED, ids=[row[0] for row in REJECTED]
)
def test_rejected_documents_raise_a_specific_message(
    rule: str, kind: PolicyKind, text: str, fragment: str
) -> None:
    """AWS's message to the caller, RoleCall's reason (which element, where) in the detail."""
    with pytest.raises(MalformedPolicyDocument) as raised:
        parse_policy(text, kind)
    assert raised.value.message == AWS_MESSAGES[rule]
    assert fragment in f"{raised.value.message} {raised.value.detail}"


SYNTAX = "Syntax errors in policy."
#: AWS's exact text per REJECTED rule (sources: docs/api-coverage.md, "Errors").
AWS_MESSAGES = {
    "character above U+00FF": SYNTAX,
    "control character": SYNTAX,
    "escaped character above U+00FF": SYNTAX,
    "JSON syntax error": SYNTAX,
    "empty text": SYNTAX,
    "NaN is not JSON": SYNTAX,
    "top level must be an object": SYNTAX,
    "duplicate JSON keys": SYNTAX,
    "duplicate keys in a statement": SYNTAX,
    "unknown Version": SYNTAX,
    "Version must be a string": SYNTAX,
    "unknown top-level key": SYNTAX,
    "Id must be a string": SYNTAX,
    "missing Statement": SYNTAX,
    "empty Statement list": SYNTAX,
    "Statement a string": SYNTAX,
    "statement not an object": SYNTAX,
    "unknown statement key": SYNTAX,
    "Sid not a string": SYNTAX,
    "Sid not alphanumeric in identity": "Statement IDs (SID) must be alpha-numeric. Check that"
    " your input satisfies the regular expression [0-9A-Za-z]*",
    "duplicate Sid": "Statement IDs (SID) in a single policy must be unique.",
    "missing Effect": SYNTAX,
    "lower-case effect": SYNTAX,
    "effect not a string": SYNTAX,
    "missing Action": "Policy statement must contain actions.",
    "Action and NotAction": SYNTAX,
    "empty Action list": "Policy statement must contain actions.",
    "Action not a string": SYNTAX,
    "Action without vendor": "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb,"
    " ec2, etc.",
    "Action empty name": SYNTAX,
    "Action vendor with dot": "Vendor s3.x is not valid",
    "missing Resource in statement 2": "Policy statement must contain resources.",
    "Resource and NotResource": SYNTAX,
    "Resource not ARN-shaped": 'Resource bucket must be in ARN format or "*".',
    "Resource too few ARN parts": "The policy failed legacy parsing",
    "Resource empty service": "The policy failed legacy parsing",
    "Resource short without *": "The policy failed legacy parsing",
    "Resource wildcard service": "Resource vendor must be fully qualified and cannot contain"
    " regexes.",
    "Resource not a string": SYNTAX,
    "Principal in identity": "Policy document should not specify a principal.",
    "NotPrincipal in identity": "Policy document should not specify a principal.",
    "Resource in trust": "Has prohibited field Resource.",
    "NotResource in trust": "Has prohibited field NotResource.",
    "missing Principal in trust": "Missing required field Principal",
    "Principal and NotPrincipal": SYNTAX,
    "Allow with NotPrincipal trusts everyone else": SYNTAX,
    # Two spaces before "and": AWS's text as it is.
    "trust action not STS": "Trust Policy statement actions can only be sts:AssumeRole,"
    " sts:AssumeRoleWithSAML,  and sts:AssumeRoleWithWebIdentity",
    "trust action other STS": "Trust Policy statement actions can only be sts:AssumeRole,"
    " sts:AssumeRoleWithSAML,  and sts:AssumeRoleWithWebIdentity",
    "trust wildcard no match": "Trust Policy statement actions can only be sts:AssumeRole,"
    " sts:AssumeRoleWithSAML,  and sts:AssumeRoleWithWebIdentity",
    "Principal string not *": SYNTAX,
    "Principal empty object": SYNTAX,
    "Principal unknown type": SYNTAX,
    "Principal AWS bad value": 'Invalid principal in policy: "AWS":"bob"',
    "Principal AWS short id": 'Invalid principal in policy: "AWS":"12345"',
    "Principal empty list": SYNTAX,
    "Principal number": SYNTAX,
    "Condition not an object": SYNTAX,
    "operator empty": SYNTAX,
    "operator bad prefix": SYNTAX,
    "operator block not an object": SYNTAX,
    "operator block empty": SYNTAX,
    "condition key without vendor": "Actions/Conditions must be prefaced by a vendor, e.g., iam,"
    " sdb, ec2, etc.",
    "condition value null": SYNTAX,
    "condition value object": SYNTAX,
    "condition value empty list": SYNTAX,
    "condition value nested list": SYNTAX,
}


def test_every_rejected_rule_has_aws_message() -> None:
    assert set(AWS_MESSAGES) == {row[0] for row in REJECTED}


def test_action_with_two_colons_is_aws_one_colon_message() -> None:
    with pytest.raises(MalformedPolicyDocument) as raised:
        parse_policy(identity(Action="s3:List:Bucket"), IDENTITY)
    assert raised.value.message == "Actions/Condition can contain only one colon."


def test_syntax_error_names_line_and_column_in_detail() -> None:
    with pytest.raises(MalformedPolicyDocument) as raised:
        parse_policy('{\n  "Version": "2012-10-17",\n  "Statement" [', IDENTITY)
    assert raised.value.message == "Syntax errors in policy."
    assert raised.value.detail is not None
    assert raised.value.detail.startswith("JSON syntax error at line 3, column 15: ")


def test_str_of_the_error_gives_the_operator_the_detail_too() -> None:
    """What an operator reads (a catalog of AWS-managed policies that fails to load) keeps the
    reason; what a caller gets is ``message`` alone."""
    with pytest.raises(MalformedPolicyDocument) as raised:
        parse_policy(identity(Effect="allow"), IDENTITY)
    assert str(raised.value) == "Syntax errors in policy. (Invalid effect: allow in statement 1)"


def test_invalid_character_names_its_position_in_detail() -> None:
    with pytest.raises(MalformedPolicyDocument) as raised:
        parse_policy('{\n "Id": "\u20ac"}', IDENTITY)
    assert "U+20AC at line 2, column 9" in str(raised.value.detail)


def test_missing_resource_message_is_exact() -> None:
    text = json.dumps({"Statement": [{"Effect": "Allow", "Action": "*"}]})
    with pytest.raises(MalformedPolicyDocument) as raised:
        parse_policy(text, IDENTITY)
    assert raised.value.message == "Policy statement must contain resources."
    assert raised.value.detail == "Missing required field Resource in statement 1"


def test_original_identity_example_parses_to_its_statement() -> None:
    document = parse_policy(ORIGINAL_IDENTITY, IDENTITY)
    assert document.version == VERSION_2008
    (statement,) = document.statements
    assert statement.effect == "Allow"
    assert statement.actions == ("s3:*",)
    assert statement.resources == ("*",)
    assert statement.not_actions is None and statement.not_resources is None
    assert statement.principal is None and statement.conditions == ()


def test_original_trust_example_parses_to_its_principal() -> None:
    document = parse_policy(ORIGINAL_TRUST, TRUST)
    (statement,) = document.statements
    assert statement.principal == Principal(entries=(("Service", ("ec2.amazonaws.com",)),))
    assert statement.actions == ("sts:AssumeRole",)
    assert statement.resources is None


def test_absent_version_is_recorded_as_2008_without_variables() -> None:
    document = parse_policy(
        '{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}', IDENTITY
    )
    assert document.version == VERSION_2008
    assert not document.substitutes_variables


def test_2012_version_substitutes_variables() -> None:
    assert parse_policy(identity(), IDENTITY).substitutes_variables


def test_principal_star_is_everyone() -> None:
    statement = parse_policy(trust(Principal="*"), TRUST).statements[0]
    assert statement.principal == EVERYONE
    assert statement.principal.everyone


def test_principal_object_star_is_an_entry_not_everyone() -> None:
    statement = parse_policy(trust(Principal={"AWS": "*"}), TRUST).statements[0]
    assert statement.principal == Principal(entries=(("AWS", ("*",)),))


def test_principal_entries_keep_document_order() -> None:
    principal = {"Service": ["a.amazonaws.com"], "AWS": ["123456789012", "arn:aws:iam::1:root"]}
    statement = parse_policy(trust(Principal=principal), TRUST).statements[0]
    assert statement.principal == Principal(
        entries=(
            ("Service", ("a.amazonaws.com",)),
            ("AWS", ("123456789012", "arn:aws:iam::1:root")),
        )
    )


def test_condition_values_keep_json_text_of_numbers_and_booleans() -> None:
    text = (
        '{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":'
        '{"NumericLessThan":{"aws:MultiFactorAuthAge":[3600, 1.50, 1e3]},'
        '"Bool":{"aws:SecureTransport":true}}}}'
    )
    conditions = parse_policy(text, IDENTITY).statements[0].conditions
    assert conditions == (
        Condition("NumericLessThan", "aws:MultiFactorAuthAge", ("3600", "1.50", "1e3")),
        Condition("Bool", "aws:SecureTransport", ("true",)),
    )


def test_condition_operator_is_kept_as_written() -> None:
    text = identity(Condition={"ForAllValues:StringLikeIfExists": {"aws:TagKeys": ["a", "b"]}})
    (condition,) = parse_policy(text, IDENTITY).statements[0].conditions
    assert condition == Condition("ForAllValues:StringLikeIfExists", "aws:TagKeys", ("a", "b"))


def test_statement_object_and_list_parse_the_same() -> None:
    as_list = parse_policy(identity(), IDENTITY)
    as_object = parse_policy(identity().replace("[", "").replace("]", ""), IDENTITY)
    assert as_list == as_object


def test_empty_sid_is_allowed_and_not_subject_to_uniqueness() -> None:
    text = json.dumps(
        {
            "Statement": [
                {"Sid": "", "Effect": "Allow", "Action": "*", "Resource": "*"},
                {"Sid": "", "Effect": "Deny", "Action": "*", "Resource": "*"},
            ]
        }
    )
    assert len(parse_policy(text, IDENTITY).statements) == 2


def test_policy_size_ignores_whitespace() -> None:
    assert policy_size('{ "a" :\t[1,\r\n 2] }') == len('{"a":[1,2]}')


def test_policy_size_counts_every_other_character() -> None:
    assert policy_size(ORIGINAL_IDENTITY) == len(ORIGINAL_IDENTITY)


# -- properties ---------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
policy_keys = st.sampled_from(
    [
        "Version",
        "Id",
        "Statement",
        "Sid",
        "Effect",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Principal",
        "NotPrincipal",
        "Condition",
        "AWS",
        "Service",
        "StringEquals",
        "aws:username",
    ]
)
policy_scalars = st.sampled_from(
    [
        "2012-10-17",
        "2008-10-17",
        "Allow",
        "Deny",
        "*",
        "s3:*",
        "sts:AssumeRole",
        "arn:aws:s3:::b/*",
        "123456789012",
        "ec2.amazonaws.com",
    ]
)
# JSON shaped like policies, so generated documents get past the first checks more often.
policy_like = st.recursive(
    policy_scalars | json_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(policy_keys | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300)
@given(text=st.text(), kind=st.sampled_from(PolicyKind))
def test_arbitrary_text_raises_only_malformed_policy_document(text: str, kind: PolicyKind) -> None:
    try:
        parse_policy(text, kind)
    except MalformedPolicyDocument:
        pass


@settings(max_examples=300)
@given(value=json_values | policy_like, kind=st.sampled_from(PolicyKind))
def test_arbitrary_json_raises_only_malformed_policy_document(
    value: object, kind: PolicyKind
) -> None:
    try:
        parse_policy(json.dumps(value), kind)
    except MalformedPolicyDocument:
        pass


@settings(max_examples=300)
@given(value=policy_like, kind=st.sampled_from(PolicyKind))
def test_arbitrary_json_unescaped_raises_only_malformed_policy_document(
    value: object, kind: PolicyKind
) -> None:
    try:
        parse_policy(json.dumps(value, ensure_ascii=False), kind)
    except MalformedPolicyDocument:
        pass
