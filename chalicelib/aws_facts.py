"""Facts about a verified AWS caller, read by the broker with its own credentials.

Never from the caller: tags come from IAM and EC2 directly. When an assumed-role
session is named after an EC2 instance (as EC2 names the sessions of instance
profiles), the claim is checked: the instance must exist in the caller's account,
be running, and carry the caller's role in its instance profile. A failed claim
is kept in the facts and makes the rules refuse the caller.
"""

from .arn import parse_principal_arn
from .aws_calls import try_call
from .concurrency import raise_first, settle
from .errors import InvalidProof
from .facts import CallerFacts, InstanceFacts

_NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")


class AwsFactsReader:
    def __init__(self, iam, ec2_by_region):
        self._iam = iam
        self._ec2_by_region = ec2_by_region  # {region: botocore EC2 client}

    def read(self, identity):
        arn = parse_principal_arn(identity.arn)
        if arn.account != identity.account:
            raise InvalidProof("STS answer is inconsistent: the ARN's account differs from Account")
        instance_check = (lambda: self._verify_instance(arn)) if arn.session_instance_id else (lambda: (None, None))
        tags = (lambda: self._role_tags(arn.role_name)) if arn.role_name else dict
        (instance, claim_error), role_tags = raise_first(settle(instance_check, tags))
        return CallerFacts(
            method="aws",
            account=arn.account,
            principal_arn=identity.arn,
            canonical_arn=arn.canonical_arn,
            principal_type=arn.kind,
            role_name=arn.role_name,
            session_name=arn.session_name,
            instance=instance,
            role_tags=role_tags,
            instance_claim_error=claim_error,
        )

    def _role_tags(self, role_name):
        tags, marker = {}, None
        while True:
            kwargs = {"RoleName": role_name, **({"Marker": marker} if marker else {})}
            page, missing = try_call("iam", ("NoSuchEntity",), self._iam.list_role_tags, **kwargs)
            if missing:  # the role was deleted after the session began: it has no tags
                return {}
            tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
            if not page.get("IsTruncated"):
                return tags
            marker = page["Marker"]

    def _verify_instance(self, arn):
        """(InstanceFacts, None) when the session's instance claim holds, else (None, reason)."""
        instance_id = arn.session_instance_id
        found = self._find_instance(instance_id)
        if found is None:
            return None, f"session names instance {instance_id}, which does not exist in the regions the broker reads"
        region, owner, raw = found
        if owner != arn.account:
            return None, f"instance {instance_id} belongs to another account"
        state = raw.get("State", {}).get("Name", "unknown")
        if state != "running":
            return None, f"instance {instance_id} is {state}, not running"
        profile_arn = (raw.get("IamInstanceProfile") or {}).get("Arn")
        if not profile_arn:
            return None, f"instance {instance_id} has no instance profile"
        if not self._profile_holds_role(profile_arn, arn):
            return None, f"instance {instance_id}'s instance profile does not hold role {arn.role_name}"
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
        return InstanceFacts(instance_id, region, state, profile_arn, tags), None

    def _find_instance(self, instance_id):
        for region, ec2 in self._ec2_by_region.items():
            page, missing = try_call("ec2", _NOT_FOUND, ec2.describe_instances, InstanceIds=[instance_id])
            if missing:
                continue
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    if inst.get("InstanceId") == instance_id:
                        return region, reservation.get("OwnerId"), inst
        return None

    def _profile_holds_role(self, profile_arn, arn):
        # arn:aws:iam::ACCOUNT:instance-profile/PATH/NAME
        parts = profile_arn.split(":", 5)
        if len(parts) != 6 or parts[4] != arn.account:
            return False
        name = parts[5].rsplit("/", 1)[-1]
        page, missing = try_call("iam", ("NoSuchEntity",), self._iam.get_instance_profile, InstanceProfileName=name)
        if missing:
            return False
        roles = page.get("InstanceProfile", {}).get("Roles", [])
        return any(r.get("RoleName") == arn.role_name and r.get("Arn", "").split(":")[4:5] == [arn.account] for r in roles)

