"""parse_runtime_argv: realistic argvs, errors, the option tables against --help, fuzzing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consoled.runtimeargv import (
    RUNTIME_OPTIONS,
    ArgvError,
    Arity,
    OptionSpec,
    RuntimeInvocation,
    parse_runtime_argv,
)

S = "/run/consoled/pty.sock"


def inv(
    runtime: str, command: str, cid: str, args: Sequence[str] = (), sock: str | None = None
) -> RuntimeInvocation:
    return RuntimeInvocation(runtime, command, cid, tuple(args), sock)


RUNC_OK: list[tuple[list[str], RuntimeInvocation]] = [
    (["runc", "run", "-d", "--console-socket", S, "web1"], inv("runc", "run", "web1", sock=S)),
    (
        ["/usr/sbin/runc", "--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json",
         "--log-format", "json", "--debug", "create", "--bundle", "/b", "--pid-file",
         "/b/init.pid", "--console-socket=" + S, "ctr1"],
        inv("runc", "create", "ctr1", sock=S),
    ),
    # run/create: runc moves known options that follow the id in front of it.
    (["runc", "--systemd-cgroup", "run", "web1", "--detach", "--console-socket", S],
     inv("runc", "run", "web1", sock=S)),
    (["runc", "run", "-b", "/b", "web1", "--console-socket=" + S, "--keep"],
     inv("runc", "run", "web1", sock=S)),
    (["runc", "create", "--pid-file", "p", "c2"], inv("runc", "create", "c2")),
    (["runc", "create", "c1", "--pid-file", "-x", "--console-socket", S],
     inv("runc", "create", "c1", sock=S)),
    # urfave/cli: single-dash long options, and booleans as --flag=BOOL.
    (["runc", "-root", "/x", "-debug", "run", "-detach", "-console-socket", S, "web1"],
     inv("runc", "run", "web1", sock=S)),
    (["runc", "--debug=true", "run", "--detach=false", "-no-pivot=1", "--console-socket=" + S,
      "web1"], inv("runc", "run", "web1", sock=S)),
    (["runc", "--help=false", "run", "-keep=F", "web1"], inv("runc", "run", "web1")),
    (["runc", "run", "-d", "-d", "web1"], inv("runc", "run", "web1")),
    (["runc", "run", "--console-socket", "/a", "--console-socket", S, "w"],
     inv("runc", "run", "w", sock=S)),
    (["runc", "run", "--console-socket=", "w"], inv("runc", "run", "w", sock="")),
    # --: ends options, wherever reordering put it.
    (["runc", "run", "-d", "--", "web1"], inv("runc", "run", "web1")),
    (["runc", "run", "web1", "--"], inv("runc", "run", "web1")),
    (["runc", "run", "--console-socket", S, "--", "-odd"], inv("runc", "run", "-odd", sock=S)),
    (["runc", "--", "run", "web1"], inv("runc", "run", "web1")),
    (["runc", "run", "-"], inv("runc", "run", "-")),
    # exec: no reordering; everything after the id is the command.
    (["runc", "exec", "-t", "-d", "--console-socket", S, "--env", "TERM=xterm", "--cwd", "/",
      "--user", "1000:1000", "web1", "sh", "-c", "echo hi"],
     inv("runc", "exec", "web1", ["sh", "-c", "echo hi"], S)),
    (["runc", "exec", "-e", "A=1", "-e=B=2", "-u=0", "--additional-gids", "10", "-c",
      "CAP_KILL", "--preserve-fds=2", "--cgroup", "sub", "--ignore-paused", "--no-new-privs",
      "--apparmor", "unconfined", "--process-label", "l", "web1", "ls"],
     inv("runc", "exec", "web1", ["ls"])),
    (["runc", "exec", "web1", "--tty", "--console-socket", S, "ls"],
     inv("runc", "exec", "web1", ["--tty", "--console-socket", S, "ls"])),
    (["runc", "exec", "web1", "--", "echo"], inv("runc", "exec", "web1", ["--", "echo"])),
    (["runc", "exec", "-t", "--", "web1", "sh"], inv("runc", "exec", "web1", ["sh"])),
    (["runc", "exec", "--tty=true", "--detach=false", "--pid-file=/p", "web1", "top"],
     inv("runc", "exec", "web1", ["top"])),
    (["runc", "exec", "-d", "--process", "/tmp/p.json", "--console-socket", S, "web1"],
     inv("runc", "exec", "web1", (), S)),
    (["runc", "exec", "-p=/tmp/p.json", "web1", "ignored"], inv("runc", "exec", "web1")),
    (["runc", "exec", "--process=", "web1", "sh"], inv("runc", "exec", "web1", ["sh"])),
    # restore hands out the restored init's master; like run, its options may follow the id.
    (["runc", "--root", "/r", "restore", "-d", "--console-socket", S, "--image-path", "/ck",
      "--work-path", "/w", "--tcp-established", "--manage-cgroups-mode", "soft", "-b", "/b",
      "--pid-file", "/p", "--empty-ns", "network", "ct1"],
     inv("runc", "restore", "ct1", sock=S)),
    (["runc", "restore", "ct1", "--console-socket=" + S, "--detach"],
     inv("runc", "restore", "ct1", sock=S)),
]  # fmt: skip

CRUN_OK: list[tuple[list[str], RuntimeInvocation]] = [
    (["crun", "--root=/run/crun", "--systemd-cgroup", "run", "-d", "--console-socket=" + S,
      "web1"], inv("crun", "run", "web1", sock=S)),
    (["/usr/bin/crun", "--cgroup-manager", "systemd", "--log", "/x", "--log-format=json",
      "--debug", "create", "-b", "/b", "--pid-file", "/p", "--console-socket", S, "--no-pivot",
      "--no-new-keyring", "--no-subreaper", "--preserve-fds=1", "-f", "c.json", "c1"],
     inv("crun", "create", "c1", sock=S)),
    (["crun", "--rootless=true", "run", "-bdir", "-d", "web1"], inv("crun", "run", "web1")),
    # argp: clusters, attached values, unambiguous prefixes, hidden argp options.
    (["crun", "exec", "-dt", "--console-socket", S, "-e", "TERM=xterm", "--env=A=1", "--cwd",
      "/", "-u", "1000:1000", "web1", "sh", "-c", "echo hi"],
     inv("crun", "exec", "web1", ["sh", "-c", "echo hi"], S)),
    (["crun", "exec", "-deA=1", "-ufoo", "-cCAP_KILL", "web1", "env"],
     inv("crun", "exec", "web1", ["env"])),
    (["crun", "exec", "-tfalse", "web1", "ls"], inv("crun", "exec", "web1", ["ls"])),
    (["crun", "exec", "-td", "web1", "ls"], inv("crun", "exec", "web1", ["ls"])),
    (["crun", "exec", "--tty=false", "--apparmor", "a", "--cgroup=s", "--no-new-privs",
      "--process-label", "l", "--preserve-fds", "3", "web1", "ls"],
     inv("crun", "exec", "web1", ["ls"])),
    (["crun", "run", "--det", "--cons=" + S, "--bun", "/b", "web1"],
     inv("crun", "run", "web1", sock=S)),
    (["crun", "--roo", "/x", "--sys", "run", "web1"], inv("crun", "run", "web1")),
    (["crun", "--program-name", "x", "run", "--HANG=0", "--program-name=y", "web1"],
     inv("crun", "run", "web1")),
    # In order: the first non-option ends the options; -t's value must be attached.
    (["crun", "exec", "-t", "web1", "ls", "-l"], inv("crun", "exec", "web1", ["ls", "-l"])),
    (["crun", "exec", "-t", "false", "ls"], inv("crun", "exec", "false", ["ls"])),
    (["crun", "exec", "web1", "--tty", "-d", "sh"],
     inv("crun", "exec", "web1", ["--tty", "-d", "sh"])),
    (["crun", "exec", "web1", "--", "x"], inv("crun", "exec", "web1", ["--", "x"])),
    (["crun", "--", "run", "--", "web1"], inv("crun", "run", "web1")),
    (["crun", "exec", "-p", "/p.json", "web1"], inv("crun", "exec", "web1")),
    (["crun", "exec", "--process=/p.json", "--console-socket=" + S, "-t", "web1", "x"],
     inv("crun", "exec", "web1", (), S)),
    (["crun", "exec", "-p", "", "web1"], inv("crun", "exec", "web1")),
    (["crun", "restore", "-d", "--console-socket", S, "--image-path", "/ck", "-b", "/b", "ct1"],
     inv("crun", "restore", "ct1", sock=S)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"), RUNC_OK + CRUN_OK, ids=[" ".join(a) for a, _ in RUNC_OK + CRUN_OK]
)
def test_parses(argv: list[str], expected: RuntimeInvocation) -> None:
    assert parse_runtime_argv(argv) == expected


ERRORS: list[tuple[list[str], list[str]]] = [
    ([], ["empty argv"]),
    (["foo", "run", "x"], ["unknown runtime 'foo'"]),
    (["/usr/bin/runc-wrapper", "run", "x"], ["unknown runtime 'runc-wrapper'"]),
    (["runc"], ["runc: missing subcommand"]),
    (["crun", "--debug"], ["crun: missing subcommand"]),
    (["runc", "delete", "x"], ["'runc delete' does not hand out a console"]),
    (["runc", "h"], ["'runc h' does not hand out a console"]),
    (["crun", "start", "x"], ["'crun start' does not hand out a console"]),
    (["runc", "ru", "x"], ["unknown runc subcommand 'ru'"]),
    (["crun", "checkpoint", "x"], ["'crun checkpoint' does not hand out a console"]),
    (["crun", "features", "x"], ["unknown crun subcommand 'features'"]),
    (["runc", "run"], ["runc run: missing container id"]),
    (["runc", "exec"], ["runc exec: missing container id"]),
    (["crun", "create", "-b", "/b"], ["crun create: missing container id"]),
    (["crun", "exec", "-p", "f"], ["crun exec: missing container id"]),
    (["runc", "exec", "web1"], ["missing command", "'web1'"]),
    (["runc", "exec", "-p=", "web1"], ["missing command"]),
    (["crun", "exec", "-t", "web1"], ["missing command", "'web1'"]),
    (["runc", "exec", "--frob", "web1", "sh"], ["unknown option '--frob' for runc exec"]),
    (["runc", "--frob", "run", "x"], ["unknown option '--frob' for runc"]),
    (["runc", "run", "-dt", "x"], ["unknown option '-dt' for runc run"]),
    (["runc", "exec", "-pfile", "x"], ["unknown option '-pfile'"]),
    (["runc", "run", "--det", "x"], ["unknown option '--det'"]),
    (["runc", "create", "--detach", "x"], ["unknown option '--detach' for runc create"]),
    (["runc", "run", "x", "y"], ["extra arguments ['y']"]),
    (["runc", "run", "x", "--frob"], ["extra arguments ['--frob']"]),
    (["runc", "run", "-d", "x", "--keep"], ["extra arguments ['--keep']"]),
    (["runc", "run", "--detach", "false", "x"], ["extra arguments ['x']", "'false'"]),
    (["runc", "run", "--detach=maybe", "x"], ["invalid boolean value 'maybe'", "'--detach'"]),
    (["runc", "run", "-d", "--detach", "x"], ["'-d' and '--detach' are two forms"]),
    (["runc", "exec", "-e", "A=1", "--env", "B=2", "x", "sh"], ["'-e' and '--env'"]),
    (["runc", "run", "--console-socket"], ["'--console-socket' for runc run needs a value"]),
    (["runc", "run", "---detach", "x"], ["bad option syntax '---detach'"]),
    (["runc", "run", "-=x", "x"], ["bad option syntax '-=x'"]),
    (["runc", "--help", "run", "x"], ["'--help' prints help"]),
    (["runc", "-v", "run", "x"], ["'-v' prints help or version"]),
    (["runc", "run", "x", "-h"], ["runc run: option '-h' prints help"]),
    (["runc", "exec", "--help=1", "x", "sh"], ["'--help' prints help"]),
    (["crun", "run", "web1", "--detach"], ["extra arguments ['--detach']"]),
    (["crun", "run", "--frob", "x"], ["unknown option '--frob' for crun run"]),
    (["crun", "-d", "run", "x"], ["unknown option '-d' for crun"]),
    (["crun", "run", "-dx", "x"], ["unknown option '-x' (in '-dx') for crun run"]),
    (["crun", "run", "-detach", "x"], ["unknown option '-e' (in '-detach') for crun run"]),
    (["crun", "create", "-d", "x"], ["unknown option '-d' for crun create"]),
    (["crun", "run", "--no", "x"], ["ambiguous option '--no'", "--no-pivot", "--no-subreaper"]),
    (["crun", "exec", "--pro=x", "x", "sh"], ["ambiguous option '--pro'", "--process-label"]),
    (["crun", "--lo=x", "run", "x"], ["ambiguous option '--lo'", "--log-format"]),
    (["crun", "run", "--detach=1", "x"], ["option '--detach' for crun run takes no value"]),
    (["crun", "run", "--console-socket"], ["'--console-socket' for crun run needs a value"]),
    (["crun", "exec", "-e"], ["option '-e' for crun exec needs a value"]),
    (["crun", "run", "-?", "x"], ["crun run: option '-?' prints help"]),
    (["crun", "run", "--us", "x"], ["'--usage' prints help"]),
    (["crun", "-V"], ["crun: option '-V' prints help or version"]),
    (["crun", "--ver", "run", "x"], ["'--version' prints"]),
]


@pytest.mark.parametrize(("argv", "fragments"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_rejects(argv: list[str], fragments: list[str]) -> None:
    with pytest.raises(ArgvError) as info:
        parse_runtime_argv(argv)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_tables_are_consistent() -> None:
    for grammar in RUNTIME_OPTIONS.values():
        assert set(grammar.commands) == {"run", "create", "restore", "exec"}
        assert not set(grammar.commands) & grammar.other_commands
        for specs in (grammar.global_options, *grammar.commands.values()):
            names = [n for spec in specs for n in spec.names]
            assert len(names) == len(set(names)), names
            assert all(spec.longs and all(len(n) > 1 for n in spec.longs) for spec in specs)
            assert all(len(n) == 1 for spec in specs for n in spec.shorts)
            assert "console-socket" in names or specs is grammar.global_options


# --- the tables against the installed runtimes' --help ---------------------------------

# Options the tables hold although --help does not list them (checked to be accepted below):
# urfave/cli appends --help/-h to every command without listing it in the command's help;
# glibc argp adds the hidden --program-name=NAME and --HANG[=SECS] to every parser.
HIDDEN = {"runc": {"help"}, "crun": {"program-name", "HANG"}}
SCOPES = ("global", "run", "create", "exec", "restore")
# crun has checkpoint and restore only when built with CRIU (Debian's 1.8.1 is not):
# their options come from crun 1.8.1's source (src/restore.c) and are checked
# against --help only where the build has them.
CRIU_ONLY = {"runc": set(), "crun": {"checkpoint", "restore"}}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"])

Listed = set[tuple[frozenset[str], Arity]]


def binary(runtime: str) -> str:
    path = shutil.which(runtime, path=SEARCH_PATH)
    if path is None:
        pytest.fail(f"{runtime} is not installed; CI installs runc and crun")
    return path


def run_help(runtime: str, *args: str) -> str:
    proc = subprocess.run(
        [binary(runtime), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": SEARCH_PATH, "LC_ALL": "C"},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


def section(text: str, header: str) -> list[str]:
    """The lines after the line ending in ``header``, up to the next empty one."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith(header)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def urfave_options(text: str) -> Listed:
    """``   --bundle value, -b value  path to ...`` lines of a urfave/cli help."""
    listed: Listed = set()
    for line in section(text, "OPTIONS:"):
        items = re.split(r"\s{2,}", line.strip())[0].split(", ")
        matches = [re.fullmatch(r"--?([^\s=,]+)( value)?", item) for item in items]
        assert all(matches), line
        arities = {Arity.VALUE if m[2] else Arity.FLAG for m in matches if m}
        assert len(arities) == 1, line
        listed.add((frozenset(m[1] for m in matches if m), arities.pop()))
    return listed


