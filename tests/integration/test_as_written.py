"""objects.as_written: the record a fenced write leaves, known without reading it (a request's
second phase plans from it). It must be what a consistent read returns right after the write,
for every kind of change the write path makes; where it cannot know, it says so (None), and a
plan made from a guessed version is refused by an exact fence instead of landing."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from rolekeeper.aws.registry import Change, Fence, FenceMoved, Registry
from rolekeeper.aws.registry.objects import as_written
from rolekeeper.domain.records import Claim, Kind, Pending, Record

KEY = "ROLE#app-web"
NOW = 1_800_000_000.0


def objects():
    return Registry(os.environ["REGISTRY_TABLE_NAME"]).objects


def claim(logical_id: str, **pending: object) -> Claim:
    wants = {"name": "app-web", "policies": [f"arn:aws:iam::aws:policy/{logical_id}"]}
    return Claim(
        "arn:aws:cloudformation:us-east-1:111122223333:stack/s/1",
        logical_id,
        True,
        "Retain",
        wants,
        Pending("r-" + logical_id, **pending) if pending else None,  # type: ignore[arg-type]
    )


def same(known: Record | None, read: Record | None) -> None:
    assert known is not None and read is not None
    assert known == read
    # Claim equality compares keys only: compare what they hold too.
    assert [(c.wants, c.pending, c.heal, c.on_delete) for c in known.claims] == [
        (c.wants, c.pending, c.heal, c.on_delete) for c in read.claims
    ]


def test_each_kind_of_change_is_known_as_a_read_returns_it(aws):
    store = objects()
    steps = [
        lambda r: (
            Fence(r),
            Change(
                Kind.ROLE, attrs={"name": "app-web", "arn": "a"}, created=True, claim=claim("B", new=True)
            ),
        ),
        lambda r: (Fence(r), Change(Kind.ROLE, added=frozenset({"policy:x", "tag:team"}), claim=claim("A"))),
        lambda r: (Fence(r, exact=False), Change(Kind.ROLE, attrs={"role_id": "AROA1"}, claim=claim("B"))),
        lambda r: (
            Fence(r, lease_free=True),
            Change(Kind.ROLE, pieces=frozenset({"tag:team"}), release=claim("A")),
        ),
        lambda r: (Fence(r), Change(Kind.ROLE, pieces=frozenset(), healed_at=NOW + 0.12345)),
        lambda r: (Fence(r, exact=False), Change(Kind.ROLE, claim=claim("C", release=True))),
    ]
    record = None
    for step in steps:
        fence, change = step(record)
        known = store.write(KEY, fence, change, now=NOW)
        record = store.read(KEY)
        same(known, record)


def test_a_guessed_version_is_refused_by_an_exact_fence(aws):
    store = objects()
    store.write(KEY, Fence(None), Change(Kind.ROLE, created=True, claim=claim("A")), now=NOW)
    first = store.read(KEY)
    # Another writer's write lands between this writer's read and its (non-exact) write.
    store.write(KEY, Fence(first, exact=False), Change(Kind.ROLE, claim=claim("B")), now=NOW)
    known = store.write(KEY, Fence(first, exact=False), Change(Kind.ROLE, claim=claim("C")), now=NOW)
    assert known is not None and known.version == store.read(KEY).version - 1  # a guess, and wrong
    with pytest.raises(FenceMoved):
        store.write(KEY, Fence(known), Change(Kind.ROLE, release=claim("C")), now=NOW)
    assert store.read(KEY).claim_of(claim("C").sk) is not None


def test_a_record_0_1_0_wrote_is_not_guessed(aws):
    store = objects()
    store.write(KEY, Fence(None), Change(Kind.ROLE, claim=claim("A")), now=NOW)
    read = store.read(KEY)
    legacy = replace(read, format=1, legacy_desired={"name": "app-web"})
    assert as_written(KEY, Fence(legacy, exact=False), Change(Kind.ROLE, claim=claim("B")), now=NOW) is None


def test_a_last_release_taking_the_object_is_known_as_read_and_refused_while_another_claim_counts(aws):
    store = objects()
    store.write(KEY, Fence(None), Change(Kind.ROLE, created=True, claim=claim("A")), now=NOW)
    store.write(KEY, Fence(store.read(KEY), exact=False), Change(Kind.ROLE, claim=claim("B")), now=NOW)
    stale = replace(store.read(KEY), claims=[claim("A")], claim_count=1)  # as if B's claim were unseen
    with pytest.raises(FenceMoved):
        store.write(
            KEY,
            Fence(stale, exact=False),
            Change(Kind.ROLE, release=claim("A"), take_for_deletion="t"),
            now=NOW,
        )
    assert not store.read(KEY).deleting and len(store.read(KEY).claims) == 2
    store.write(KEY, Fence(store.read(KEY)), Change(Kind.ROLE, release=claim("B")), now=NOW)
    known = store.write(
        KEY, Fence(store.read(KEY)), Change(Kind.ROLE, release=claim("A"), take_for_deletion="t"), now=NOW
    )
    record = store.read(KEY)
    assert record.deleting and record.deleting_by == "t"
    same(known, record)
