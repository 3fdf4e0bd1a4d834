"""README.md and docs/*.md point at things that exist.

Every relative link (and its #anchor) resolves, every repository path they name exists,
and every command-line option they name is one the matching command's --help lists:
click commands are introspected in-process, scripts through the argparse calls in their
source. An option is matched to the command on the same command line; an option
written alone (`--max-drop`) to the file's topic command and the commands named in the
same paragraph (else in the nearest earlier paragraph of the same section naming one).
"""

import ast
import re
import shlex
from functools import lru_cache
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

# The topic command of each file: an option written alone may belong to it.
DEFAULT_COMMANDS = {
    "README.md": ["mergekit-yaml"],
    "search.md": ["mergekit-expo search"],
    "lora.md": ["mergekit-expo lora"],
    "safety.md": ["mergekit-expo run"],
    "performance.md": ["mergekit-yaml"],
    "recipes.md": ["mergekit-yaml"],
    "numerics.md": ["mergekit-yaml"],
    "gpu.md": ["mergekit-yaml"],
    "publishing.md": ["mergekit-expo card"],
    "hosts.md": ["mergekit-yaml"],
}
# Third-party tools the docs show, with the options they use (not introspected here).
THIRD_PARTY_OPTIONS = {
    "pip": {"-e", "--editable", "-U", "--upgrade", "--no-deps", "--require-hashes", "--no-build-isolation",
            "--index-url", "--extra-index-url", "-y"},
    "ray": {"--head", "--address", "--num-gpus"},
    "ulimit": {"-f"},
    "hf": {"--repo-type", "--revision", "--private", "--token"},
}
PYTEST_OWN_OPTIONS = {"-x", "-q", "-v", "-k", "-m", "--durations", "-p"}
REPO_DIRS = ("configs", "examples", "bench", "scripts", "mergekit_expo")
SCRIPT_DIRS = ("examples", "bench", "scripts")
GENERATED = ("bench/cache/", "bench/results/")  # created by the benchmarks, not shipped
EXPO_SUBCOMMANDS = ("run", "lora", "search", "demo", "card")

OPTION = re.compile(r"^-{1,2}[A-Za-z][\w-]*$")
REPO_PATH = re.compile(r"(?<![\w./-])(?:\.\./)?((?:%s)/[\w./{},-]*)" % "|".join(REPO_DIRS))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


# --- what each command accepts -------------------------------------------------------

def click_options(command) -> set:
    import click

    options = set()
    for param in command.get_params(click.Context(command)):  # with click's --help
        if getattr(param, "hidden", False):
            continue
        options.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("-"))
    return options


@lru_cache(maxsize=None)
def console_script(name):
    """The click command a console script runs (mergekit-expo's script wraps its group in
    the process-level handling of signals: conftest's IN_PROCESS names the group)."""
    if name == "mergekit-expo":
        from conftest import IN_PROCESS

        module, _, attribute = IN_PROCESS[name].partition(":")
        return getattr(import_module(module), attribute)
    (script,) = entry_points(group="console_scripts", name=name)
    return script.load()


def argparse_options(script: Path) -> set:
    """Options a script declares with add_argument / addoption (read, not run)."""
    options = {"-h", "--help"}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("add_argument", "addoption"):
            options.update(a.value for a in node.args
                           if isinstance(a, ast.Constant) and str(a.value).startswith("-"))
    return options


def shell_script_options(script: Path) -> set:
    """A shell script's options: the literals it compares its arguments with, plus those
    of a Python script it hands "$@" to."""
    text = script.read_text()
    options = set(re.findall(r'=\s*"(--?[\w-]+)"', text)) | set(re.findall(r"^\s*(--?[\w-]+)\)", text, re.M))
    for forwarded in re.findall(r'(\S+\.py)"?\s+"\$@"', text):
        options |= argparse_options(ROOT / forwarded)
    return options


def expo_subcommand(name: str):
    """A subcommand of mergekit-expo; some load only when asked for (get_command)."""
    import click

    group = console_script("mergekit-expo")
    return group.get_command(click.Context(group), name)


