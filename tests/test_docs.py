"""Commands in the docs cannot rot: every documented command line parses with its module's parser.

Every ``python main.py ...``, ``python main_for_infer.py ...``, ``torchrun ... main.py ...``,
``python -m Utils.<module> ...`` and ``python -m Model ...`` in a shell code block (```bash, ```sh,
```console or an unlabelled fence) of README.md and docs/*.md is parsed with that module's
``build_parser()``: the parser, not the run. The rules, so that a documented command can be written
naturally:

* backslash-continued lines are joined; the command is reported at its first line;
* a shell comment (``# ...``) is dropped, and the line is cut at ``&&``, ``||``, ``|`` and ``;``:
  each piece that starts a documented command is checked on its own (``pip install ... && python ...``);
* a leading ``$ `` prompt and anything before ``python`` / ``torchrun`` (``OMP_NUM_THREADS=1``,
  ``/usr/bin/time``) are ignored;
* a word that is a shell expansion (``$VAR``, ``"${ARR[@]}"``, ``$(cmd)``) or a placeholder in angle
  brackets without spaces (``<Set>/HR``, ``<N>``) stands for something the reader fills in: an array expansion
  (``${X[@]}``, ``$@``) is dropped, as it may be any number of words; any other such word is replaced by
  a value the option before it accepts (its first choice, its default, ``1`` or ``x``), or dropped when
  it is not an option's value;
* ``...`` (a literal ellipsis word) is dropped.

A module without ``build_parser()``, a module that does not import, and a flag the parser refuses each
fail the test with the file, the line and the message.
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
SEPARATORS = {"&&", "||", "|", ";"}
SCRIPTS = {"main.py": "main", "main_for_infer.py": "main_for_infer"}
_ARRAY = re.compile(r"^\$\{[^}]*\[[@*]\]\}$|^\$[@*]$")
_FILL_IN = re.compile(r"\$|<[^<>\s]+>")


class DocParseError(Exception):
    """What a parser said about a documented command (raised instead of argparse's exit)."""


@dataclass(frozen=True)
class DocCommand:
    """One documented command: where it is, which module parses it, and its argument words."""

    path: Path
    line: int
    module: str
    args: tuple[str, ...]
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, lines)`` of each shell code block of a Markdown text."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        start, i = i + 2, i + 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        if lang in SHELL_FENCES:
            yield start, body


def logical_lines(start: int, body: list[str]) -> Iterator[tuple[int, str]]:
    """Join backslash-continued lines; yields ``(line number of the first, joined text)``."""
    buf, first = "", start
    for n, raw in enumerate(body, start):
        if not buf:
            first = n
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        yield first, buf + raw
        buf = ""
    if buf:
        yield first, buf


def _module_of(words: list[str]) -> Optional[tuple[str, list[str]]]:
    """``(module, argument words)`` when ``words`` run a documented command, else None."""
    for i, w in enumerate(words):
        if w == "torchrun":
            rest = words[i + 1:]
            for j, r in enumerate(rest):
                if r in SCRIPTS:
                    return SCRIPTS[r], rest[j + 1:]
            return None
        if re.fullmatch(r"python3?", w):
            rest = words[i + 1:]
            if rest and rest[0] in SCRIPTS:
                return SCRIPTS[rest[0]], rest[1:]
            if len(rest) >= 2 and rest[0] == "-m" and (rest[1] == "Model" or rest[1].startswith("Utils.")):
                return rest[1], rest[2:]
            return None
    return None


def extract_commands(path: Path) -> list[DocCommand]:
    """Every documented command of one Markdown file."""
    found = []
    for start, body in shell_blocks(path.read_text(encoding="utf-8")):
        for line_no, text in logical_lines(start, body):
            text = re.sub(r"^\s*\$\s+", "", text)
            try:
                words = shlex.split(text, comments=True)
            except ValueError as exc:
                raise AssertionError(f"{path.relative_to(REPO)}:{line_no}: cannot split {text!r}: {exc}") from None
            piece: list[str] = []
            for w in [*words, ";"]:
                if w not in SEPARATORS:
                    piece.append(w)
                    continue
                hit = _module_of(piece)
                if hit is not None:
                    found.append(DocCommand(path, line_no, hit[0], tuple(hit[1]), text.strip()))
                piece = []
    return found