def argp_options(text: str) -> Listed:
    """``  -b, --bundle=DIR   container bundle`` lines of an argp help."""
    listed: Listed = set()
    for line in text.splitlines():
        if not re.match(r"\s+-", line):
            continue
        names, arity = set(), Arity.FLAG
        for item in re.split(r"\s{2,}", line.strip())[0].split(", "):
            m = re.fullmatch(r"--([^\s=\[]+)(=\S+)?(\[=\S+\])?|-(\S)( \S+)?(\[\S+\])?", item)
            assert m, line
            names.add(m[1] or m[4])
            if m[2] or m[5]:
                arity = Arity.VALUE
            elif m[3] or m[6]:
                arity = Arity.OPTIONAL
        listed.add((frozenset(names), arity))
    return listed


def table_specs(runtime: str, scope: str) -> tuple[OptionSpec, ...]:
    grammar = RUNTIME_OPTIONS[runtime]
    return grammar.global_options if scope == "global" else grammar.commands[scope]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_table_matches_help(runtime: str, scope: str) -> None:
    if scope in CRIU_ONLY[runtime] and not has_command(runtime, scope):
        return  # this build has no such command: nothing to compare with
    args = [*([] if scope == "global" else [scope]), "--help"]
    text = run_help(runtime, *args)
    listed = urfave_options(text) if runtime == "runc" else argp_options(text)
    assert len(listed) >= 5, text  # the help was parsed at all
    specs = table_specs(runtime, scope)
    table = {(frozenset(s.names), s.arity) for s in specs if not s.hidden}
    assert table == listed, (
        f"in the table, not in `{' '.join([runtime, *args])}`: {sorted(map(str, table - listed))}; "
        f"in the help, not in the table: {sorted(map(str, listed - table))}"
    )
    hidden = {s.longs[0] for s in specs if s.hidden}
    if runtime == "runc" and scope == "global":
        assert not hidden
    else:
        assert hidden == HIDDEN[runtime]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_hidden_options_are_accepted(runtime: str, scope: str) -> None:
    if scope in CRIU_ONLY[runtime] and not has_command(runtime, scope):
        return
    command = [] if scope == "global" else [scope]
    if runtime == "runc":
        if scope != "global":
            assert "USAGE:" in run_help("runc", scope, "-h")
        return
    # --usage prints and exits 0 only if every option before it parsed.
    assert "Usage:" in run_help("crun", *command, "--program-name=x", "--HANG=0", "--usage")


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_commands_match_help(runtime: str) -> None:
    text = run_help(runtime, "--help")
    listed: set[str] = set()
    for line in section(text, "COMMANDS:"):
        listed.update(re.split(r"\s{2,}|\s+- ", line.strip())[0].split(", "))
    grammar = RUNTIME_OPTIONS[runtime]
    known = set(grammar.commands) | grammar.other_commands
    assert listed == known - (CRIU_ONLY[runtime] - listed)