@lru_cache(maxsize=None)
def accepted_options(command: str) -> frozenset:
    """Options of a command named as 'mergekit-expo search', 'mergekit-yaml', a repo
    script path, 'pytest' or a third-party tool."""
    if command == "mergekit-expo":
        return frozenset(click_options(console_script("mergekit-expo")))
    if command.startswith("mergekit-expo "):
        return frozenset(click_options(expo_subcommand(command.split()[1])))
    if command in ("mergekit-yaml", "mergekit-multi"):
        return frozenset(click_options(console_script(command)))
    if command == "pytest":
        return frozenset(argparse_options(ROOT / "tests" / "conftest.py") | PYTEST_OWN_OPTIONS)
    if command in THIRD_PARTY_OPTIONS:
        return frozenset(THIRD_PARTY_OPTIONS[command])
    script = ROOT / command
    return frozenset(shell_script_options(script) if script.suffix == ".sh" else argparse_options(script))


# --- reading command lines -----------------------------------------------------------

def option_name(token: str):
    name = token.split("=", 1)[0]
    return name if OPTION.match(name) else None


def options_in(tokens) -> list:
    found = []
    for token in tokens:
        for part in token.split("/") if token.startswith("-") else [token]:
            if option_name(part):
                found.append(option_name(part))
    return found


def parse_command(tokens):
    """(command, its options) for a command line, or None if it names no known command."""
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]  # environment assignments
    if not tokens:
        return None
    program = tokens[0] if _is_repo_script(tokens[0]) else tokens[0].rsplit("/", 1)[-1]
    rest = tokens[1:]
    if program == "mergekit-expo":
        sub = next((t for t in rest if not t.startswith("-")), None)
        if sub in EXPO_SUBCOMMANDS:
            before, after = rest[:rest.index(sub)], rest[rest.index(sub) + 1:]
            return [("mergekit-expo", options_in(before)), (f"mergekit-expo {sub}", options_in(after))]
        return [("mergekit-expo", options_in(rest))]
    if program in EXPO_SUBCOMMANDS and (not rest or rest[0].startswith("-")):
        return [(f"mergekit-expo {program}", options_in(rest))]  # `search --out` in prose
    if program in ("mergekit-yaml", "mergekit-multi", "pip", "ray", "ulimit", "hf"):
        return [(program, options_in(rest))]
    if program in ("python", "python3", "bash", "sh"):
        if rest[:2] == ["-m", "pytest"]:
            return [("pytest", options_in(rest[2:]))]
        if rest[:2] == ["-m", "pip"]:
            return [("pip", options_in(rest[2:]))]
        if rest and _is_repo_script(rest[0]):
            return [(rest[0], options_in(rest[1:]))]
        return None
    if program == "pytest":
        return [("pytest", options_in(rest))]
    if _is_repo_script(program):
        return [(program, options_in(rest))]
    return None


def _is_repo_script(token: str) -> bool:
    return token.endswith((".py", ".sh")) and token.startswith(SCRIPT_DIRS) and (ROOT / token).is_file()


def split_shell(text: str):
    """Command lines of a shell block: continuations joined, comments dropped, split at && ; |."""
    text = re.sub(r"\\\n", " ", text)
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    commands = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def span_tokens(span: str):
    try:
        return shlex.split(span)
    except ValueError:
        return span.split()


# --- reading the Markdown ------------------------------------------------------------

def blocks(text: str):
    """(section heading, kind, text) per block: fenced code, heading or paragraph."""
    section, kind, lines, out = "", None, [], []
    fence = None
    for line in text.splitlines():
        if fence is not None:
            if line.startswith(fence):
                out.append((section, kind, "\n".join(lines)))
                fence, kind, lines = None, None, []
            else:
                lines.append(line)
            continue
        opening = re.match(r"^(```+|~~~+)\s*(\w*)", line)
        if opening or not line.strip() or line.startswith("#"):
            if lines:
                out.append((section, "text", "\n".join(lines)))
                lines = []
            if opening:
                fence, kind = opening.group(1), "code:" + (opening.group(2) or "")
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
                out.append((section, "heading", section))
            continue
        lines.append(line)
    if lines:
        out.append((section, "text", "\n".join(lines)))
    return out


def inline_spans(text: str):
    return [m.group(1).replace("\n", " ") for m in re.finditer(r"`([^`]+)`", text)]


def anchors(path: Path) -> set:
    """GitHub's heading anchors for a Markdown file."""
    seen, result = {}, set()
    for _, kind, heading in blocks(path.read_text()):
        if kind != "heading":
            continue
        slug = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
        slug = re.sub(r"[^\w\- ]", "", slug).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def expand_braces(path: str):
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return [p for choice in match.group(1).split(",")
            for p in expand_braces(path[:match.start()] + choice + path[match.end():])]


