"""
The docs show only commands that exist: every shell command in README.md and doc/*.md is run.

A command is a line of a fenced code block, or an inline code span, that starts with
``make ``, ``.venv/``, ``telesurgery-`` or ``python -m telesurgery_ros`` (after an optional
``$ `` prompt or leading environment assignments such as ``CI=true``). Each is checked in the
way that cannot start the stack:

- ``make TARGET [VAR=value ...]``: ``make -n`` of the same line (the target exists and its
  recipe expands);
- ``telesurgery-launch FILE [arg:=value ...]``: ``--check`` (the file and every argument
  resolve, nothing starts);
- ``telesurgery-<tool> ...`` and ``python -m telesurgery_ros.<module> ...``: the same command
  with ``--help`` appended, so argparse still refuses an unknown option or a wrong choice
  given before it;
- a node (an executable under ``.venv/lib/telesurgery_ros/``, or ``python -m
  telesurgery_ros.nodes.<node>``): it exists, and every ``-p name:=value`` names a declared
  parameter of that node with a valid value.

A command must be concrete: ``<placeholder>``, ``[optional]`` and ``...`` fail, so write an
example that runs (``certs:=/etc/telesurgery/certs``).

Every relative Markdown link or image (``](path)``, ``](path#anchor)``) must point to a file
that exists, relative to the page it is on.
"""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
PREFIXES = ('make ', '.venv/', 'telesurgery-', 'python -m telesurgery_ros')
NODE_DIR = '.venv/lib/telesurgery_ros/'
_FENCE = re.compile(r'^\s*(```|~~~)')
_SPAN = re.compile(r'`([^`\n]+)`')
_ENV = re.compile(r'^[A-Z_][A-Z0-9_]*=\S*$')


def doc_files():
    return [os.path.join(ROOT, 'README.md')] + sorted(
        glob.glob(os.path.join(ROOT, 'doc', '**', '*.md'), recursive=True))


def _command(text):
    """Return the command in ``text`` (prompt and env assignments stripped), or None."""
    text = text.strip()
    if text.startswith('$ '):
        text = text[2:].strip()
    words = text.split()
    while words and _ENV.match(words[0]):
        words.pop(0)
    text = ' '.join(words)
    text = re.sub(r'\s+#.*$', '', text)             # a trailing shell comment
    return text if text.startswith(PREFIXES) else None


def commands_in(path):
    """Yield ``(line number, command)`` of every command shown in one Markdown file."""
    with open(path) as handle:
        lines = handle.read().splitlines()
    in_block = False
    pending, start = '', 0
    for number, line in enumerate(lines, start=1):
        if _FENCE.match(line):
            in_block = not in_block
            continue
        if in_block:
            if pending:
                pending += ' ' + line.strip()
            else:
                pending, start = line.strip(), number
            if pending.endswith('\\'):
                pending = pending[:-1].rstrip()
                continue
            found = _command(pending)
            if found:
                yield start, found
            pending = ''
            continue
        for span in _SPAN.findall(line):
            found = _command(span)
            if found:
                yield number, found


def all_commands():
    seen = {}
    for path in doc_files():
        for number, command in commands_in(path):
            seen.setdefault(command, f'{os.path.relpath(path, ROOT)}:{number}')
    return sorted(seen.items(), key=lambda item: item[1])


COMMANDS = all_commands()


def test_the_docs_show_commands():
    files = {where.split(':')[0] for _command, where in COMMANDS}
    print(f'{len(COMMANDS)} distinct commands in {len(files)} files')
    assert 'README.md' in files
    assert any(c.startswith('make demo') for c, _w in COMMANDS)
    assert any(c.startswith('make test') for c, _w in COMMANDS)


def _run(argv, timeout=120):
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ['PATH'])
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _argv(command):
    try:
        return shlex.split(command)
    except ValueError as exc:
        pytest.fail(f'not a valid shell command ({exc}): {command}')


def _node_name(argv):
    """Return the node a command starts, or None (``.venv/lib/telesurgery_ros/X``, ``-m``)."""
    if argv[0].startswith(NODE_DIR):
        return os.path.basename(argv[0])
    if len(argv) > 2 and argv[1] == '-m' and argv[2].startswith('telesurgery_ros.nodes.'):
        return argv[2].rpartition('.')[2]
    return None


def _node_check(argv, name, where):
    from telesurgery_ros.core.params import validate_values
    import importlib
    if argv[0].startswith(NODE_DIR):
        assert os.access(os.path.join(ROOT, argv[0]), os.X_OK), \
            f'{where}: {argv[0]} is not an executable here'
    module = importlib.import_module(f'telesurgery_ros.nodes.{name}')
    given = {}
    for i, word in enumerate(argv):
        if word == '-p' and i + 1 < len(argv):
            key, _sep, text = argv[i + 1].partition(':=')
            given[key] = _yaml_value(text)
    problems = validate_values(_parameter_table(module, given, where), given)
    assert not problems, f'{where}: {argv}: {problems}'