def _raising(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` and its sub-parsers raise :class:`DocParseError` instead of printing and exiting."""
    def error(message: str) -> None:
        raise DocParseError(message)

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _raising(sub)
    return parser


def _option_action(parser: argparse.ArgumentParser, words: list[str], option: str) -> Optional[argparse.Action]:
    """The action of ``option`` in the (sub-)parser that ``words`` (the words before it) selected."""
    current = parser
    for w in words:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and w in subs[0].choices:
            current = subs[0].choices[w]
    return current._option_string_actions.get(option)


def _stand_in(action: argparse.Action) -> str:
    """A value that ``action`` accepts, for a word the reader fills in."""
    candidates = []
    if action.choices:
        candidates.append(str(next(iter(action.choices))))
    if action.default is not None and not isinstance(action.default, (list, tuple, bool)):
        candidates.append(str(action.default))
    candidates += ["1", "x"]
    for c in candidates:
        try:
            if callable(action.type):
                action.type(c)
            return c
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            continue
    return "x"


def resolve_fill_ins(parser: argparse.ArgumentParser, args: tuple[str, ...]) -> list[str]:
    """Apply the module docstring's rules for shell expansions, placeholders and ``...``."""
    out: list[str] = []
    for w in args:
        if w == "..." or _ARRAY.match(w):
            continue
        if not _FILL_IN.search(w):
            out.append(w)
            continue
        action = _option_action(parser, out[:-1], out[-1]) if out and out[-1].startswith("-") else None
        if action is not None and action.nargs != 0:
            out.append(_stand_in(action))
        elif out and out[-1].startswith("-") and action is None:
            out.append("x")  # an unknown option: let the parser name it
        # otherwise a positional fill-in: dropped (it may be any number of words)
    return out


def check_command(cmd: DocCommand) -> Optional[str]:
    """None when ``cmd`` parses; else one message naming the file, the line and the problem."""
    try:
        module = importlib.import_module(cmd.module)
    except Exception as exc:  # the documented module must import
        return f"{cmd.where}: {cmd.module} does not import ({type(exc).__name__}: {exc}): {cmd.text}"
    build = getattr(module, "build_parser", None)
    if not callable(build):
        return f"{cmd.where}: {cmd.module} has no build_parser(), so its command cannot be checked: {cmd.text}"
    parser = _raising(build())
    try:
        parser.parse_args(resolve_fill_ins(parser, cmd.args))
    except DocParseError as exc:
        return f"{cmd.where}: {cmd.module}: {exc}: {cmd.text}"
    return None


ALL_COMMANDS = [c for f in doc_files() if f.is_file() for c in extract_commands(f)]


def test_the_docs_have_commands_to_check():
    modules = {c.module for c in ALL_COMMANDS}
    assert {"main", "main_for_infer", "Utils.study", "Utils.compare"} <= modules, sorted(modules)


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda c: f"{c.where}:{c.module}")
def test_documented_command_parses(cmd: DocCommand):
    problem = check_command(cmd)
    assert problem is None, problem


def test_every_command_line_module_has_build_parser():
    """A module run as ``python -m Utils.<name>`` (it has a ``__main__`` block) exposes ``build_parser()``."""
    lacking = []
    for path in sorted((REPO / "Utils").glob("*.py")) + [REPO / "Model" / "__main__.py", REPO / "main.py",
                                                          REPO / "main_for_infer.py"]:
        text = path.read_text(encoding="utf-8")
        if ("__main__" in text or path.name == "__main__.py") and "def build_parser(" not in text:
            lacking.append(str(path.relative_to(REPO)))
    assert not lacking, f"command-line modules without build_parser(): {', '.join(lacking)}"


# ----------------------------------------------------------------------------- the checker itself

SAMPLE = """# Sample

```bash
pip install x && python main.py --model_name RFDN \\
    --iters 300   # a comment
python -m Utils.compare A/summary.csv --out cmp | tee log.txt
python main.py --no_such_flag 1
python main_for_infer.py --model_name RFDN --checkpoint "$CKPT" --scale "$S" --test_folder <LR_folder>
python -m Utils.interpolate choose S.csv --fidelity F.pth --candidates DIR/*.pth --datasets Demo --niqe_margin <m>
python main.py "${COMMON[@]}" --iters "$ITERS"
python -m Utils.nonexistent --x 1
python bench/bench_eval.py --whatever
```

```python
python main.py --ignored_in_python_blocks
```
"""


def test_extraction_rules_and_failures_name_file_and_line(tmp_path, monkeypatch):
    doc = tmp_path / "sample.md"
    doc.write_text(SAMPLE)
    monkeypatch.setattr(DocCommand, "where", property(lambda c: f"{c.path.name}:{c.line}"))
    cmds = extract_commands(doc)
    assert [(c.line, c.module) for c in cmds] == [
        (4, "main"), (6, "Utils.compare"), (7, "main"), (8, "main_for_infer"), (9, "Utils.interpolate"),
        (10, "main"), (11, "Utils.nonexistent")]
    assert cmds[0].args == ("--model_name", "RFDN", "--iters", "300")
    assert cmds[1].args == ("A/summary.csv", "--out", "cmp")
    problems = [check_command(c) for c in cmds]
    assert problems[0] is None and problems[1] is None and problems[3] is None and problems[4] is None
    assert problems[5] is None  # the array is dropped, --iters gets an integer stand-in
    assert problems[2] is not None and problems[2].startswith("sample.md:7: main: unrecognized arguments: "
                                                              "--no_such_flag")
    assert problems[6] is not None and problems[6].startswith("sample.md:11: Utils.nonexistent does not import")


def test_a_module_without_build_parser_is_named(tmp_path):
    cmd = DocCommand(REPO / "README.md", 1, "Utils.image_ops", ("--x",), "python -m Utils.image_ops --x")
    problem = check_command(cmd)
    assert problem is not None and "Utils.image_ops has no build_parser()" in problem


# ----------------------------------------------------------------------------- links

def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, flags=re.M)}


def test_relative_links_resolve():
    """Every relative link and image of README.md and docs/ names an existing file (and heading)."""
    broken = []
    for doc in doc_files():
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "; ".join(broken)


def test_readme_is_a_short_guide_with_its_test_command():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; details belong in docs/"
    i = lines.index("<!-- test-command -->")
    assert lines[i + 1] == "```bash" and "python -m pytest" in lines[i + 2]