def has_command(runtime: str, command: str) -> bool:
    text = run_help(runtime, "--help")
    return any(line.split()[:1] == [command] for line in section(text, "COMMANDS:"))


# --- fuzzing -------------------------------------------------------------------------------


def spellings(spec: OptionSpec, runtime: str) -> list[str]:
    dashes = ("-", "--") if runtime == "runc" else ()
    out = [d + n for n in spec.names for d in dashes]
    out += [f"--{n}" for n in spec.longs] + [f"-{n}" for n in spec.shorts]
    return out + [f"--{n}=v" for n in spec.longs] + [f"-{n}v" for n in spec.shorts]


TOKENS = sorted(
    {
        word
        for runtime, grammar in RUNTIME_OPTIONS.items()
        for specs in (grammar.global_options, *grammar.commands.values())
        for spec in specs
        for word in spellings(spec, runtime)
    }
    | {"run", "create", "exec", "delete", "web1", "sh", "--", "-", "", "-dt", "--x=", "=", "-="}
)


@settings(database=None, deadline=None, max_examples=500)
@given(st.lists(st.text(), max_size=10))
def test_arbitrary_text_raises_only_argverror(argv: list[str]) -> None:
    try:
        result = parse_runtime_argv(argv)
    except ArgvError:
        return
    assert isinstance(result, RuntimeInvocation)


@settings(database=None, deadline=None, max_examples=1500)
@given(
    st.sampled_from(["runc", "crun", "/usr/sbin/runc", "/usr/bin/crun"]),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=12),
)
def test_option_soup_raises_only_argverror(runtime: str, rest: list[str]) -> None:
    try:
        result = parse_runtime_argv([runtime, *rest])
    except ArgvError:
        return
    assert result.runtime == runtime.rpartition("/")[2]
    assert result.command in {"run", "create", "exec"}
    assert result.container_id in rest
    assert result.command == "exec" or result.process_args == ()
