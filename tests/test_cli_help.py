"""A newcomer's first hour: `bigl-sam COMMAND --help` at once (no torch imported to print it), `--version`,
help texts alike in every command, commands in messages that work as printed, and no CUDA warning on a CPU."""

import argparse
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bigl_sam import cli
from bigl_sam.cli import COMMANDS, command_parser, main, program

HEAVY = ("torch", "cv2", "segment_anything", "gradio", "onnxruntime", "transformers")
PLACEHOLDER = r"^[A-Z][A-Z0-9_]*$"
DTYPE_HELP = (r"bfloat16: [^()]+ under torch\.autocast \(fast on GPUs and on CPUs with AVX512-BF16 or AMX, emulated "
              r"and slower on other CPUs\) \(default: %\(default\)s\)$")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_imports_no_torch(name):
    done = _python(f"""
        import sys
        from bigl_sam.cli import command_parser
        command_parser({name!r})[1].format_help()
        print(" ".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"bigl-sam {name} --help imports {done.stdout.strip()}"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("bigl-sam ")


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _options(name: str):
    for parser in _parsers(command_parser(name)[1]):
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield parser, action


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help_a_placeholder_and_its_default(name):
    for parser, action in _options(name):
        where = f"{parser.prog} {action.option_strings[0]}"
        if action.help == argparse.SUPPRESS:  # a hidden former name
            continue
        assert action.help, f"{where}: no help"
        if action.nargs != 0 and action.choices is None:
            metavar = action.metavar or action.dest.upper()
            assert re.match(PLACEHOLDER, metavar), f"{where}: placeholder {metavar!r}"
        shown = parser.formatter_class(parser.prog)._get_help_string(action)
        if not any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)) and action.default != []:
            assert "default" in shown, f"{where}: default {action.default!r} not shown"


def test_dtype_is_described_alike_in_every_command():
    helps = {parser.prog: action.help for name in COMMANDS
             for parser, action in _options(name) if "--dtype" in action.option_strings}
    assert len(helps) >= 5
    for prog, text in helps.items():
        assert re.match(DTYPE_HELP, text), f"{prog} --dtype: {text}"


def test_commands_in_messages_are_the_ones_that_run(tmp_path, monkeypatch):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text("")
    (venv_bin / "bigl-sam").write_text("")
    (venv_bin / "bigl-sam").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["venv/bin/bigl-sam", "demo"])
    assert program() == "venv/bin/bigl-sam"  # as it was started, from where it was started
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert program() == str(venv_bin / "bigl-sam")  # not on PATH: the venv's script by its path
    monkeypatch.setenv("PATH", str(venv_bin))
    assert program() == "bigl-sam"  # on PATH: its name
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert program() == f"{tmp_path / 'python'} -m bigl_sam.cli"


def test_a_missing_file_names_the_command_that_gets_it(tmp_path, monkeypatch):
    from bigl_sam.weights import read_manifest, verify

    monkeypatch.setattr(cli, "program", lambda: ".venv/bin/bigl-sam")
    entry = next(iter(read_manifest().values()))
    with pytest.raises(Exception, match=f"get it with `.venv/bin/bigl-sam weights download {entry.name}`"):
        verify(entry, tmp_path)


def test_compiling_the_decoder_says_nothing_about_cuda(tmp_path):
    """TorchInductor imports torch.utils.cpp_extension, which warns on any CPU machine with a CUDA toolkit."""
    (tmp_path / "cuda").mkdir()
    done = _python(f"""
        import importlib, os
        os.environ["CUDA_HOME"] = {str(tmp_path / "cuda")!r}
        import torch
        from bigl_sam import build_model
        from bigl_sam import inference
        from bigl_sam.modeling import get_config
        def compile_(fn, **kwargs):  # what TorchInductor's C++ builder does first, without the compile
            importlib.import_module("torch.utils.cpp_extension")
            return fn
        torch.compile = compile_
        inference.compile_decoder(build_model(get_config("vit_test")))
    """)
    assert done.returncode == 0, done.stderr
    assert "No CUDA runtime" not in done.stderr
