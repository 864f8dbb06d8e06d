"""chalicelib.records behaves as the dataclasses it replaced (each behaviour tried on a
dataclass and on a Record of the same shape), and keeps secrets out of reprs."""

import dataclasses

import pytest

from chalicelib.records import FrozenInstanceError, Record, field, field_names


@dataclasses.dataclass(frozen=True)
class FrozenDC:
    name: str
    count: int = 0
    tags: dict = dataclasses.field(default_factory=dict)
    hidden: object = dataclasses.field(default=None, repr=False, compare=False)


class FrozenRecord(Record, frozen=True):
    name: str
    count: int = 0
    tags: dict = field(default_factory=dict)
    hidden: object = field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class MutableDC:
    name: str
    items: list = dataclasses.field(default_factory=list)


class MutableRecord(Record):
    name: str
    items: list = field(default_factory=list)


FROZEN = [FrozenDC, FrozenRecord]
MUTABLE = [MutableDC, MutableRecord]


@pytest.mark.parametrize("cls", FROZEN)
def test_construction_positional_keyword_and_defaults(cls):
    a = cls("web", 2, {"k": "v"})
    assert (a.name, a.count, a.tags, a.hidden) == ("web", 2, {"k": "v"}, None)
    b = cls(name="web", count=2, tags={"k": "v"})
    assert a == b
    c = cls("web")
    assert (c.count, c.tags) == (0, {})


@pytest.mark.parametrize("cls", FROZEN)
def test_each_instance_gets_its_own_default_from_the_factory(cls):
    a, b = cls("a"), cls("b")
    assert a.tags is not b.tags


@pytest.mark.parametrize("cls", FROZEN)
@pytest.mark.parametrize("args, kwargs", [((), {}), (("a", 1, {}, None, "extra"), {}), (("a",), {"name": "b"}),
                                          (("a",), {"colour": "red"})])
def test_wrong_arguments_are_type_errors(cls, args, kwargs):
    with pytest.raises(TypeError):
        cls(*args, **kwargs)


@pytest.mark.parametrize("cls", FROZEN)
def test_frozen_refuses_assignment_and_deletion_as_an_attribute_error(cls):
    a = cls("web")
    with pytest.raises(AttributeError):
        a.name = "admin"
    with pytest.raises(AttributeError):
        del a.name
    with pytest.raises(AttributeError):
        a.new_attribute = 1
    assert a.name == "web"


def test_the_record_error_is_its_own_class():
    with pytest.raises(FrozenInstanceError):
        FrozenRecord("web").name = "admin"


@pytest.mark.parametrize("cls", FROZEN)
def test_equality_and_hash_by_compared_fields(cls):
    assert cls("web", 1, hidden="x") == cls("web", 1, hidden="y")  # compare=False
    assert hash(cls("web", 1, (), hidden="x")) == hash(cls("web", 1, (), hidden="y"))
    assert cls("web", 1) != cls("web", 2)
    assert len({cls("web", 1, ()), cls("web", 1, ())}) == 1  # a hashable tags value
    with pytest.raises(TypeError):
        hash(cls("web", 1, {"k": "v"}))  # the dict field is unhashable, as it is for a dataclass


def test_records_of_different_classes_with_the_same_fields_are_not_equal():
    class Other(Record, frozen=True):
        name: str
        count: int = 0
        tags: dict = field(default_factory=dict)
        hidden: object = field(default=None, repr=False, compare=False)

    assert Other("web") != FrozenRecord("web")
    assert FrozenRecord("web") != ("web", 0, {})


@pytest.mark.parametrize("cls", MUTABLE)
def test_mutable_records_assign_compare_and_do_not_hash(cls):
    a = cls("web")
    a.items.append(1)
    a.name = "db"
    assert a == cls("db", [1])
    with pytest.raises(TypeError):
        hash(a)


@pytest.mark.parametrize("cls", FROZEN)
def test_repr_shows_fields_but_not_those_marked_repr_false(cls):
    text = repr(cls("web", 2, hidden="s3cr3t"))
    assert text.endswith("(name='web', count=2, tags={})")
    assert text.startswith(cls.__qualname__)
    assert "s3cr3t" not in text


def test_order_compares_by_fields_as_tuples():
    class Position(Record, frozen=True, order=True):
        day: str
        offset: int = 0

    assert Position("2026-11-01", 5) < Position("2026-11-02", 0)
    assert sorted([Position("b"), Position("a", 2), Position("a", 1)]) == [Position("a", 1), Position("a", 2),
                                                                            Position("b")]
    with pytest.raises(TypeError):
        _ = Position("a") < ("a", 0)


def test_post_init_runs_after_the_fields_are_set():
    class Limited(Record, frozen=True):
        count: int = None

        def __post_init__(self):
            if self.count is None:
                object.__setattr__(self, "count", 20)

    assert Limited().count == 20
    assert Limited(5).count == 5


def test_a_required_field_after_a_default_and_a_mutable_default_are_refused_at_class_creation():
    with pytest.raises(TypeError):
        class _Bad(Record):
            a: int = 0
            b: int

    with pytest.raises(ValueError):
        class _Shared(Record):
            a: list = []  # noqa: RUF012 (the point of the test)


def test_field_names_in_declaration_order():
    assert field_names(FrozenRecord) == ("name", "count", "tags", "hidden")
    assert field_names(FrozenRecord("x")) == field_names(FrozenRecord)


def test_class_attributes_are_the_defaults_and_required_fields_have_none():
    assert FrozenRecord.count == 0
    assert not hasattr(FrozenRecord, "name")
    assert not hasattr(FrozenRecord, "tags")  # a factory's field has no class attribute (as a dataclass)


# ---- secrets stay out of reprs ----------------------------------------------------------------

def test_no_secret_in_the_repr_of_what_carries_one():
    from chalicelib.methods.aws.proof import SignedProof
    from chalicelib.methods.aws.request import AwsLoginRequest
    from chalicelib.methods.gcp.proof import GcpLoginRequest
    from chalicelib.minter import Wrap

    token = "hvs.SECRET-wrapping-token"
    session = "IQoJb3JpZ2luX2VjSECRET-session-token"
    signature = "f" * 63 + "e"
    shown = [
        repr(Wrap(token, "acc-1", 60, "2026-11-28T00:00:00Z", "auth/approle/role/web/secret-id")),
        repr(SignedProof("https://sts.amazonaws.com/", "sts.amazonaws.com",
                         (("X-Amz-Security-Token", session), ("Authorization", f"...Signature={signature}")),
                         signature, None)),
        repr(AwsLoginRequest("web", "POST", "https://sts.amazonaws.com/", b"Action=GetCallerIdentity",
                             (("X-Amz-Security-Token", session),))),
        repr(GcpLoginRequest("web", "eyJhbGciOiJSUzI1NiJ9.SECRET.sig")),
    ]
    for text in shown:
        for secret in (token, session, signature, "SECRET"):
            assert secret not in text, text
    assert "acc-1" in shown[0] and "role='web'" in shown[2]  # what is not secret is still shown


def test_a_record_extending_another_is_refused_not_silently_missing_fields():
    with pytest.raises(TypeError, match="extend"):
        class _Child(FrozenRecord):
            extra: int = 0
