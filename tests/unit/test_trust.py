"""Merging the blueprint's trust statement into a role's document (issue 16): conditions an
administrator added stay, rolekeeper's own other variant is replaced, anything weaker goes."""

from __future__ import annotations

from rolekeeper.domain.trust import covers, merged_trust

PRINCIPALS = ("spotfleet.amazonaws.com",)
BARE = {"Effect": "Allow", "Principal": {"Service": "spotfleet.amazonaws.com"}, "Action": "sts:AssumeRole"}
PROTECTED = {**BARE, "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}
OWN = (PROTECTED, BARE)


def doc(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def test_a_statement_with_the_blueprints_conditions_and_more_covers_it():
    narrowed = {
        **PROTECTED,
        "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012", "aws:SourceOrgID": "o-1"}},
    }
    assert covers(narrowed, PROTECTED, PRINCIPALS)
    assert merged_trust(doc(narrowed), PROTECTED, PRINCIPALS, OWN) == doc(narrowed)


def test_a_condition_with_another_value_or_missing_does_not_cover():
    other_account = {**BARE, "Condition": {"StringEquals": {"aws:SourceAccount": "210987654321"}}}
    assert not covers(other_account, PROTECTED, PRINCIPALS)
    assert not covers(BARE, PROTECTED, PRINCIPALS)
    assert merged_trust(doc(other_account), PROTECTED, PRINCIPALS, OWN) == doc(PROTECTED)


def test_a_statement_trusting_another_principal_too_does_not_cover():
    wider = {
        **PROTECTED,
        "Principal": {"Service": "spotfleet.amazonaws.com", "AWS": "arn:aws:iam::123456789012:root"},
    }
    assert not covers(wider, PROTECTED, PRINCIPALS)
    merged = merged_trust(doc(wider), PROTECTED, PRINCIPALS, OWN)
    assert merged["Statement"] == [
        {**PROTECTED, "Principal": {"AWS": "arn:aws:iam::123456789012:root"}},
        PROTECTED,
    ]


def test_rolekeepers_own_other_variant_is_replaced_not_kept():
    # protection switched off: the protected statement covers the bare one, but it is rolekeeper's own
    assert covers(PROTECTED, BARE, PRINCIPALS)
    assert merged_trust(doc(PROTECTED), BARE, PRINCIPALS, OWN) == doc(BARE)
    # without knowing its own variants, it would be kept as an administrator's narrowing
    assert merged_trust(doc(PROTECTED), BARE, PRINCIPALS) == doc(PROTECTED)


def test_one_statement_stays_for_the_principal_the_narrowed_one():
    narrowed = {**PROTECTED, "Condition": {**PROTECTED["Condition"], "Bool": {"aws:SecureTransport": "true"}}}
    merged = merged_trust(doc(PROTECTED, narrowed, BARE), PROTECTED, PRINCIPALS, OWN)
    assert merged == doc(narrowed)


def test_arn_like_matches_each_part_of_the_arn_on_its_own():
    from rolekeeper.domain.validation import arn_like

    assert arn_like("arn:aws:iam::*:policy/app-boundary", "arn:aws:iam::123456789012:policy/app-boundary")
    assert not arn_like(
        "arn:aws:iam::*:policy/app-boundary", "arn:aws:iam::123456789012:policy/app-boundary-v2"
    )
    # * does not cross a colon: the account part cannot swallow the resource
    assert not arn_like("arn:aws:iam::*", "arn:aws:iam::123456789012:policy/app-boundary")
    assert arn_like("arn:aws:iam::aws:policy/*", "arn:aws:iam::aws:policy/AdministratorAccess")
    assert not arn_like("arn:aws:iam::aws:policy/Power?ser", "arn:aws:iam::aws:policy/PowerUserAccess")
