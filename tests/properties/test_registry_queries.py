"""Page tokens, field masks, update masks and id filters of the built-in registry: query
parameters any caller sets. Each parses or is refused with an ApiError (a 4xx), never
another exception (a 500); a page token the registry wrote reads back as the same id."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from provisioner.cloud.resources import (
    _ID,
    DEVICE_FIELDS,
    DEVICE_UPDATABLE,
    decode_page_token,
    encode_page_token,
    parse_field_mask,
    parse_id_filter,
    parse_num_id_filter,
    parse_update_mask,
)
from provisioner.cloud.status import ApiError
from tests.properties.bounded import bounded

IDS = st.from_regex(_ID, fullmatch=True)


@bounded(300)
@given(device_id=IDS)
def test_page_tokens_round_trip(device_id: str) -> None:
    token = encode_page_token(device_id)
    assert token.isascii() and "=" not in token
    assert decode_page_token(token) == device_id


@bounded(400)
@given(token=st.one_of(st.text(max_size=80), st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True)))
@example(token="é")  # not ASCII: base64 decoding raises a plain ValueError
@example(token="\x00")
def test_any_page_token_is_an_id_or_invalid(token: str) -> None:
    try:
        after = decode_page_token(token)
    except ApiError:
        return
    assert after is None or _ID.fullmatch(after)


@bounded(300)
@given(device_id=IDS, at=st.integers(min_value=0), char=st.characters())
def test_altered_page_tokens_are_ids_or_invalid(device_id: str, at: int, char: str) -> None:
    token = encode_page_token(device_id)
    i = at % len(token)
    try:
        after = decode_page_token(token[:i] + char + token[i + 1 :])
    except ApiError:
        return
    assert after is not None and _ID.fullmatch(after)


MASK_PARTS = st.one_of(
    st.sampled_from(sorted(DEVICE_FIELDS)),
    st.sampled_from(sorted(DEVICE_FIELDS)).map(lambda f: f.title().replace("_", "")),
    st.text(max_size=20),
)


@bounded(300)
@given(parts=st.lists(MASK_PARTS, max_size=6))
def test_any_field_mask_is_a_set_of_device_fields_or_invalid(parts: list[str]) -> None:
    try:
        fields = parse_field_mask(",".join(parts))
    except ApiError:
        return
    assert fields <= DEVICE_FIELDS


@bounded(200)
@given(fields=st.sets(st.sampled_from(sorted(DEVICE_FIELDS)), min_size=1))
def test_field_masks_naming_device_fields_keep_them(fields: set[str]) -> None:
    assert parse_field_mask(",".join(sorted(fields))) == fields | {"id", "num_id"}


@bounded(300)
@given(parts=st.lists(MASK_PARTS, max_size=6))
def test_any_update_mask_is_updatable_fields_or_invalid(parts: list[str]) -> None:
    try:
        fields = parse_update_mask(",".join(parts), DEVICE_UPDATABLE, "device")
    except ApiError:
        return
    assert fields and fields <= DEVICE_UPDATABLE


@bounded(300)
@given(values=st.lists(st.text(max_size=30), max_size=4))
def test_any_device_id_filter_is_ids_or_invalid(values: list[str]) -> None:
    try:
        ids = parse_id_filter(values)
    except ApiError:
        return
    assert ids is None or all(_ID.fullmatch(i) for i in ids)


@bounded(300)
@given(values=st.lists(st.text(max_size=30), max_size=4))
@example(values=["²"])  # a Unicode digit int() refuses
@example(values=["١٢"])  # Arabic-Indic digits: not a uint64 on the wire either
def test_any_num_id_filter_is_numbers_or_invalid(values: list[str]) -> None:
    try:
        ids = parse_num_id_filter(values)
    except ApiError:
        return
    assert ids is None or all(isinstance(i, int) and i >= 0 for i in ids)
    assert ids is None or all(str(i) in ",".join(values) for i in ids)


@bounded(200)
@given(nums=st.lists(st.integers(min_value=0, max_value=2**63 - 1), min_size=1, max_size=5))
def test_num_id_filters_round_trip(nums: list[int]) -> None:
    assert parse_num_id_filter([",".join(map(str, nums))]) == frozenset(nums)
