"""Country Groups by date: the shipped dated changes, territory resolution, and bad files."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from gpucap.core.data import read_yaml, shipped
from gpucap.core.errors import DataError
from gpucap.core.groups import CountryGroups, default_groups, parse_groups
from gpucap.core.ruleset import country_codes

CODES = country_codes()


@pytest.fixture(scope="module")
def groups() -> CountryGroups:
    return default_groups()


def test_shipped_file_has_the_groups_the_rules_name(groups: CountryGroups) -> None:
    assert groups.names == {"A:5", "A:6", "D:1", "D:3", "D:4", "D:5", "Macau"}


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        (date(2026, 7, 9), {"D:3", "D:4"}),
        (date(2026, 7, 10), {"A:5"}),
    ],
)
def test_uae_moves_from_d3_d4_to_a5_on_2026_07_10(
    groups: CountryGroups, on: date, expected: set[str]
) -> None:
    assert groups.groups_of("AE", on) == expected
    assert groups.is_member("AE", "D:4", on) == (on < date(2026, 7, 10))
    assert groups.is_member("AE", "A:5", on) == (on >= date(2026, 7, 10))


def test_uae_membership_carries_its_own_provenance(groups: CountryGroups) -> None:
    a5 = groups.membership("AE", "A:5", date(2026, 7, 10))
    assert a5 is not None
    assert (a5.start, a5.end, a5.confidence) == (date(2026, 7, 10), None, "secondary")
    assert a5.source.startswith("S63")
    d4 = groups.membership("AE", "D:4", date(2026, 7, 9))
    assert d4 is not None
    assert d4.end == date(2026, 7, 10)
    assert groups.membership("AE", "D:4", date(2026, 7, 10)) is None


def test_cambodia_leaves_d5_on_2026_02_03_and_keeps_d1(groups: CountryGroups) -> None:
    assert groups.is_member("KH", "D:5", date(2026, 2, 2))
    assert not groups.is_member("KH", "D:5", date(2026, 2, 3))
    assert "KH" in groups.members("D:5", date(2026, 2, 2))
    assert "KH" not in groups.members("D:5", date(2026, 2, 3))
    assert groups.is_member("KH", "D:1", date(2026, 2, 3))
    assert date(2026, 2, 3) in groups.changes("D:5")


def test_hong_kong_is_counted_as_china(groups: CountryGroups) -> None:
    on = date(2026, 12, 1)
    assert groups.resolve("HK") == "CN"
    assert groups.resolve("SG") == "SG"
    assert groups.groups_of("HK", on) == groups.groups_of("CN", on)
    found = groups.membership("HK", "D:5", on)
    assert found is not None
    assert found.country == "CN"
    assert "HK" not in groups.members("D:5", on)  # listed members only


def test_macau_has_its_own_group_and_is_not_d5(groups: CountryGroups) -> None:
    on = date(2026, 12, 1)
    assert groups.members("Macau", on) == {"MO"}
    assert groups.is_member("MO", "Macau", on)
    assert not groups.is_member("MO", "D:5", on)
    assert not groups.is_member("CN", "Macau", on)


def test_israel_is_in_d4_and_a6(groups: CountryGroups) -> None:
    """The destination rule's "D:1, D:4 or D:5, not also in A:5 or A:6" needs both lookups."""
    assert {"D:4", "A:6"} <= groups.groups_of("IL", date(2026, 12, 1))


def test_changes_are_sorted_dates_and_empty_for_a_static_group(groups: CountryGroups) -> None:
    assert groups.changes("A:5") == (date(2026, 7, 10),)
    d5 = groups.changes("D:5")
    assert list(d5) == sorted(d5)
    assert groups.changes("Macau") == ()


@pytest.mark.parametrize(
    "lookup",
    [
        lambda g: g.membership("CN", "D:9", date(2026, 1, 1)),
        lambda g: g.is_member("CN", "D:9", date(2026, 1, 1)),
        lambda g: g.members("D:9", date(2026, 1, 1)),
        lambda g: g.changes("D:9"),
    ],
)
def test_unknown_group_is_a_data_error_naming_it(groups: CountryGroups, lookup: Any) -> None:
    with pytest.raises(DataError, match=r"country-groups\.yaml\.groups: no country group 'D:9'"):
        lookup(groups)


def test_every_code_in_the_shipped_file_is_a_country(groups: CountryGroups) -> None:
    assert {p.country for p in groups.periods} <= CODES
    assert all(p.source and p.confidence for p in groups.periods)


