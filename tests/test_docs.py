"""The documentation does not rot: every ``nnunet-swin`` and ``nnUNetv2_*`` command line in the README and
docs/ parses with its real parser, and every relative link in them and in benchmarks/README.md resolves.

Command lines are read from fenced shell blocks (```bash, ```sh, ```shell, ```console). A line ending in
``\\`` continues on the next one; ``#`` starts a comment; ``&&``, ``||``, ``;`` and ``|`` separate commands;
``VAR=value`` in front of a command is an environment assignment; ``$(...)`` is checked as a command of its
own. Placeholders in capitals (``IMAGES``, ``CHECKPOINT``) are ordinary arguments; a shell variable
(``$X``, ``${X}``) or command substitution stands for ``1``, which every id, fold, count and path accepts.

``nnunet-swin`` lines go through ``nnunet_swin.cli.build_parser()``. ``nnUNetv2_*`` lines go through
nnU-Net's own console-script entry point, run in this process with ``sys.argv`` set and
``argparse.ArgumentParser.parse_args`` patched to parse for real and then stop before any work: only entry
points checked to parse before they do anything are run (``NNUNET_PARSE_FIRST``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import sys
from importlib.metadata import entry_points
from pathlib import Path
from unittest import mock

import pytest

from nnunet_swin.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
COMMAND_PAGES = [README, *DOCS]
LINK_PAGES = [*COMMAND_PAGES, ROOT / "benchmarks" / "README.md"]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
#: What a shell variable or command substitution stands for in a documented command line.
PLACEHOLDER = "1"
#: nnU-Net console scripts whose entry function calls ``parse_args`` before it does anything else (read in
#: nnunetv2 2.8's source): only these are run, so checking a command line can never start real work.
NNUNET_PARSE_FIRST = {
    "nnUNetv2_convert_MSD_dataset", "nnUNetv2_ensemble", "nnUNetv2_evaluate_simple", "nnUNetv2_export_model_to_zip",
    "nnUNetv2_find_best_configuration", "nnUNetv2_plan_and_preprocess", "nnUNetv2_predict",
    "nnUNetv2_predict_from_modelfolder", "nnUNetv2_train",
}
_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
_REDIRECTIONS = {">", ">>", "<", ">&", "&>"}


# --- reading the pages -------------------------------------------------------------------------------------
def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the block's first line, lines) of every fenced code block."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"\s*(```+|~~~+)\s*([\w+-]*)", line)
        if current is None and fence:
            current = (fence.group(1), fence.group(2).lower(), number + 1, [])
        elif current is not None and line.strip().startswith(current[0]) and not line.strip().strip(current[0][0]):
            blocks.append(current[1:])
            current = None
        elif current is not None:
            current[3].append(line)
    return blocks


def without_code_blocks(text: str) -> str:
    """The page without its fenced blocks (a '# comment' in a bash block is no heading)."""
    kept, in_block = [], False
    for line in text.splitlines():
        if re.match(r"\s*(```|~~~)", line):
            in_block = not in_block
        elif not in_block:
            kept.append(line)
    return "\n".join(kept)


def without_code(text: str) -> str:
    """The page without fenced blocks and inline code spans, where a link is no link."""
    return re.sub(r"`+[^`]*`+", "", without_code_blocks(text))


def logical_lines(lines: list[str], first: int) -> list[tuple[int, str]]:
    """Join backslash continuations: (number of the first physical line, the whole line)."""
    out, pending, start = [], "", first
    for number, line in enumerate(lines, first):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def is_our_command(word: str) -> bool:
    name = word.rsplit("/", 1)[-1]
    return name == "nnunet-swin" or name.startswith("nnUNetv2_")


def commands_in(line: str) -> list[list[str]]:
    """Every ``nnunet-swin`` / ``nnUNetv2_*`` command in one shell line, as argv lists (program first)."""
    found = []
    for inner in re.findall(r"\$\(([^()]*)\)", line):
        found += commands_in(inner)
    line = re.sub(r"\$\([^()]*\)", PLACEHOLDER, line)
    line = re.sub(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*", PLACEHOLDER, line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    simple: list[list[str]] = [[]]
    tokens = iter(lexer)
    for token in tokens:
        if token in _SEPARATORS:
            simple.append([])
        elif token in _REDIRECTIONS:
            next(tokens, None)
        else:
            simple[-1].append(token)
    for words in simple:
        while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words and is_our_command(words[0]):
            found.append([words[0].rsplit("/", 1)[-1], *words[1:]])
    return found


def documented_commands() -> list[tuple[str, list[str]]]:
    """("page:line", argv) for every command line in the README's and docs' shell blocks."""
    found = []
    for page in COMMAND_PAGES:
        for language, first, lines in fenced_blocks(page.read_text(encoding="utf-8")):
            if language not in SHELL_LANGUAGES:
                continue
            for number, line in logical_lines(lines, first):
                for argv in commands_in(line):
                    found.append((f"{page.relative_to(ROOT)}:{number}", argv))
    return found


# --- parsing a command line -----------------------------------------------------------------------------
class _Parsed(Exception):
    """Raised by the patched parse_args once the arguments parsed: stops the entry point before any work."""


def _argparse_outcome(run) -> str | None:
    """None when ``run()`` parsed its arguments (or printed help), else argparse's message."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run()
        except _Parsed:
            return None
        except SystemExit as e:
            if e.code in (0, None):
                return None
            if isinstance(e.code, str):
                return e.code
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit code {e.code}"
    return "returned without parsing its arguments"


