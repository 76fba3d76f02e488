"""The fewest AWS calls each custom resource request and each heal can make without giving up
what DESIGN.md promises, argued one by one, written down independently of what rolekeeper does.

Every custom resource request pays for the protocol, whatever its type:
- CloudFormation: DescribeStackResource, to confirm CloudFormation is sending this request now
  (a request nobody can prove genuine changes nothing); the Delete of a replaced physical id adds
  DescribeStacks (the resource itself shows its new id; the stack's status says this is the
  cleanup).
- DynamoDB, 2: one conditional write noting the RequestId before any work (one invocation works on
  a request at a time, and a redelivery of an answered request learns so here, instead of redoing
  work another invocation may be undoing), and one after the PUT noting that the answer was
  delivered (an invocation that died between deciding and delivering leaves an answer a redelivery
  must send; one that delivered leaves nothing to send). The answer itself is decided in the same
  transaction as the request's last registry write: no call of its own.
- DynamoDB, 1: one consistent read of the object with its claims (a Query on its key): the desired
  state is the union of the claims' wants, and every write is fenced by the version read.
- DynamoDB, 1: the second phase (issue 16). What a request removes or weakens (a prune, a claim's
  OnDelete/Heal, a release) and the claim it writes are pending until CloudFormation's bucket
  accepted the answer, so one more conditional write after the PUT puts them in force (or
  withdraws them when the bucket refused). Only CloudFormation can make a PUT that bucket accepts:
  no write before the answer can know it.
What each request adds is argued next to its entry. Counts are (IAM, KMS, DynamoDB, CloudFormation).
"""

from __future__ import annotations

SERVICES = ("iam", "kms", "dynamodb", "cloudformation")

CONFIRM = 1  # DescribeStackResource
NOTE_AND_DELIVERED = 2  # the request noted before the work, its delivery after the PUT
READ = 1  # the object and its claims, one consistent Query
SECOND_PHASE = 1  # the pending change put in force once the answer was accepted
PROTOCOL_DB = NOTE_AND_DELIVERED + READ + SECOND_PHASE

