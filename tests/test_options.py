import argparse

from bigl_sam.cli import add_renamed


def _parser():
    parser = argparse.ArgumentParser(prog="bigl-sam x")
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
