"""The command line's vocabulary: one meaning per flag name, help that says what each flag does
and its default, the old spellings as warning aliases of the new ones, `ddpm --version`, the
explicit `theory --sweep`, and examples (in the new names) at the end of every command's help."""

from __future__ import annotations

import argparse
import json
import re
import shlex

import pytest

import ddpm
from ddpm.cli.flags import REMOVED_IN, aliases
from ddpm.cli.main import _parser, commands, main

PARSER = _parser()
COMMANDS = commands(PARSER)
# positionals that make each command's flags parse
POSITIONALS = {
    "train": [], "sample": ["runs/x"], "forward": ["img.png"], "report": ["runs/x"],
    "evaluate": ["runs/x"], "theory": ["gaussian"], "vae train": [],
    "vae evaluate": ["runs/v"], "vae compare": ["runs/x", "runs/v"],
}  # fmt: skip
# (command, old spelling, new spelling, values): every deprecated alias, per vocabulary
ALIASES = [
    ("train", "--steps", "--max-steps", ["7"]),
    ("train", "--T", "--diffusion-steps", ["7"]),
    ("train", "--clip-x0", "--clip-denoised", []),
    ("train", "--no-clip-x0", "--no-clip-denoised", []),
    ("train", "--model", "--net", ["mlp"]),
    ("vae train", "--steps", "--max-steps", ["7"]),
    ("sample", "--n", "--num-samples", ["7"]),
    ("sample", "--clip", "--clip-denoised", []),
    ("sample", "--no-clip", "--no-clip-denoised", []),
    ("sample", "--steps", "--respacing", ["ddim5"]),
    ("sample", "--spacing", "--timestep-spacing", ["trailing"]),
    ("forward", "--T", "--diffusion-steps", ["7"]),
    ("forward", "--size", "--image-size", ["16"]),
    ("report", "--n", "--num-examples", ["7"]),
    ("evaluate", "--n", "--num-examples", ["7"]),
    ("evaluate", "--clip", "--clip-denoised", []),
    ("evaluate", "--no-clip", "--no-clip-denoised", []),
    ("evaluate", "--steps", "--respacing", ["10", "ddim5"]),
    ("evaluate", "--spacing", "--timestep-spacing", ["leading"]),
    ("evaluate", "--samples", "--num-samples", ["7"]),
    ("theory", "--T", "--diffusion-steps", ["7", "9"]),
    ("theory", "--n", "--num-examples", ["7"]),
    ("theory", "--steps", "--respacing", ["5"]),
    ("theory", "--spacing", "--timestep-spacing", ["linspace"]),
    ("vae evaluate", "--n", "--num-examples", ["7"]),
    ("vae evaluate", "--samples", "--z-draws", ["7"]),
    ("vae compare", "--n", "--num-examples", ["7"]),
    ("vae compare", "--iw", "--vae-iw", ["1", "10"]),
]
OLD = {"--n", "--T", "--steps", "--samples", "--spacing", "--size", "--model", "--clip",
       "--no-clip", "--clip-x0", "--no-clip-x0"}  # fmt: skip
# A name used by several commands means one thing: its help is the same text everywhere, or
# (where the wording differs by command) says this everywhere.
MEANING = {
    "--channels": r"base channels",
    "--clip-denoised": r"predicted x0 .*\[-1, 1\]",
    "--no-clip-denoised": r"predicted x0 .*\[-1, 1\]",
    "--data": r"name.* or a path",
    "--depth": r"of the MLP",
    "--device": r"^where to compute",
    "--diffusion-steps": r"^T, the number of diffusion steps",
    "--eta": r"ddim: noise scale in \[0, 1\]",
    "--frames": r"shown",
    "--hidden": r"^hidden width of the MLP",
    "--image-size": r"^resize the centre square .* pixels per side",
    "--iw": r"importance-weighted bounds of K",
    "--net": r"auto \(.*\) \| mlp \|",
    "--num-examples": r"examples (of the split )?evaluated",
    "--num-samples": r"\bdraw",
    "--out": r"\bto write\b",
    "--respacing": r"the K-step respaced process",
    "--schedule": r"^noise schedule",
    "--seed": r"^seed (of|for) ",
    "--variance": r"^reverse-process variance",
}
# -n is the short option of the count a command asks for
SHORT_N = {"sample": "--num-samples"}


def visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options shown in parser's help (not -h, not the hidden old spellings)."""
    return [
        a
        for a in parser._actions
        if a.option_strings and a.help != argparse.SUPPRESS and not isinstance(
            a, (argparse._HelpAction, argparse._VersionAction)
        )
    ]  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    return _parser().parse_args(argv)


def test_no_old_spelling_and_no_long_n_is_shown():
    for name, parser in COMMANDS.items():
        shown = {s for a in visible(parser) for s in a.option_strings}
        assert not shown & OLD, (name, shown & OLD)
        assert not re.search(r"--n\b(?!-)", parser.format_help()), name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_says_what_it_does_and_its_default(command):
    for action in visible(COMMANDS[command]):
        flag, text = action.option_strings[-1], action.help or ""
        assert "(default: " in text, (command, flag, text)
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            assert text.endswith("(default: off)"), (command, flag, text)  # a switch
        # more than its own name: the words left after the flag's own and the default's
        what = re.sub(r"\(default: [^)]*\)?", " ", text.lower())
        own = set(re.findall(r"[a-z0-9]+", " ".join(action.option_strings).lower()))
        words = set(re.findall(r"[a-z][a-z0-9]+", what)) - own - {"the", "a", "of", "to", "in"}
        assert len(words) >= 2, (command, flag, text)


def test_help_of_a_config_field_is_not_its_name():
    """The case that hid behind generated flags: "--hidden: hidden (default: 128)"."""
    train = COMMANDS["train"].format_help()
    assert "hidden width of the MLP" in train and "U-Net base channels" in train
    assert re.search(r"--lr LR\s+learning rate of AdamW", train)
    assert "EMA decay" in train and "gradient's global L2 norm" in train


def test_no_name_means_two_things():
    helps: dict[str, dict[str, str]] = {}
    for name, parser in COMMANDS.items():
        for a in visible(parser):
            for s in a.option_strings:
                helps.setdefault(s, {})[name] = a.help
    for flag, by_command in helps.items():
        if flag == "-n":
            for name, parser in COMMANDS.items():
                if name in by_command:
                    long = SHORT_N.get(name, "--num-examples")
                    assert parser._option_string_actions["-n"].option_strings == ["-n", long]
            continue
        if len(set(by_command.values())) == 1:
            continue
        assert flag in MEANING, (flag, by_command)
        for name, text in by_command.items():
            assert re.search(MEANING[flag], text), (flag, name, text)


def test_every_alias_is_in_the_table():
    found = {
        (name, old)
        for name, parser in COMMANDS.items()
        for alias in aliases(parser)
        for old in alias.option_strings
    }
    assert found == {(name, old) for name, old, _, _ in ALIASES}


@pytest.mark.parametrize("command, old, new, values", ALIASES, ids=lambda v: str(v))
def test_an_old_spelling_warns_once_and_acts_as_the_new_one(command, old, new, values, capsys):
    head = [*command.split(), *POSITIONALS[command]]
    alias = next(a for a in aliases(COMMANDS[command]) if old in a.option_strings)
    assert alias.renamed[old] == new and alias.help == argparse.SUPPRESS
    capsys.readouterr()
    with_new = parse([*head, new, *values])
    assert capsys.readouterr().err == ""
    with_old = parse([*head, old, *values])
    assert capsys.readouterr().err.splitlines() == [
        f"ddpm: warning: {old} is deprecated and will be removed in {REMOVED_IN}; use {new}"
    ]
    assert vars(with_old) == vars(with_new)
    assert vars(with_old) != vars(parse(head))  # the flag did something


@pytest.mark.parametrize(
    "command, old, new",
    [("train", "--steps", "--max-steps"), ("forward", "--size", "--image-size"),
     ("evaluate", "--n", "--num-examples")],
)  # fmt: skip
def test_an_old_spelling_is_validated_as_the_new_one(command, old, new, capsys):
    head = [*command.split(), *POSITIONALS[command]]
    for flag in (new, old):
        with pytest.raises(SystemExit) as e:
            parse([*head, flag, "many"])
        assert e.value.code == 2
        assert "invalid int value: 'many'" in capsys.readouterr().err