def _parameter_table(module, given, where):
    """
    Return the node's parameter table: ``PARAMETERS``, or the table of the role given.

    site_link declares a different table per ``role`` (``SURGEON_PARAMETERS``,
    ``PATIENT_PARAMETERS``); the role is the ``-p role:=`` of the command or its default.
    """
    table = getattr(module, 'PARAMETERS', None)
    if table is not None:
        return table
    roles = [p for p in getattr(module, 'COMMON_PARAMETERS', ()) if p.name == 'role']
    assert roles, f'{where}: {module.__name__} has no PARAMETERS table'
    role = str(given.get('role', roles[0].default))
    table = getattr(module, f'{role.upper()}_PARAMETERS', None)
    assert table is not None, f'{where}: {module.__name__}: no parameters for role {role!r}'
    return table


def _yaml_value(text):
    import yaml
    return yaml.safe_load(text) if text else ''


@pytest.mark.parametrize('command, where', COMMANDS, ids=[w for _c, w in COMMANDS])
def test_every_command_in_the_docs_exists(command, where):
    argv = _argv(command)
    if len(argv) == 1 and argv[0].endswith('/'):     # a folder named in the text
        assert os.path.isdir(os.path.join(ROOT, argv[0])), f'{where}: no folder {argv[0]}'
        return
    assert not re.search(r'<[^>]*>|\[[^\]]*\]|\.\.\.', command), \
        f'{where}: `{command}` is not a concrete command (placeholder, [option] or ...)'
    node = _node_name(argv)
    if node is not None:
        try:
            _node_check(argv, node, where)
        except ModuleNotFoundError:
            pytest.fail(f'{where}: `{command}`: no node {node}')
        return
    if argv[0] == 'make':
        result = _run(['make', '-n', *argv[1:]])
    else:
        if argv[0].startswith('.venv/bin/'):
            argv[0] = os.path.basename(argv[0])
            if argv[0] == 'python':
                argv[0] = sys.executable
            elif not os.access(os.path.join(VENV_BIN, argv[0]), os.X_OK):
                pytest.fail(f'{where}: `{command}`: no executable {argv[0]} in .venv/bin '
                            f'(node executables are in {NODE_DIR})')
        if argv[0] == 'python':
            argv[0] = sys.executable
        if argv[0] == 'telesurgery-launch' and len(argv) > 1:
            argv = argv[:1] + ['--check'] + [a for a in argv[1:] if a != '--check']
        else:
            argv = argv + ['--help']
        try:
            result = _run(argv)
        except FileNotFoundError:
            pytest.fail(f'{where}: `{command}`: no program {argv[0]}')
    output = (result.stdout + result.stderr).strip()
    print(f'{where}: {command}\n  -> exit {result.returncode}: {output[-300:]}')
    assert result.returncode == 0, f'{where}: `{command}` failed:\n{output[-2000:]}'


_LINK = re.compile(r'\]\(([^)\s]+)\)')
_SCHEME = re.compile(r'^[a-z][a-z0-9+.-]*:', re.IGNORECASE)


def links_in(path):
    """Yield ``(line number, target)`` of every relative link or image outside code blocks."""
    with open(path) as handle:
        lines = handle.read().splitlines()
    in_block = False
    for number, line in enumerate(lines, start=1):
        if _FENCE.match(line):
            in_block = not in_block
            continue
        if in_block:
            continue
        for target in _LINK.findall(_SPAN.sub('', line)):
            if not _SCHEME.match(target) and not target.startswith('#'):
                yield number, target


def all_links():
    found = []
    for path in doc_files():
        where = os.path.relpath(path, ROOT)
        for number, target in links_in(path):
            found.append((os.path.dirname(path), target, f'{where}:{number}'))
    return found


LINKS = all_links()


def test_the_docs_link_their_pages():
    targets = {os.path.normpath(os.path.join(base, target.partition('#')[0]))
               for base, target, _where in LINKS}
    pages = {os.path.normpath(p) for p in doc_files()[1:]}
    unlinked = sorted(os.path.relpath(p, ROOT) for p in pages - targets)
    assert not unlinked, f'doc pages no other page links to: {unlinked}'


# Images that a tool makes from a real run (python -m telesurgery_ros.tools.screenshot --out doc);
# a link to one that was not made yet is reported as a skip, not a pass.
GENERATED = {'doc/viewer.png': 'python -m telesurgery_ros.tools.screenshot --out doc'}


@pytest.mark.parametrize('base, target, where', LINKS, ids=[w for _b, _t, w in LINKS])
def test_every_relative_link_resolves(base, target, where):
    path = os.path.normpath(os.path.join(base, target.partition('#')[0]))
    name = os.path.relpath(path, ROOT)
    if not os.path.exists(path) and name in GENERATED:
        pytest.skip(f'{where}: {name} is not made yet: run {GENERATED[name]}')
    assert os.path.exists(path), \
        f'{where}: the link ({target}) points to {name}, which does not exist'
