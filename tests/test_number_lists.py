"""The one parser of number lists ("5, 7.5, 10") that the sweep node and the CLI share."""

from __future__ import annotations

import pytest

from ipx2p_core import IP2PError, defaults
from ipx2p_core.number_lists import format_number_list, parse_number_list


@pytest.mark.parametrize("text,values", [("5, 7.5, 10", [5.0, 7.5, 10.0]), ("5,7.5,10", [5.0, 7.5, 10.0]),
                                         ("1; 1.5;2", [1.0, 1.5, 2.0]), ("  3  4\t5 ", [3.0, 4.0, 5.0]),
                                         ("-1e1", [-10.0])])
def test_commas_semicolons_or_spaces_separate_numbers(text, values):
    assert parse_number_list(text, "Text guidances") == values


def test_bad_and_empty_lists_say_what_is_wrong():
    with pytest.raises(IP2PError) as bad:
        parse_number_list("5, lots", "Text guidances")
    assert str(bad.value) == "Text guidances must be numbers separated by commas, e.g. '5, 7.5, 10'; got '5, lots'."
    with pytest.raises(IP2PError) as empty:
        parse_number_list(" , ", "--text")
    assert str(empty.value) == "--text needs at least one value, e.g. '5, 7.5, 10'; got ' , '."


def test_the_sweep_defaults_round_trip():
    assert format_number_list(defaults.SWEEP_TEXT_GUIDANCES) == "5, 7.5, 10"
    assert parse_number_list(format_number_list(defaults.SWEEP_IMAGE_GUIDANCES), "x") == [1.0, 1.5, 2.0]
