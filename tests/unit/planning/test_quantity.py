import pytest

from kubetune.planning import format_bytes, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80Gi", 80 * 2**30),
        ("81559Mi", 81559 * 2**20),
        ("80G", 80 * 10**9),
        ("141Gi", 141 * 2**30),
        ("85899345920", 85899345920),
        ("1e9", 10**9),
        ("0.5Gi", 2**29),
        ("1.5", 2),  # rounds up: memory is never over-promised
        (" 16Gi ", 16 * 2**30),
        (1024, 1024),
    ],
)
def test_parse_quantity(text: str | int, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "80GB", "eighty", "-1Gi", "100m", "1.2.3Gi", "Gi"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (80 * 2**30, "80 GiB"),
        (int(1.2 * 2**40), "1.2 TiB"),
        (1536 * 2**20, "1.5 GiB"),
    ],
)
def test_format_bytes(value: int, text: str) -> None:
    assert format_bytes(value) == text