# --- invalid files -----------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    return {
        "schema": "gpucap.country-groups/v1",
        "treated_as": {"HK": {"country": "CN", "source": "S20", "confidence": "secondary"}},
        "groups": {
            "D:5": {
                "title": "D:5",
                "source": "S19",
                "confidence": "secondary",
                "members": [
                    {"countries": ["CN", "RU"]},
                    {"countries": ["KH"], "until": "2026-02-03"},
                ],
            }
        },
    }


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()
_D5 = ("groups", "D:5")
_M0 = (*_D5, "members", 0)
_M1 = (*_D5, "members", 1)


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        ((*_M0, "countries"), ["CN", "XX"], "groups.D:5.members[0].countries[1]", "XX"),
        ((*_M0, "countries"), ["cn"], "groups.D:5.members[0].countries[0]", "ISO 3166-1"),
        ((*_M0, "countris"), ["CN"], "groups.D:5.members[0].countris", "unknown field"),
        ((*_D5, "titel"), "x", "groups.D:5.titel", "unknown field"),
        (("extra",), 1, "extra", "unknown field"),
        ((*_M1, "from"), "2026-02-03", "groups.D:5.members[1].until", "after from"),
        ((*_M1, "from"), "2026-03-01", "groups.D:5.members[1].until", "after from"),
        ((*_M1, "until"), "2026-02-30", "groups.D:5.members[1].until", "not a valid date"),
        ((*_D5, "source"), _DELETE, "groups.D:5.members[0].source", "non-empty string"),
        ((*_D5, "confidence"), _DELETE, "groups.D:5.members[0].confidence", "non-empty"),
        ((*_D5, "confidence"), "likely", "groups.D:5.confidence", "primary"),
        ((*_M1, "confidence"), "sure", "groups.D:5.members[1].confidence", "unconfirmed"),
        ((*_D5, "members"), [], "groups.D:5.members", "non-empty list"),
        ((*_D5, "title"), _DELETE, "groups.D:5.title", "non-empty string"),
        (("schema",), "gpucap.country-groups/v2", "schema", "expected"),
        (("treated_as", "HK", "country"), "ZZ", "treated_as.HK.country", "ISO 3166-1"),
        (("treated_as", "HK", "country"), "HK", "treated_as.HK.country", "itself"),
        (("treated_as", "HK", "confidence"), _DELETE, "treated_as.HK.confidence", "non-empty"),
        ((*_M0, "countries"), ["HK"], "groups.D:5.members[0].countries[0]", "treated_as"),
        (("groups",), {}, "groups", "at least one group"),
        (("groups", "D 5"), {"title": "x"}, "groups.D 5", "group name"),
    ],
)
def test_invalid_file_names_the_field(
    path: tuple[Any, ...], value: Any, field: str, reason: str
) -> None:
    doc = _doc()
    _set(doc, path, value)
    with pytest.raises(DataError) as caught:
        parse_groups(doc, CODES, "cg")
    assert caught.value.path == f"cg.{field}"
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("existing", "added"),
    [
        ({}, {}),  # both open-ended
        ({}, {"from": "2030-01-01"}),
        ({"until": "2026-02-03"}, {"from": "2026-02-02"}),
        ({"from": "2020-01-01", "until": "2021-01-01"}, {"until": "2020-06-01"}),
    ],
)
def test_overlapping_periods_for_one_country_are_refused(
    existing: dict[str, str], added: dict[str, str]
) -> None:
    doc = _doc()
    members = doc["groups"]["D:5"]["members"]
    members[:] = [{"countries": ["KH"], **existing}, {"countries": ["KH"], **added}]
    with pytest.raises(DataError) as caught:
        parse_groups(doc, CODES, "cg")
    assert caught.value.path == "cg.groups.D:5.members[1].countries[0]"
    assert "overlapping" in caught.value.reason


def test_a_country_listed_twice_in_one_row_is_an_overlap() -> None:
    doc = _doc()
    doc["groups"]["D:5"]["members"][0]["countries"] = ["CN", "CN"]
    with pytest.raises(DataError, match=r"members\[0\]\.countries\[1\]: CN is already a member"):
        parse_groups(doc, CODES, "cg")


def test_adjacent_periods_are_allowed_and_end_is_exclusive() -> None:
    doc = _doc()
    doc["groups"]["D:5"]["members"].append({"countries": ["KH"], "from": "2027-01-01"})
    parsed = parse_groups(doc, CODES, "cg")
    assert parsed.is_member("KH", "D:5", date(2026, 2, 2))
    assert not parsed.is_member("KH", "D:5", date(2026, 12, 31))
    assert parsed.is_member("KH", "D:5", date(2027, 1, 1))
    assert parsed.changes("D:5") == (date(2026, 2, 3), date(2027, 1, 1))


def test_row_provenance_overrides_the_groups() -> None:
    doc = _doc()
    doc["groups"]["D:5"]["members"][1].update({"source": "S61", "confidence": "primary"})
    parsed = parse_groups(doc, CODES, "cg")
    kh = parsed.membership("KH", "D:5", date(2026, 1, 1))
    cn = parsed.membership("CN", "D:5", date(2026, 1, 1))
    assert kh is not None
    assert (kh.source, kh.confidence) == ("S61", "primary")
    assert cn is not None
    assert (cn.source, cn.confidence) == ("S19", "secondary")


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(DataError, match=r"^cg: expected a mapping, got list"):
        parse_groups([], CODES, "cg")


def test_shipped_file_round_trips_through_the_parser() -> None:
    doc = read_yaml(shipped("country-groups.yaml"))
    parsed = parse_groups(copy.deepcopy(doc), CODES, "x")
    assert parsed.names == default_groups().names
    assert len(parsed.periods) == len(default_groups().periods)