def test_a_library_error_names_the_new_flag_after_the_warning(capsys):
    assert main(["theory", "gmm8", "--n", "1"]) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.endswith("use --num-examples")
    assert error == "ddpm theory: error: --num-examples must be an integer >= 2 (got 1)"


def test_library_errors_speak_of_the_commands_own_flags():
    from ddpm.cli.main import in_flags
    from ddpm.errors import ConfigError

    def said(message: str, param: str, command: str) -> str:
        return in_flags(ConfigError(message, params=(param,)), command)

    # n is the number of samples for `sample`, of examples elsewhere; steps the training length
    # for `train`, the respaced process for the others; iw the VAE's bounds in `vae compare`
    assert said("n must be >= 1", "n", "sample") == "--num-samples must be >= 1"
    assert said("n must be >= 1", "n", "vae compare") == "--num-examples must be >= 1"
    assert said("past steps 3", "steps", "train") == "past --max-steps 3"
    assert said("past steps 3", "steps", "vae train") == "past --max-steps 3"
    assert said("steps 'x'", "steps", "evaluate") == "--respacing 'x'"
    assert said("iw must", "iw", "vae compare") == "--vae-iw must"
    assert said("iw must", "iw", "vae evaluate") == "--iw must"
    assert said("T must", "T", "forward") == "--diffusion-steps must"
    assert said("drop clip", "clip", "sample") == "drop --clip-denoised"


@pytest.mark.parametrize(
    "argv, message",
    [(["sample", "NOPE", "-n", "0"], "--num-samples must be an integer >= 1 (got 0)"),
     (["evaluate", "NOPE", "-n", "0"], "--num-examples must be an integer >= 1 (got 0)"),
     (["forward", "NOPE.png", "--image-size", "1"], "--image-size must be >= 2 pixels")],
)  # fmt: skip
def test_a_bad_value_is_reported_with_the_flag_the_user_has(argv, message, capsys):
    assert main([*argv, "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"ddpm {ddpm.__version__}\n"


@pytest.mark.parametrize(
    "several", [["--diffusion-steps", "10", "20"], ["--variance", "small", "large"]]
)
def test_theory_runs_a_sweep_only_when_asked(several, tmp_path, capsys):
    capsys.readouterr()
    assert main(["theory", "gaussian", *several, "-n", "20", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sweep" in err, err
    assert not tmp_path.joinpath("sweep.json").exists()
    argv = ["theory", "gaussian", "--sweep", *several, "-n", "20", "--out", str(tmp_path)]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["sweep"]) == 2 and (tmp_path / "sweep.json").is_file()


def test_a_runs_process_is_its_own_not_a_sweep(tmp_path, capsys):
    for extra in (["--sweep"], ["--diffusion-steps", "10", "20"]):
        assert main(["theory", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "a run's process is its own" in err, err


def _example_commands(text: str) -> list[list[str]]:
    """The ddpm argument lists of the lines of an examples section."""
    joined = text.replace("\\\n", " ")
    found = []
    for line in joined.splitlines()[1:]:
        for part in line.split("#")[0].split("&&"):
            words = shlex.split(part)
            if "ddpm" in words:
                found.append(words[words.index("ddpm") + 1 :])
    return found


@pytest.mark.parametrize("command", [*sorted(COMMANDS), "vae"])
def test_every_commands_help_ends_with_examples_in_the_new_names(command, capsys):
    parser = COMMANDS.get(command) or PARSER._subparsers._group_actions[0].choices[command]
    text = parser.format_help().rstrip()
    head, sep, examples = text.rpartition("\nexamples:\n")
    assert sep, command
    lines = examples.splitlines()
    assert lines and all(line.startswith("  ") for line in lines), examples
    argvs = _example_commands("examples:\n" + examples)
    assert any(argv[: len(command.split())] == command.split() for argv in argvs), examples
    for argv in argvs:
        parse(argv)  # parses, and without an old spelling's warning
        assert capsys.readouterr().err == "", argv