# --- the checks ----------------------------------------------------------------------

def option_problems(doc: Path) -> list:
    problems = []
    last_named = None  # commands of the nearest earlier block of this section that names some
    section_of_last = None
    for section, kind, text in blocks(doc.read_text()):
        named, loose = [], []
        if kind.startswith("code:"):
            if kind[5:] not in ("", "bash", "sh", "shell", "console"):
                continue
            for tokens in split_shell(text):
                parsed = parse_command(tokens)
                if parsed is None:
                    if options_in(tokens):
                        problems.append(f"{doc.name}: unknown command {' '.join(tokens)!r}: "
                                        "add it to the test's commands")
                    continue
                named.extend(parsed)
        else:
            prose = re.sub(r"`[^`]+`", " ", text)
            loose.extend(options_in(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", prose)))
            for span in inline_spans(text):
                tokens = span_tokens(span)
                parsed = parse_command(tokens)
                if parsed is None:
                    loose.extend(options_in(tokens))
                else:
                    named.extend(parsed)
        for command, options in named:
            for option in options:
                if option not in accepted_options(command):
                    problems.append(f"{doc.name}: {command} has no {option} (section {section!r})")
        if loose:
            if named:
                context = [c for c, _ in named]
            elif last_named and section_of_last == section:
                context = list(last_named)
            else:
                context = []
            context += DEFAULT_COMMANDS.get(doc.name, [])
            if not context:
                problems.append(f"{doc.name}: {loose} in section {section!r} name no command: "
                                "write the command beside them or give the file a default")
                continue
            context = [s for c in context for s in
                       ([c, *(f"mergekit-expo {sub}" for sub in EXPO_SUBCOMMANDS)] if c == "mergekit-expo" else [c])]
            for option in loose:
                if not any(option in accepted_options(c) for c in context):
                    problems.append(f"{doc.name}: {option} is not an option of {' or '.join(context)} "
                                    f"(section {section!r})")
        if named:
            last_named, section_of_last = [c for c, _ in named], section
    return problems


def link_problems(doc: Path) -> list:
    problems = []
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    targets = LINK.findall(text) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.M)
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            problems.append(f"{doc.name}: link to missing {target}")
        elif anchor and linked.suffix == ".md" and anchor.lower() not in anchors(linked):
            problems.append(f"{doc.name}: link to missing heading {target}")
    return problems


def path_problems(doc: Path) -> list:
    problems = []
    for match in REPO_PATH.finditer(doc.read_text()):
        named = match.group(1).rstrip(".,")
        for path in expand_braces(named):
            if path.startswith(GENERATED):
                continue
            if not (ROOT / path).exists():
                problems.append(f"{doc.name}: names {path}, which does not exist")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(doc):
    assert link_problems(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_repository_paths_exist(doc):
    assert path_problems(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_options_exist_in_their_commands_help(doc):
    assert option_problems(doc) == []


def test_introspected_options_are_what_help_prints():
    import click

    for name, command in [("mergekit-yaml", console_script("mergekit-yaml")),
                          ("mergekit-multi", console_script("mergekit-multi")),
                          *((f"mergekit-expo {sub}", expo_subcommand(sub))
                            for sub in EXPO_SUBCOMMANDS)]:
        help_text = command.get_help(click.Context(command, info_name=name))
        missing = [o for o in accepted_options(name) if o not in help_text and o != "--help"]
        assert not missing, f"{name} --help lacks {missing}"


def test_readme_is_a_front_page_with_the_ci_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    fenced = {line for section, kind, text in blocks(readme) if kind == "code:bash" for line in text.splitlines()}
    assert ci_command in fenced


def test_the_checks_catch_what_they_look_for(tmp_path):
    """A broken link, a missing path and a misattributed option are each reported."""
    doc = tmp_path / "broken.md"
    doc.write_text("# Search\n\nSee [the guide](missing.md) and `configs/nope.yml`.\n\n"
                   "```bash\nmergekit-yaml configs/expo.yml ./out --max-drop 0.1\n```\n")
    assert link_problems(doc) == ["broken.md: link to missing missing.md"]
    assert path_problems(doc) == ["broken.md: names configs/nope.yml, which does not exist"]
    assert option_problems(doc) == ["broken.md: mergekit-yaml has no --max-drop (section 'Search')"]
