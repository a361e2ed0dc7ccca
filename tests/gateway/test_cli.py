"""`cascade recommend` / `cascade feedback` at first contact: usage errors for values the wire
cannot carry, help that describes the command at hand, one actionable line when the stack is down,
and the page table's header."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from cascade.v1 import common_pb2, gateway_pb2
from gateway.cli import (
    INT64_MAX,
    LEGEND,
    feedback_main,
    page_table,
    plural,
    recommend_main,
)
from gateway.server import GatewaySettings


def usage_error(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (recommend_main, ["--user", str(INT64_MAX + 1)], f"outside 0..{INT64_MAX}"),
        (recommend_main, ["--user", "-1"], f"outside 0..{INT64_MAX}"),
        (recommend_main, ["--user", "abc"], "not an integer: 'abc'"),
        (feedback_main, ["--user", str(INT64_MAX + 1), "--item", "50"], f"outside 1..{INT64_MAX}"),
        (feedback_main, ["--user", "196", "--item", "0"], f"outside 1..{INT64_MAX}"),
        (feedback_main, ["--user", "0", "--item", "50"], f"outside 1..{INT64_MAX}"),
    ],
)
def test_ids_outside_int64_are_usage_errors(main, argv, message, capsys):
    err = usage_error(main, argv, capsys)
    assert message in err and "Traceback" not in err


def test_the_largest_int64_id_is_accepted_by_the_parser(capsys):
    # Past argparse it reaches the (absent) gateway: exit 1 with the not-reachable line, not 2.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{held.getsockname()[1]}"
        code = recommend_main(["--user", str(INT64_MAX), "--target", target, "--timeout", "1"])
    assert code == 1 and "not reachable" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["-5", "0", str(GatewaySettings.max_count + 1)])
def test_a_count_outside_the_gateways_range_is_refused_not_changed(count, capsys):
    err = usage_error(recommend_main, ["--user", "196", "--count", count], capsys)
    assert f"argument --count: {count} is outside 1..{GatewaySettings.max_count}" in err


def test_feedback_help_describes_only_feedback(capsys):
    with pytest.raises(SystemExit):
        feedback_main(["--help"])
    out = capsys.readouterr().out
    assert "send a user's events" in out
    assert "recommend" not in out
    with pytest.raises(SystemExit):
        recommend_main(["--help"])
    out = capsys.readouterr().out
    assert "recommendations" in out and "feedback" not in out
    assert f"1..{GatewaySettings.max_count}" in out  # --count says its range


@pytest.mark.parametrize(
    "argv",
    [["recommend", "--user", "196"], ["feedback", "--user", "196", "--item", "50"]],
)
def test_with_the_stack_down_one_line_says_how_to_start_it(argv):
    with socket.socket() as held:  # bound, never listening: refused for the whole test
        held.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{held.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *argv, "--target", target, "--timeout", "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"cascade {argv[0]}: the gateway at {target} is not reachable; start it with `make up`"
    ]


def test_the_page_table_has_a_header_and_each_item_its_channels():
    response = gateway_pb2.RecommendResponse(
        items=common_pb2.CandidateList(
            item_ids=[50, 7],
            scores=[0.9, 0.25],
            channel_masks=[1 << common_pb2.CHANNEL_MF | 1 << common_pb2.CHANNEL_POPULAR, 0],
        )
    )
    header, first, second = page_table(response, {50: "Star Wars (1977)"})
    assert header.split() == ["#", "item", "score", "title", "found", "by"]
    assert first.split() == ["1.", "50", "0.9000", "Star", "Wars", "(1977)", "popular,mf"]
    assert second.split() == ["2.", "7", "0.2500", "?"]
    assert "found by" in LEGEND and "two_tower" in LEGEND and "mf" in LEGEND
    response.explored_positions.append(1)  # a slot exploration filled says so
    assert page_table(response, {})[2].split() == ["2.", "7", "0.2500", "?", "[explored]"]


def test_plural():
    assert [plural(n, "item") for n in (0, 1, 2)] == ["0 items", "1 item", "2 items"]