def nnunet_swin_problem(args: list[str]) -> str | None:
    def run():
        parsed = build_parser().parse_args(args)
        if not getattr(parsed, "func", None):
            raise SystemExit("no subcommand given")
        raise _Parsed

    return _argparse_outcome(run)


def nnunet_problem(program: str, args: list[str]) -> str | None:
    if program not in NNUNET_PARSE_FIRST:
        known = {ep.name for ep in entry_points(group="console_scripts")}
        if program not in known:
            return f"{program}: no such nnU-Net command"
        return (f"{program}: not checked yet; read its entry point, and add it to NNUNET_PARSE_FIRST if it "
                f"parses its arguments before doing anything")
    (entry,) = entry_points(group="console_scripts", name=program)
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real_parse_args(self, args, namespace))

    def run():
        main = entry.load()
        with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), \
                mock.patch.object(sys, "argv", [program, *args]):
            main()

    return _argparse_outcome(run)


def command_problem(argv: list[str]) -> str | None:
    """None when the command line parses with its real parser, else why not."""
    program, *args = argv
    if program == "nnunet-swin":
        return nnunet_swin_problem(args)
    return nnunet_problem(program, args)


# --- the checks -----------------------------------------------------------------------------------------
COMMANDS = documented_commands()


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(where, argv):
    problem = command_problem(argv)
    assert problem is None, f"{where}: `{shlex.join(argv)}` does not parse: {problem}"


def test_the_docs_show_the_commands_users_run():
    """Guards the extraction itself: were it to find nothing, every parse test would pass vacuously."""
    shown = {(argv[0], argv[1] if argv[0] == "nnunet-swin" and len(argv) > 1 else "") for _, argv in COMMANDS}
    expected = {("nnunet-swin", sub) for sub in ("demo", "doctor", "trainers", "--version", "ablate-skips",
                                                 "benchmark-msd", "bench", "ext-trainer-dir")}
    expected |= {(f"nnUNetv2_{name}", "") for name in ("plan_and_preprocess", "train", "predict",
                                                        "find_best_configuration", "export_model_to_zip")}
    assert expected <= shown, f"not shown in any shell block: {sorted(expected - shown)}"


@pytest.mark.parametrize("line", [
    "nnunet-swin ablate-skips -d 4 --foldz 0 1",                          # misspelled flag
    "nnunet-swin ablate-skip -d 4 --dry-run",                             # misspelled subcommand
    "nnunet-swin bench --device cpu --patch",                             # flag without its value
    "nnunet-swin benchmark-msd --tasks 4 5",                              # required positional missing
    "nnUNetv2_train 4 2d 0 -tr nnUNetTrainerSwinUnet -devcie cpu",        # misspelled nnU-Net flag
    "nnUNetv2_predict -i IMAGES -o OUT -c 2d -f 0",                       # required -d missing
    "nnUNetv2_plan_and_preprocess -d four -c 2d",                         # not an int
    "nnUNetv2_trian 4 2d 0",                                              # no such command
])
def test_a_broken_command_line_is_rejected(line):
    (argv,) = commands_in(line)
    assert command_problem(argv) is not None


