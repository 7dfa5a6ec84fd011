"""The cache of parsed policy documents is bounded by count and by characters, and a request's
own session policy never enters it (a refused request must leave no memory behind)."""

from __future__ import annotations

import json

import pytest

from controller import sts
from controller.authorize import ParsedDocuments, parsed
from controller.errors import ApiError, MalformedPolicyDocument
from controller.policy.document import PolicyKind


def document(index: int, padding: int = 0) -> str:
    statement = {"Effect": "Allow", "Action": f"s3:Get{index}", "Resource": "*"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]}) + " " * padding


def test_a_document_is_parsed_once_and_served_from_the_cache() -> None:
    cache = ParsedDocuments()
    assert cache(document(1)) is cache(document(1))
    assert len(cache) == 1


def test_the_same_text_as_another_kind_is_another_entry() -> None:
    cache = ParsedDocuments()
    text = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sts:AssumeRole"}],
        }
    )
    assert cache(text, PolicyKind.TRUST).statements
    with pytest.raises(MalformedPolicyDocument):
        cache(text, PolicyKind.IDENTITY)
    assert len(cache) == 1  # a document that does not parse is not kept


def test_the_least_recently_used_document_leaves_first_when_the_count_is_reached() -> None:
    cache = ParsedDocuments(max_documents=2)
    first = cache(document(1))
    cache(document(2))
    cache(document(1))  # used again: document 2 is now the oldest
    cache(document(3))
    assert len(cache) == 2
    assert cache(document(1)) is first


def test_the_characters_held_stay_within_the_budget() -> None:
    cache = ParsedDocuments(max_characters=10_000)
    for index in range(50):
        cache(document(index, padding=1_000))
        assert cache.characters <= 10_000
    assert len(cache) == 10_000 // len(document(0, padding=1_000))


def test_a_document_larger_than_the_whole_budget_is_parsed_but_not_kept() -> None:
    cache = ParsedDocuments(max_characters=1_000)
    assert cache(document(1, padding=2_000)).statements
    assert (len(cache), cache.characters) == (0, 0)


def test_checking_a_requests_session_policy_adds_nothing_to_the_cache() -> None:
    before = len(parsed)
    text = document(987_654)
    assert sts._session_policy({"Policy": text}) == text
    with pytest.raises(ApiError):
        sts._session_policy({"Policy": document(1, padding=3_000)})
    assert len(parsed) == before


def test_a_simulators_input_documents_add_nothing_to_the_cache() -> None:
    from controller.iam.simulate import _input_policies

    before = len(parsed)
    params = {"PolicyInputList": [document(123_456), document(654_321)]}
    policies = _input_policies(params, "PolicyInputList")
    assert [source.name for source in policies] == ["PolicyInputList.1", "PolicyInputList.2"]
    assert len(parsed) == before
