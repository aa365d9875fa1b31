import pytest

from bigl_sam.arguments import CommandParser, add_renamed


def _parser():
    parser = CommandParser(prog="bigl-sam x")
    add_renamed(parser, "--teacher-checkpoint", "--teacher-from", type=int, default=None)
    add_renamed(parser, "--all-tokens", "--full", action="store_true")
    return parser


def test_a_former_name_sets_the_current_option_and_warns(capsys):
    args = _parser().parse_args(["--teacher-from", "3", "--full"])
    assert args.teacher_checkpoint == 3 and args.all_tokens is True
    err = capsys.readouterr().err
    assert "--teacher-from is now --teacher-checkpoint" in err and "--full is now --all-tokens" in err


def test_the_current_name_is_silent_and_the_former_one_hidden(capsys):
    parser = _parser()
    args = parser.parse_args(["--teacher-checkpoint", "4"])
    assert args.teacher_checkpoint == 4 and args.all_tokens is False
    assert capsys.readouterr().err == ""
    assert "--teacher-from" not in parser.format_help() and "--full" not in parser.format_help()


@pytest.mark.parametrize("argv", [["--teacher-from", "1", "--teacher-checkpoint", "2"],
                                  ["--teacher-checkpoint", "2", "--teacher-from", "1"],
                                  ["--all-tokens", "--full"]])
def test_the_current_and_a_former_name_together_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    assert "are the same option" in capsys.readouterr().err


def test_repeating_the_current_name_keeps_the_last_as_argparse_does():
    assert _parser().parse_args(["--teacher-checkpoint", "1", "--teacher-checkpoint", "2"]).teacher_checkpoint == 2


def test_an_abbreviation_resolves_to_the_current_name_never_to_the_hidden_one(capsys):
    assert _parser().parse_args(["--teacher", "5"]).teacher_checkpoint == 5  # not ambiguous with --teacher-from
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        _parser().parse_args(["--teacher-f", "5"])  # a prefix of the hidden name only
    assert "--teacher-from" not in capsys.readouterr().err
