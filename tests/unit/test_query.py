"""The Query protocol's input side: flat parameters to typed values, refused as AWS refuses them.

One table row per rule: what is accepted and what it becomes, and what is refused with AWS's exact
ValidationError message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import controller.iam
from controller.errors import (
    ApiError,
    InvalidInput,
    InvalidParameterValue,
    MissingParameter,
    ValidationError,
)
from controller.iam.shapes import MAX_SESSION_DURATION, ROLE_NAME, TAG_KEY_LIST, TAG_LIST
from controller.query import (
    DEFAULT_MAX_ITEMS,
    Bool,
    Field,
    Int,
    ListOf,
    Shape,
    Str,
    Struct,
    check_unique,
    is_tag_text,
    parse_form,
    parse_input,
)

NAME_RULE = r"Member must satisfy regular expression pattern: [\w+=,.@-]+"
TAG_RULE = r"Member must satisfy regular expression pattern: [\p{L}\p{Z}\p{N}_.:/=+\-@]+"

#: An IAM-style input with one member of every kind.
INPUT = Struct(
    (
        Field("RoleName", ROLE_NAME, required=True),
        Field("MaxSessionDuration", MAX_SESSION_DURATION),
        Field("Count", Int()),
        Field("DryRun", Bool()),
        Field("Tags", TAG_LIST),
        Field("TagKeys", TAG_KEY_LIST),
    )
)

#: An EC2-style input: a flattened list spelled singular on the wire.
EC2_INPUT = Struct(
    (
        Field("InstanceIds", ListOf(Str(1, 19), max_items=3), wire_name="InstanceId"),
        Field("MaxResults", Int(5, 1000)),
    )
)


def error_message(*problems: str) -> str:
    noun = "error" if len(problems) == 1 else "errors"
    return f"{len(problems)} validation {noun} detected: " + "; ".join(problems)


def tags(count: int) -> dict[str, str]:
    params = {}
    for number in range(1, count + 1):
        params[f"Tags.member.{number}.Key"] = f"key{number}"
        params[f"Tags.member.{number}.Value"] = f"value{number}"
    return params


ACCEPTED = [
    pytest.param({"RoleName": "web"}, {"RoleName": "web"}, id="only-the-required-member"),
    pytest.param(
        {"RoleName": "a" * 64}, {"RoleName": "a" * 64}, id="role-name-of-the-maximum-length"
    ),
    pytest.param(
        {"RoleName": "Az09_+=,.@-"}, {"RoleName": "Az09_+=,.@-"}, id="every-name-punctuation"
    ),
    pytest.param(
        {"RoleName": "web", "MaxSessionDuration": "3600"},
        {"RoleName": "web", "MaxSessionDuration": 3600},
        id="integer-at-its-minimum",
    ),
    pytest.param(
        {"RoleName": "web", "MaxSessionDuration": "43200"},
        {"RoleName": "web", "MaxSessionDuration": 43200},
        id="integer-at-its-maximum",
    ),
    pytest.param(
        {"RoleName": "web", "Count": "-7"}, {"RoleName": "web", "Count": -7}, id="negative-integer"
    ),
    pytest.param(
        {"RoleName": "web", "DryRun": "true"}, {"RoleName": "web", "DryRun": True}, id="bool-true"
    ),
    pytest.param(
        {"RoleName": "web", "DryRun": "false"},
        {"RoleName": "web", "DryRun": False},
        id="bool-false",
    ),
    pytest.param(
        {"RoleName": "web", "DryRun": "TRUE"},
        {"RoleName": "web", "DryRun": True},
        id="bool-in-capitals",
    ),
    pytest.param(
        {"RoleName": "web", **tags(2)},
        {
            "RoleName": "web",
            "Tags": [{"Key": "key1", "Value": "value1"}, {"Key": "key2", "Value": "value2"}],
        },
        id="list-of-structures",
    ),
    pytest.param(
        {"RoleName": "web", "Tags.member.1.Key": "empty", "Tags.member.1.Value": ""},
        {"RoleName": "web", "Tags": [{"Key": "empty", "Value": ""}]},
        id="empty-tag-value",
    ),
    pytest.param(
        {"RoleName": "web", "TagKeys.member.2": "second", "TagKeys.member.1": "first"},
        {"RoleName": "web", "TagKeys": ["first", "second"]},
        id="list-ordered-by-index-not-by-parameter-order",
    ),
    pytest.param(
        {"RoleName": "web", "TagKeys.member.7": "seven", "TagKeys.member.3": "three"},
        {"RoleName": "web", "TagKeys": ["three", "seven"]},
        id="list-with-gaps-in-its-indexes",
    ),
    pytest.param({"RoleName": "web", "Tags": ""}, {"RoleName": "web", "Tags": []}, id="empty-list"),
    pytest.param(
        {"RoleName": "web", **tags(50)},
        {
            "RoleName": "web",
            "Tags": [{"Key": f"key{n}", "Value": f"value{n}"} for n in range(1, 51)],
        },
        id="list-of-the-maximum-length",
    ),
    pytest.param(
        {"RoleName": "web", "Tags.member.1.Key": "日本語 ключ", "Tags.member.1.Value": "٣ ü"},
        {"RoleName": "web", "Tags": [{"Key": "日本語 ключ", "Value": "٣ ü"}]},
        id="tag-text-in-several-scripts",
    ),
]


@pytest.mark.parametrize(("params", "expected"), ACCEPTED)
def test_valid_input_is_parsed_into_typed_values(
    params: dict[str, str], expected: dict[str, Any]
) -> None:
    assert parse_input(params, INPUT) == expected


def test_list_indexes_are_ordered_numerically() -> None:
    params = {"RoleName": "web"}
    params.update({f"TagKeys.member.{number}": f"key{number}" for number in range(1, 12)})
    parsed = parse_input(params, INPUT)
    assert parsed["TagKeys"] == [f"key{number}" for number in range(1, 12)]


REFUSED = [
    pytest.param(
        {},
        error_message(
            "Value null at 'roleName' failed to satisfy constraint: Member must not be null"
        ),
        id="required-member-missing",
    ),
    pytest.param(
        {"RoleName": ""},
        error_message(
            "Value '' at 'roleName' failed to satisfy constraint:"
            " Member must have length greater than or equal to 1"
        ),
        id="shorter-than-the-minimum-length",
    ),
    pytest.param(
        {"RoleName": "a" * 65},
        error_message(
            f"Value '{'a' * 65}' at 'roleName' failed to satisfy constraint:"
            " Member must have length less than or equal to 64"
        ),
        id="longer-than-the-maximum-length",
    ),
    pytest.param(
        {"RoleName": "web server"},
        error_message(
            f"Value 'web server' at 'roleName' failed to satisfy constraint: {NAME_RULE}"
        ),
        id="name-with-a-space",
    ),
    pytest.param(
        {"RoleName": "web/server"},
        error_message(
            f"Value 'web/server' at 'roleName' failed to satisfy constraint: {NAME_RULE}"
        ),
        id="name-with-a-slash",
    ),
    pytest.param(
        {"RoleName": "rôle"},
        error_message(f"Value 'rôle' at 'roleName' failed to satisfy constraint: {NAME_RULE}"),
        id="name-with-a-non-ascii-letter",
    ),
    pytest.param(
        {"RoleName": "web\n"},
        error_message(f"Value 'web\n' at 'roleName' failed to satisfy constraint: {NAME_RULE}"),
        id="name-with-a-trailing-newline",
    ),
    pytest.param(
        {"RoleName": "web", "MaxSessionDuration": "3599"},
        error_message(
            "Value '3599' at 'maxSessionDuration' failed to satisfy constraint:"
            " Member must have value greater than or equal to 3600"
        ),
        id="integer-below-its-minimum",
    ),
    pytest.param(
        {"RoleName": "web", "MaxSessionDuration": "43201"},
        error_message(
            "Value '43201' at 'maxSessionDuration' failed to satisfy constraint:"
            " Member must have value less than or equal to 43200"
        ),
        id="integer-above-its-maximum",
    ),
    pytest.param(
        {"RoleName": "web", "Count": "twelve"},
        error_message(
            "Value 'twelve' at 'count' failed to satisfy constraint: Member must be an integer"
        ),
        id="integer-that-is-a-word",
    ),
    pytest.param(
        {"RoleName": "web", "Count": "1.5"},
        error_message(
            "Value '1.5' at 'count' failed to satisfy constraint: Member must be an integer"
        ),
        id="integer-with-a-fraction",
    ),
    pytest.param(
        {"RoleName": "web", "Count": ""},
        error_message(
            "Value '' at 'count' failed to satisfy constraint: Member must be an integer"
        ),
        id="integer-that-is-empty",
    ),
    pytest.param(
        {"RoleName": "web", "Count": "٣"},
        error_message(
            "Value '٣' at 'count' failed to satisfy constraint: Member must be an integer"
        ),
        id="integer-in-non-ascii-digits",
    ),
    pytest.param(
        {"RoleName": "web", "DryRun": "yes"},
        error_message(
            "Value 'yes' at 'dryRun' failed to satisfy constraint:"
            " Member must be a boolean (true or false)"
        ),
        id="bool-that-is-neither-true-nor-false",
    ),
    pytest.param(
        {"RoleName": "web", "Tags.member.1.Key": "team"},
        error_message(
            "Value null at 'tags.1.member.value' failed to satisfy constraint:"
            " Member must not be null"
        ),
        id="list-member-without-its-required-value",
    ),
    pytest.param(
        {"RoleName": "web", "Tags.member.1.Key": "a!", "Tags.member.1.Value": "ok"},
        error_message(
            f"Value 'a!' at 'tags.1.member.key' failed to satisfy constraint: {TAG_RULE}"
        ),
        id="tag-key-outside-the-tag-character-set",
    ),
    pytest.param(
        {"RoleName": "web", "TagKeys.member.1": "ok", "TagKeys.member.2": ""},
        error_message(
            "Value '' at 'tagKeys.2.member' failed to satisfy constraint:"
            " Member must have length greater than or equal to 1"
        ),
        id="list-item-named-by-its-position",
    ),
    pytest.param(
        {"MaxSessionDuration": "60"},
        error_message(
            "Value null at 'roleName' failed to satisfy constraint: Member must not be null",
            "Value '60' at 'maxSessionDuration' failed to satisfy constraint:"
            " Member must have value greater than or equal to 3600",
        ),
        id="two-problems-in-one-error",
    ),
    pytest.param(
        {"RoleName": "a b" * 22},
        error_message(
            f"Value '{'a b' * 22}' at 'roleName' failed to satisfy constraint:"
            " Member must have length less than or equal to 64",
            f"Value '{'a b' * 22}' at 'roleName' failed to satisfy constraint: {NAME_RULE}",
        ),
        id="two-problems-with-one-member",
    ),
]


@pytest.mark.parametrize(("params", "message"), REFUSED)
def test_invalid_input_is_refused_with_aws_validation_message(
    params: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_input(params, INPUT)
    assert raised.value.message == message


def test_list_longer_than_its_maximum_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_input({"RoleName": "web", **tags(51)}, INPUT)
    assert raised.value.message.startswith("1 validation error detected: ")
    assert raised.value.message.endswith(
        " at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50"
    )


def test_validation_error_is_a_400_sender_fault() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_input({}, INPUT)
    assert (raised.value.code, raised.value.status, raised.value.sender_fault) == (
        "ValidationError",
        400,
        True,
    )


# EC2's flattened lists


def test_flattened_list_is_read_from_name_dot_index() -> None:
    parsed = parse_input(
        {"InstanceId.2": "i-0000000000000002", "InstanceId.1": "i-0000000000000001"},
        EC2_INPUT,
        flattened_lists=True,
    )
    assert parsed == {"InstanceIds": ["i-0000000000000001", "i-0000000000000002"]}


def test_flattened_list_ignores_the_member_spelling() -> None:
    parsed = parse_input({"InstanceId.member.1": "i-1"}, EC2_INPUT, flattened_lists=True)
    assert parsed == {}


def test_flattened_list_item_problem_is_named_by_its_wire_name_in_ec2_words() -> None:
    with pytest.raises(InvalidParameterValue) as raised:
        parse_input({"InstanceId.1": ""}, EC2_INPUT, flattened_lists=True)
    assert raised.value.message == (
        "Value () for parameter InstanceId.1 is invalid."
        " It must have length greater than or equal to 1"
    )


def test_flattened_list_longer_than_its_maximum_is_refused() -> None:
    params = {f"InstanceId.{number}": f"i-{number}" for number in range(1, 5)}
    with pytest.raises(InvalidParameterValue, match="for parameter InstanceId is invalid"):
        parse_input(params, EC2_INPUT, flattened_lists=True)


def test_a_missing_ec2_parameter_is_missing_parameter_naming_it() -> None:
    required = Struct((Field("ImageId", Str(1, 10), required=True),))
    with pytest.raises(MissingParameter) as raised:
        parse_input({}, required, flattened_lists=True)
    assert raised.value.message == "The request must contain the parameter ImageId"


# Work in proportion to the request (issue 16, item 3): parsing runs before authorization


class CountingParams(Mapping[str, str]):
    """Parameters that count every key handed out and every lookup, and stop past ``budget``.

    Stopping matters: the quadratic parser this guards against would take hours on the large
    requests below, so the test fails at once instead.
    """

    def __init__(self, params: dict[str, str], budget: int) -> None:
        self._params = params
        self.budget = budget
        self.operations = 0

    def _count(self) -> None:
        self.operations += 1
        assert self.operations <= self.budget, f"more than {self.budget} parameter operations"

    def __getitem__(self, name: str) -> str:
        self._count()
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        for name in self._params:
            self._count()
            yield name

    def __len__(self) -> int:
        return len(self._params)


def linear_budget(params: dict[str, str]) -> int:
    """Each parameter read a fixed number of times: its name once and its value once."""
    return 2 * len(params) + 10


#: A list bounded only by RoleCall's cap, set high so that every member is parsed.
WIDE_INPUT = Struct((Field("Tags", ListOf(TAG_LIST.member, cap=100_000)),))


@pytest.mark.parametrize("count", [50, 5_000])
def test_parsing_reads_each_parameter_a_fixed_number_of_times(count: int) -> None:
    """Scanning every parameter per list item made a 578 KB TagRole take 13.6 s."""
    params = CountingParams(tags(count), budget=linear_budget(tags(count)))
    parsed = parse_input(params, WIDE_INPUT)
    assert len(parsed["Tags"]) == count
    assert params.operations <= linear_budget(tags(count))


def test_a_list_of_100000_members_is_refused_before_any_member_is_read() -> None:
    raw = {"RoleName": "web", **tags(100_000)}
    params = CountingParams(raw, budget=linear_budget(raw))
    with pytest.raises(ValidationError) as raised:
        parse_input(params, INPUT)
    assert raised.value.message == (
        "1 validation error detected: Value '[100000 items]' at 'tags' failed to satisfy"
        " constraint: Member must have length less than or equal to 50"
    )


def test_a_list_index_past_the_bound_is_refused() -> None:
    params = {"RoleName": "web", "Tags.member.51.Key": "k", "Tags.member.51.Value": "v"}
    with pytest.raises(ValidationError) as raised:
        parse_input(params, INPUT)
    assert raised.value.message.endswith(
        "at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50"
    )


UNBOUNDED_INPUT = Struct((Field("Names", ListOf(Str())),))


def test_a_list_the_model_leaves_unbounded_takes_up_to_the_default_cap() -> None:
    params = {f"Names.member.{number}": "x" for number in range(1, DEFAULT_MAX_ITEMS + 1)}
    assert len(parse_input(params, UNBOUNDED_INPUT)["Names"]) == DEFAULT_MAX_ITEMS


def test_a_list_the_model_leaves_unbounded_is_refused_past_the_default_cap() -> None:
    params = {f"Names.member.{number}": "x" for number in range(1, DEFAULT_MAX_ITEMS + 2)}
    with pytest.raises(ValidationError) as raised:
        parse_input(params, UNBOUNDED_INPUT)
    assert raised.value.message.endswith(
        f"Member must have length less than or equal to {DEFAULT_MAX_ITEMS}"
    )


def test_a_flattened_list_index_past_the_default_cap_is_invalid_parameter_value() -> None:
    shape = Struct((Field("InstanceIds", ListOf(Str()), wire_name="InstanceId"),))
    with pytest.raises(InvalidParameterValue) as raised:
        parse_input({"InstanceId.1001": "i-1"}, shape, flattened_lists=True)
    assert raised.value.message == (
        "Value ([1 items]) for parameter InstanceId is invalid."
        f" It must have length less than or equal to {DEFAULT_MAX_ITEMS}"
    )


# Tag text


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Team", id="latin"),
        pytest.param("Größe", id="latin-with-diacritics"),
        pytest.param("команда", id="cyrillic"),
        pytest.param("ομάδα", id="greek"),
        pytest.param("チーム", id="katakana"),
        pytest.param("团队", id="han"),
        pytest.param("فريق", id="arabic"),
        pytest.param("צוות", id="hebrew"),
        pytest.param("0123456789", id="ascii-digits"),
        pytest.param("٠١٢", id="arabic-indic-digits"),
        pytest.param("Ⅻ", id="roman-numeral"),
        pytest.param("a b", id="space"),
        pytest.param("a\u00a0b\u3000c", id="no-break-and-ideographic-spaces"),
        pytest.param("_.:/=+-@", id="every-allowed-punctuation"),
        pytest.param("", id="empty"),
    ],
)
def test_tag_text_accepts_letters_spaces_digits_and_its_punctuation(text: str) -> None:
    assert is_tag_text(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a!", id="exclamation-mark"),
        pytest.param("a*", id="asterisk"),
        pytest.param("a#b", id="hash"),
        pytest.param("a,b", id="comma"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x7fb", id="delete"),
        pytest.param("e\u0301", id="combining-accent"),
        pytest.param("a\U0001f600", id="emoji"),
    ],
)
def test_tag_text_refuses_other_characters(text: str) -> None:
    assert not is_tag_text(text)


# Duplicate keys


def test_check_unique_refuses_a_key_given_twice_in_another_case() -> None:
    with pytest.raises(InvalidInput, match=r"^Duplicate tag key 'TEAM' in the request\.$"):
        check_unique(["team", "env", "TEAM"], "tag key")


def test_check_unique_accepts_distinct_keys() -> None:
    check_unique(["team", "env", "owner"], "tag key")


# Anything a caller sends is either parsed or refused with an API error


def wire_names(struct: Struct, prefix: str = "") -> Iterator[str]:
    """Parameter names the struct reads, including list items and some near misses."""
    for item in struct.fields:
        yield from _shape_wire_names(item.shape, prefix + (item.wire_name or item.name))


def _shape_wire_names(shape: Shape, wire: str) -> Iterator[str]:
    if isinstance(shape, Struct):
        yield from wire_names(shape, wire + ".")
    elif isinstance(shape, ListOf):
        yield wire
        yield f"{wire}.member"
        for index in ("1", "2", "10", "01", "0", "1000000"):
            yield f"{wire}.member.{index}"
            yield from _shape_wire_names(shape.member, f"{wire}.member.{index}")
    else:
        yield wire


def iam_actions() -> list[str]:
    return controller.iam.registry.names("iam")


VALUES = st.one_of(
    st.text(max_size=80),
    st.integers().map(str),
    st.sampled_from(["", "/", "/a/", "true", "false", "3600", "-1", "a" * 129, "{}"]),
)


# Not parametrized: pytest-twisted wraps a @given test's inner function in place, so a second
# parametrization of the same function would run inside the first's wrapper and fail.
@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_parse_input_raises_only_api_errors_for_any_parameters(data: st.DataObject) -> None:
    action_name = data.draw(st.sampled_from(iam_actions()), label="action")
    action = controller.iam.registry.get("iam", action_name)
    assert action is not None
    names = sorted(set(wire_names(action.input)))
    params = data.draw(
        st.dictionaries(
            st.one_of(st.sampled_from(names), st.text(max_size=30)), VALUES, max_size=12
        ),
        label="params",
    )
    try:
        parsed = parse_input(params, action.input)
    except ApiError:
        return
    assert set(parsed) <= {item.name for item in action.input.fields}


# --- form bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fweb&Version=2011-06-15",
        "a=1&b=&c=x+y%2Bz&d=%E2%98%83",
        "name=%ff%fe&%41=%zz&e=%",
        "only=",
        "=value",
        "caf\u00e9=na\u00efve&x=%C3%A9",
    ],
)
def test_parse_form_reads_a_body_as_parse_qsl_does(text: str) -> None:
    assert parse_form(text) == parse_qsl(text, keep_blank_values=True, strict_parsing=True)


@pytest.mark.parametrize("text", ["a=1&&b=2", "a=1&b", "noequals", "a=1&", "&a=1"])
def test_parse_form_refuses_a_field_without_an_equals_sign(text: str) -> None:
    with pytest.raises(ValueError):
        parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    with pytest.raises(ValueError):
        parse_form(text)


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("ab=&+%2Fe9C3A\u00e9\u2603 ")))
def test_parse_form_agrees_with_parse_qsl_on_any_text(text: str) -> None:
    try:
        expected = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        with pytest.raises(ValueError):
            parse_form(text)
        return
    assert parse_form(text) == expected


# --- closed inputs: nothing accepted and dropped -------------------------------------------------

CLOSED = Struct(
    (
        Field("Name", Str()),
        Field("Options", Struct((Field("Mode", Str()),), refused={"Speed": "not honoured"})),
        Field(
            "Items",
            ListOf(Struct((Field("Key", Str()),), refused={})),
            wire_name="Item",
        ),
        Field("Open", Struct((Field("Known", Str()),))),
        Field("Deep", Str(), wire_name="Outer.Inner"),
        Field("Members", ListOf(Struct((Field("Key", Str()),), refused={}))),
    ),
    refused={"Colour": "not honoured"},
)


def refusal(params: Mapping[str, str], flattened: bool = True) -> tuple[str, str]:
    with pytest.raises(ApiError) as raised:
        parse_input(params, CLOSED, flattened_lists=flattened)
    return raised.value.code, raised.value.message


REFUSED = "UnsupportedOperation"
UNKNOWN = "UnknownParameter"


@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"Colour": "red"}, REFUSED, "Colour"),
        ({"Shade": "red"}, UNKNOWN, "Shade"),
        ({"Options.Speed": "9"}, REFUSED, "Options.Speed"),
        ({"Options.Pace": "9"}, UNKNOWN, "Options.Pace"),
        ({"Item.1.Key": "k", "Item.2.Value": "v"}, UNKNOWN, "Item.2.Value"),
        ({"Outer.Other": "x"}, UNKNOWN, "Outer.Other"),
        # The first in the request's order.
        ({"Name": "n", "Shade": "x", "Colour": "y"}, UNKNOWN, "Shade"),
    ],
)
def test_a_closed_input_refuses_what_it_lacks_at_any_depth(
    params: Mapping[str, str], code: str, named: str
) -> None:
    why = "is not supported: not honoured" if code == REFUSED else "is not recognized"
    assert refusal(params) == (code, f"The parameter {named} {why}")


def test_list_members_are_checked_in_the_member_form_too() -> None:
    params = {"Members.member.1.Key": "k", "Members.member.2.Colour": "c"}
    assert refusal(params, flattened=False) == (
        "UnknownParameter",
        "The parameter Members.member.2.Colour is not recognized",
    )


def test_what_a_closed_input_has_is_parsed_and_an_open_structure_is_not_checked() -> None:
    params = {
        "Action": "Run",
        "Version": "2016-11-15",
        "X-Amz-Date": "20260101T000000Z",
        "Name": "n",
        "Options.Mode": "fast",
        "Item.1.Key": "a",
        "Item.2.Key": "b",
        "Open.Known": "k",
        "Open.Whatever": "dropped",  # an open structure keeps its old behaviour
        "Outer.Inner": "deep",
    }
    assert parse_input(params, CLOSED, flattened_lists=True) == {
        "Name": "n",
        "Options": {"Mode": "fast"},
        "Items": [{"Key": "a"}, {"Key": "b"}],
        "Open": {"Known": "k"},
        "Deep": "deep",
    }


def test_an_open_input_is_not_checked() -> None:
    open_input = Struct(CLOSED.fields)
    assert parse_input({"Name": "n", "Colour": "red"}, open_input, flattened_lists=True) == {
        "Name": "n"
    }