MINIMUM: dict[str, tuple[int, int, int, int]] = {
    # --- Custom::ServiceLinkedRole --------------------------------------------------------------
    # CreateServiceLinkedRole (tried first: for an existing role it answers "has been taken" and a
    # GetRole follows, which is the adopted case below) and GetRole until IAM returns the new role
    # (DESIGN: wait until IAM returns it). DynamoDB: one transaction (object, claim, answer), and
    # for the Spot Fleet role the ByGrantee index (grants registered under its name were made for
    # an older RoleId and must be re-issued for the new one).
    "SLR Create (absent: created)": (2, 0, PROTOCOL_DB + 1 + 1, CONFIRM),
    # GetRole (ARN and RoleId for the answer; Description compared). One transaction. The RoleId is
    # the one recorded: no grant can be stale, so no index read.
    "SLR Create (registered: another claim)": (1, 0, PROTOCOL_DB + 1, CONFIRM),
    # GetRole, UpdateRole (the new Description). One transaction.
    "SLR Update (Description)": (2, 0, PROTOCOL_DB + 1, CONFIRM),
    # GetRole (exists, not registered), UpdateRole (the request's Description). One transaction.
    "SLR Create (exists, not registered: adopted)": (2, 0, PROTOCOL_DB + 1, CONFIRM),
    # One transaction records the release as pending on the claim, with the answer; the second
    # phase's write deletes the claim and decrements the object's claim count. The read already
    # shows the stored claim's OnDelete (Delete acts on it) and the other claims.
    "SLR Delete (Retain)": (0, 0, PROTOCOL_DB + 1, CONFIRM),
    # As Retain: the read (its version fences the second phase's write) shows other claims remain,
    # so nothing is taken for deletion.
    "SLR Delete (Delete, claims remain)": (0, 0, PROTOCOL_DB + 1, CONFIRM),
    # As Retain, and the second phase's write that releases the last claim also marks the object
    # deleting (exactly one writer deletes: the mark must be committed before the deletion is
    # submitted); DeleteServiceLinkedRole (DESIGN: submit it, log the task id, respond); one write
    # of the object after it (the task id kept, or the item removed).
    "SLR Delete (Delete, last claim, created)": (1, 0, PROTOCOL_DB + 2, CONFIRM),
    # The record says rolekeeper did not create it: released as Retain, nothing is deleted.
    "SLR Delete (Delete, last claim, adopted: kept)": (0, 0, PROTOCOL_DB + 1, CONFIRM),
    # --- Custom::ServiceRole --------------------------------------------------------------------
    # CreateRole (tags, boundary and trust in the call; tried first as above), GetRole until IAM
    # returns it, AttachRolePolicy per policy (1), CreateInstanceProfile, AddRoleToInstanceProfile.
    # One transaction.
    "Role Create (ec2-application, absent: created; 1 policy, profile, 1 tag)": (
        5,
        0,
        PROTOCOL_DB + 1,
        CONFIRM,
    ),
    # Create converges (idempotent ensure): GetRole (trust, boundary, tags), ListAttachedRolePolicies,
    # the instance profile (GetInstanceProfile): each want checked, nothing missing. One transaction.
    "Role Create (registered: another claim, same wants)": (3, 0, PROTOCOL_DB + 1, CONFIRM),
    # As above plus AttachRolePolicy for the new policy.
    "Role Update (a policy added)": (4, 0, PROTOCOL_DB + 1, CONFIRM),
    # As above plus DetachRolePolicy (rolekeeper added it, no claim wants it now).
    "Role Update (a policy removed)": (4, 0, PROTOCOL_DB + 1, CONFIRM),
    # The remaining claims want everything this one wanted (the read shows it): one transaction
    # releases the claim; no IAM call, nothing to take away.
    "Role Delete (Retain)": (0, 0, PROTOCOL_DB + 1, CONFIRM),
    "Role Delete (Delete, claims remain)": (0, 0, PROTOCOL_DB + 1, CONFIRM),
    # GetRole (still the role rolekeeper created: marker tag or RoleId; a role someone made since
    # under that name is never deleted), ListInstanceProfilesForRole, RemoveRoleFromInstanceProfile,
    # DeleteInstanceProfile, ListAttachedRolePolicies, DetachRolePolicy, ListRolePolicies (others may
    # have added inline policies; DeleteRole fails while any remain), DeleteRole. DynamoDB: the
    # pending release with the answer (the second phase's write releases the last claim and marks
    # the object deleting), one removing the record.
    "Role Delete (Delete, last claim, created; 1 policy, profile)": (8, 0, PROTOCOL_DB + 2, CONFIRM),
    # GetRole (trust, boundary and tags judged for adoption), ListAttachedRolePolicies,
    # AttachRolePolicy (the blueprint's policy), GetInstanceProfile (there, holding the role). One
    # transaction.
    "Role Create (ecs-instance, exists, not registered: adopted; policy added)": (
        4,
        0,
        PROTOCOL_DB + 1,
        CONFIRM,
    ),
    # Not created by rolekeeper: released as Retain (its last claim keeps what it added).
    "Role Delete (Delete, last claim, adopted: kept)": (0, 0, PROTOCOL_DB + 1, CONFIRM),
    # --- Custom::SpotFleetKmsGrant ----------------------------------------------------------------
    # DescribeKey (customer managed? the key ARN), ListResourceTags (the operator's opt-in tag,
    # checked in code too), CreateGrant; GetRole of the grantee (its RoleId is part of the grant's
    # Name). One transaction.
    "Grant Create": (1, 3, PROTOCOL_DB + 1, CONFIRM),
    # Grants are immutable: a new grant, as Create (the old one goes in CloudFormation's cleanup).
    "Grant Update (Operations: a new grant)": (1, 3, PROTOCOL_DB + 1, CONFIRM),
    # DescribeStacks besides (a replaced physical id). The pending release with the answer (the
    # second phase's write releases the claim and marks the grant deleting); the ByGrantId index
    # (is the grant another record's current one? then it stays); RevokeGrant; the record removed.
    "Grant Delete (the replaced grant, CloudFormation's cleanup)": (0, 1, PROTOCOL_DB + 3, CONFIRM + 1),
    "Grant Delete (the stack's delete)": (0, 1, PROTOCOL_DB + 3, CONFIRM),
    # --- heals (no protocol: an EventBridge event) ------------------------------------------------
    # DynamoDB, 3 for every heal: the record (by the event's name), the lease taken and the heal
    # counted in one conditional write (returning the object item: its version covers the claims,
    # which are written with it, so an unchanged version needs no second read), one conditional
    # write recording the heal and giving the lease back.
    # GetRole (missing), then CreateRole, GetRole, AttachRolePolicy, CreateInstanceProfile,
    # AddRoleToInstanceProfile.
    "Heal: deleted ecsInstanceRole (with profile)": (6, 0, 3, 0),
    # GetRole (still rolekeeper's role?), ListAttachedRolePolicies (still detached?), AttachRolePolicy.
    "Heal: detached policy": (3, 0, 3, 0),
    # GetRole (boundary and marker tag come with it), PutRolePermissionsBoundary.
    "Heal: removed boundary": (2, 0, 3, 0),
    # ListGrants by GrantId (really gone?), CreateGrant (the retired grant is gone: nothing to
    # revoke); GetRole of the grantee (RoleId for the Name). The record read by its key (key ARN and
    # grant id are in the event).
    "Heal: retired grant": (1, 2, 3, 0),
    # As above, but the record's key names the first grant id: the ByGrantId index finds it.
    "Heal: revoked grant (re-issued once before)": (1, 2, 4, 0),
    # GetServiceLinkedRoleDeletionStatus (SUCCEEDED), GetRole (missing), CreateServiceLinkedRole,
    # GetRole until IAM returns it. Per grant naming the role: CreateGrant for the new RoleId and
    # RevokeGrant of the old grant (still in KMS, of use to no one). DynamoDB: the role's 3, the
    # ByGrantee index once, per grant its record, its lease and its write (3 x 2).
    "Heal: deleted SLR (task id in the event), 2 grants": (4, 4, 3 + 1 + 3 * 2, 0),
    # As above with GetRole polled (once here) instead of the deletion status.
    "Heal: deleted SLR (no task id), 2 grants": (3, 4, 3 + 1 + 3 * 2, 0),
}