def test_command_lines_are_read_as_a_shell_would():
    line = ('nnUNet_compile=f nnUNetv2_train 4 2d 0 -tr T && bash run.sh; nnunet-swin ablate-skips -d $D '
            '--slurm-option="--partition gpu" --trainer-pattern \'My_{k}skip\' | tee log  # a comment -x')
    assert commands_in(line) == [
        ["nnUNetv2_train", "4", "2d", "0", "-tr", "T"],
        ["nnunet-swin", "ablate-skips", "-d", "1", "--slurm-option=--partition gpu", "--trainer-pattern",
         "My_{k}skip"],
    ]
    assert commands_in('export X="${X:+$X:}$(nnunet-swin ext-trainer-dir)"') == [["nnunet-swin", "ext-trainer-dir"]]
    assert commands_in(".venv/bin/nnunet-swin demo > out.txt") == [["nnunet-swin", "demo"]]
    assert logical_lines(["a \\", "  b", "c"], 10) == [(10, "a    b"), (12, "c")]


def test_trainer_names_exist():
    """A trainer name anywhere in the README or docs (tables and prose too) is one a user can pass to -tr
    (a parser takes any name)."""
    import nnunet_swin.trainers as trainers

    unknown = set()
    for page in COMMAND_PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"\bnnUNetTrainer\w*", text):
            name = match.group()
            pattern = text[match.end():match.end() + 1] == "{"  # --trainer-pattern's {k}
            if name != "nnUNetTrainer" and not pattern and not hasattr(trainers, name):
                unknown.add(f"{page.relative_to(ROOT)}: {name}")
    assert not unknown, sorted(unknown)


def test_commands_are_only_in_shell_blocks():
    """A command in a ```text block (or one without a language) would escape the parse check."""
    stray = []
    for page in COMMAND_PAGES:
        for language, first, lines in fenced_blocks(page.read_text(encoding="utf-8")):
            if language in SHELL_LANGUAGES or language == "python":
                continue
            stray += [f"{page.relative_to(ROOT)}:{first + i}" for i, line in enumerate(lines)
                      if line.split() and is_our_command(line.split()[0])]
    assert not stray, f"commands outside ```bash blocks: {stray}"


# --- links ----------------------------------------------------------------------------------------------
def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation but '-' and '_' dropped, spaces to
    '-', a repeated one suffixed -1, -2, ..."""
    anchors: set[str] = set()
    for line in without_code_blocks(text).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def relative_links(page: Path) -> list[str]:
    text = without_code(page.read_text(encoding="utf-8"))
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.M)
    return [t for t in targets if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", t)]


def link_problem(page: Path, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{target}: no such file"
    if anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text(encoding="utf-8")):
        return f"{target}: no heading #{anchor} in {file.name}"
    return None


@pytest.mark.parametrize("page", LINK_PAGES, ids=[str(p.relative_to(ROOT)) for p in LINK_PAGES])
def test_relative_links_resolve(page):
    problems = [p for p in (link_problem(page, t) for t in relative_links(page)) if p]
    assert not problems, f"{page.relative_to(ROOT)}: {problems}"


def test_link_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading: here (2026)\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-code-heading-here-2026) [web](https://example.org/x) `[not](a-link.md)`\n"
                    "[gone](missing.md) [bad anchor](other.md#nowhere) [self](#page)\n\n# Page\n")
    assert relative_links(page) == ["other.md#a-code-heading-here-2026", "missing.md", "other.md#nowhere", "#page"]
    assert [link_problem(page, t) is None for t in relative_links(page)] == [True, False, False, True]


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert DOCS and not [p.name for p in DOCS if p.resolve() not in linked]


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_docs_page_starts_with_its_commands(page):
    """Each page shows its commands (or its Python calls) before its first section."""
    text = page.read_text(encoding="utf-8")
    first_section = re.search(r"^## ", text, flags=re.M)
    head = text[:first_section.start()] if first_section else text
    assert re.search(r"^```(bash|python)", head, flags=re.M), f"{page.name}: no code block before its first section"
