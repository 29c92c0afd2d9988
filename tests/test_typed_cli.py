"""The command-line generator's typed options: ``Literal`` choices and tuple/list fields, on
small local configs (a nested group with a prefix, an optional ``Literal``, a tuple of floats, a
list of ints, a tuple of ``Literal``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

import pytest

from agents.checks import check_literals, group
from agents.harness.config import build_config
from scripts.flags import add_dataclass_args, dataclass_from_args


@dataclasses.dataclass
class Adapter:
    rank: int = 0
    """Adapter rank."""
    kind: Literal["lora", "dora"] = "lora"
    """Adapter kind."""

    def __post_init__(self) -> None:
        check_literals(self, prefix="adapter_")


@dataclasses.dataclass
class Run:
    quick: bool = False
    """Tiny sizes."""
    rate: float = 0.1
    """Learning rate."""
    mode: Literal["fast", "exact"] = "fast"
    """How to compute it."""
    fallback: Literal["cpu", "disk"] | None = None
    """Where to go when out of memory."""
    betas: tuple[float, ...] = (0.1, 0.3)
    """KL coefficients to sweep."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    """Seeds to run."""
    stages: tuple[Literal["sft", "rl"], ...] = ("sft",)
    """Stages to run."""
    adapter: Adapter = group(Adapter, prefix="adapter_")

    def __post_init__(self) -> None:
        check_literals(self)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run")
    add_dataclass_args(parser, Run)
    return parser


def parse(argv: list[str]) -> Run:
    return dataclass_from_args(Run, parser().parse_args(argv))


def parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_no_options_give_the_defaults():
    assert parse([]) == Run()


@pytest.mark.parametrize(
    "argv",
    [
        ["--betas", "0.2", "0.4"],
        ["--betas", "0.2,0.4"],
        ["--betas", "0.2,", "0.4"],
        ["--betas", "0.2, 0.4"],
        ["--betas=0.2,0.4"],
    ],
)
def test_tuple_option_takes_spaces_or_commas(argv):
    betas = parse(argv).betas
    assert betas == (0.2, 0.4) and type(betas) is tuple


def test_list_option_gives_a_list_of_the_item_type():
    assert parse(["--seeds", "3", "4"]).seeds == [3, 4]
    assert parse(["--seeds", "3,4,5"]).seeds == [3, 4, 5]
    assert type(parse(["--seeds", "3"]).seeds) is list


def test_sequence_edge_values():
    assert parse(["--betas", "-1", "0.5"]).betas == (-1.0, 0.5)
    assert parse(["--betas", ""]).betas == ()
    assert parse(["--stages", "rl,sft"]).stages == ("rl", "sft")


def test_round_trip_of_every_kind_of_option():
    argv = "--quick --rate 0.5 --mode exact --fallback disk --betas 1,2 --seeds 7 --stages rl "
    argv += "--adapter-rank 4 --adapter-kind dora"
    expected = Run(
        quick=True, rate=0.5, mode="exact", fallback="disk", betas=(1.0, 2.0), seeds=[7],
        stages=("rl",), adapter=Adapter(rank=4, kind="dora"),
    )  # fmt: skip
    assert parse(argv.split()) == expected
    assert parse(["--fallback", "none", "--no-quick"]) == Run()


def test_help_lists_choices_and_defaults(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--mode {fast,exact} How to compute it. (default: fast)" in text
    assert "--fallback {cpu,disk,none}" in text
    assert "--adapter-kind {lora,dora}" in text
    assert "--betas FLOAT [FLOAT ...] KL coefficients to sweep. (default: 0.1 0.3)" in text
    assert "--seeds INT [INT ...] Seeds to run. (default: 0 1)" in text
    assert "--stages {sft,rl} [{sft,rl} ...]" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--mode", "slow"],
            "argument --mode: invalid choice: 'slow' (choose from 'fast', 'exact')",
        ),
        (["--adapter-kind", "x"], "argument --adapter-kind: invalid choice: 'x'"),
        (["--fallback", "gpu"], "argument --fallback: invalid choice: 'gpu'"),
        (["--betas", "0.1,x"], "argument --betas: 'x' is not a float"),
        (["--betas", "0.1", "x"], "argument --betas: 'x' is not a float"),
        (["--seeds", "1", "two"], "argument --seeds: 'two' is not an int"),
        (["--stages", "sft,ppo"], "argument --stages: 'ppo' is not one of sft, rl"),
        (["--adapter-rank", "x"], "argument --adapter-rank: invalid int value: 'x'"),
    ],
)
def test_bad_values_are_errors_naming_the_option(argv, message, capsys):
    assert message in parse_error(argv, capsys)


def test_check_literals_names_field_value_and_choices():
    with pytest.raises(ValueError, match=r"^mode must be one of \['exact', 'fast'\], got 'slow'$"):
        Run(mode="slow")
    with pytest.raises(ValueError, match=r"^adapter_kind must be one of \['dora', 'lora'\]"):
        Adapter(kind="x")
    with pytest.raises(ValueError, match=r"^stages must be one of \['rl', 'sft'\], got 'ppo'"):
        Run(stages=("sft", "ppo"))
    with pytest.raises(TypeError, match=r"^stages must be a tuple, got 'sft'"):
        Run(stages="sft")
    assert Run(fallback=None).fallback is None


def test_build_config_takes_lists_or_tuples_for_sequence_fields():
    config = build_config(Run, {"betas": [0.5], "seeds": (2, 3), "adapter.kind": "dora"})
    assert config == Run(betas=(0.5,), seeds=[2, 3], adapter=Adapter(kind="dora"))
    assert type(config.betas) is tuple and type(config.seeds) is list
    with pytest.raises(ValueError, match="adapter_kind must be one of"):
        build_config(Run, {"adapter.kind": "x"})


def test_a_type_without_conversion_is_an_error_naming_it():
    @dataclasses.dataclass
    class Untyped:
        table: set = dataclasses.field(default_factory=set)

    with pytest.raises(TypeError, match="no command-line conversion for field type"):
        add_dataclass_args(argparse.ArgumentParser(), Untyped)
