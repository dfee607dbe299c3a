"""
``telesurgery-launch``: run this package's YAML launch files, with or without ROS 2 ``launch``.

``launch`` and ``launch_ros`` are not published on PyPI, so the pip-only set-up cannot run
``ros2 launch``. When the real ``launch`` is importable, the file is handed to it unchanged
(``LaunchService`` + ``IncludeLaunchDescription``). Otherwise this module interprets the small
subset of the launch_yaml format that our files use, and refuses everything else with the
file, line and tag named:

- tags: ``arg`` (name, default, description), ``let`` (name, value), ``node`` (pkg, exec,
  name, namespace, param [``from:`` file or ``name``/``value``], remap [from/to], output,
  args), ``include`` (file, arg [name/value]), ``group`` (a list of children, or ``children:``)
  with ``push-ros-namespace`` / ``push_ros_namespace`` (namespace), ``set_env`` (name, value);
  an ``arg`` may list its valid values, ``choice: [{value: A}, {value: B}]``, as launch does;
- conditions: ``if:`` / ``unless:`` on every tag, true for ``true``/``1`` and false for
  ``false``/``0`` (any case), anything else refused, as ``launch`` does;
- substitutions: ``$(var NAME)``, ``$(find-pkg-share PKG)``, ``$(env NAME [DEFAULT])``,
  ``$(dirname)``, ``$(equals A B)``, ``$(not-equals A B)``.

Each node runs as its own process (:class:`telesurgery_ros.procman.ManagedProcess`): own
process group, output prefixed with the node name, SIGINT -> SIGTERM -> SIGKILL on stop, killed
by the kernel if the runner dies. On Ctrl-C/SIGTERM every node is stopped and each exit is
reported. When a node exits on its own it is reported and, as ``ros2 launch`` does by default,
the others keep running; ``--exit-on-node-exit`` stops the whole launch instead. The runner
exits when every node has exited, with code 0 only if every node ended cleanly (exit code 0,
or stopped by our SIGINT), 1 otherwise, and 2 for an invalid launch file or argument.
"""
import argparse
import importlib.util
import math
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time

from telesurgery_ros import resources, stdout_guard
from telesurgery_ros.procman import describe_returncode, ManagedProcess, stop_together
import yaml  # after telesurgery_ros: flake8-import-order sorts one third-party group here

OUTPUT_CHOICES = ('screen', 'log', 'both')
_NAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


class LaunchFileError(Exception):
    """A launch file uses something the embedded runner does not support, or is invalid."""

    def __init__(self, path, line, message):
        self.path, self.line, self.message = path, line, message
        super().__init__(f'{path}:{line}: {message}')


# --- YAML with line numbers -------------------------------------------------------------

class _Map(dict):
    """A YAML mapping that remembers the (1-based) line it starts on."""

    line = 0


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_map(loader, node):
    loader.flatten_mapping(node)
    result = _Map(loader.construct_pairs(node, deep=True))
    result.line = node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


def _load_yaml(path):
    try:
        with open(path) as handle:
            return yaml.load(handle, Loader=_LineLoader)
    except OSError as exc:
        raise LaunchFileError(path, 0, f'cannot read launch file: {exc.strerror}') from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, 'problem_mark', None)
        line = mark.line + 1 if mark is not None else 0
        raise LaunchFileError(path, line, f'not valid YAML: {exc.problem or exc}') from None


# --- what a launch file describes -------------------------------------------------------

class NodeSpec:
    """One node process: everything needed to build its command line."""

    def __init__(self, package, executable, name, namespace, params, remaps, args, output,
                 env, origin):
        self.package = package
        self.executable = executable
        self.name = name
        self.namespace = namespace          # absolute ('/' for the root namespace)
        self.params = params                # [('file', path) | ('value', name, text)]
        self.remaps = remaps                # [(from, to)]
        self.args = args                    # extra arguments before --ros-args
        self.output = output
        self.env = env                      # {name: value} from set_env
        self.origin = origin                # 'file:line'
        self.command = None                 # (argv prefix, how it was found)

    @property
    def label(self):
        """Return the prefix of the output lines: the node name (with a non-root namespace)."""
        base = self.name or self.executable
        return base if self.namespace == '/' else f'{self.namespace.strip("/")}/{base}'

    @property
    def full_name(self):
        base = self.name or self.executable
        return f'/{base}' if self.namespace == '/' else f'{self.namespace}/{base}'

    def ros_args(self):
        argv = ['--ros-args']
        if self.name:
            argv += ['-r', f'__node:={self.name}']
        if self.namespace != '/':
            argv += ['-r', f'__ns:={self.namespace}']
        for item in self.params:
            if item[0] == 'file':
                argv += ['--params-file', item[1]]
            else:
                argv += ['-p', f'{item[1]}:={item[2]}']
        for src, dst in self.remaps:
            argv += ['-r', f'{src}:={dst}']
        return argv

    def argv(self):
        return [*self.command[0], *self.args, *self.ros_args()]


class LaunchDescriptionData:
    """The result of interpreting a launch file: declared arguments and node processes."""

    def __init__(self):
        self.arguments = []                 # (name, default or None, description, file)
        self.nodes = []


class _Scope:
    """Launch configurations, ROS namespace and environment in force at one point."""

    def __init__(self, path, configs, namespace, env):
        self.path = path
        self.configs = configs
        self.namespace = namespace
        self.env = env

    def child(self, path=None):
        return _Scope(path or self.path, dict(self.configs), self.namespace, dict(self.env))


_ALLOWED_KEYS = {
    'arg': ({'name'}, {'default', 'description', 'choice'}),
    'let': ({'name', 'value'}, set()),
    'node': ({'pkg', 'exec'}, {'name', 'namespace', 'param', 'remap', 'output', 'args'}),
    'include': ({'file'}, {'arg'}),
    'push-ros-namespace': ({'namespace'}, set()),
    'push_ros_namespace': ({'namespace'}, set()),
    'set_env': ({'name', 'value'}, set()),
}
_SUPPORTED_TAGS = sorted([*_ALLOWED_KEYS, 'group'])
# Every action of ``launch`` takes a condition (launch.Action.parse): one of these, not both.
_CONDITION_KEYS = ('if', 'unless')
_TRUE, _FALSE = ('true', '1'), ('false', '0')


class Interpreter:
    """Interpret the supported subset of launch_yaml into a :class:`LaunchDescriptionData`."""

    def __init__(self, share_directory=resources.share_directory):
        self.share_directory = share_directory
        self.result = LaunchDescriptionData()
        self._include_depth = 0

    def load(self, path, arguments):
        """Interpret ``path`` with ``arguments`` ({name: value}) given on the command line."""
        path = os.path.abspath(path)
        scope = _Scope(path, dict(arguments), '/', {})
        self._run_file(path, scope, top_level=True)
        declared = {a[0] for a in self.result.arguments}
        unknown = sorted(set(arguments) - declared)
        if unknown:
            raise LaunchFileError(path, 0, 'unknown launch argument(s): ' + ', '.join(unknown)
                                  + '; declared: ' + ', '.join(sorted(declared)))
        return self.result

    def _run_file(self, path, scope, top_level=False):
        data = _load_yaml(path)
        if not isinstance(data, dict) or list(data) != ['launch']:
            raise LaunchFileError(path, getattr(data, 'line', 1),
                                  "a launch file must be a mapping with the one key 'launch'")
        entities = data['launch'] or []
        if not isinstance(entities, list):
            raise LaunchFileError(path, data.line, "'launch' must hold a list of tags")
        self._run_entities(entities, scope, data.line)

    def _run_entities(self, entities, scope, parent_line):
        for entity in entities:
            if not isinstance(entity, _Map) or len(entity) != 1:
                raise LaunchFileError(scope.path, getattr(entity, 'line', parent_line),
                                      'each entry must be a mapping with one key, the tag')
            tag, body = next(iter(entity.items()))
            line = entity.line
            if not self._condition_holds(tag, body, scope, line):
                continue
            if tag == 'group':
                self._group(body, scope, line)
                continue
            if tag not in _ALLOWED_KEYS:
                raise LaunchFileError(
                    scope.path, line, f"tag '{tag}' is not supported by the embedded runner "
                    f"(supported: {', '.join(_SUPPORTED_TAGS)})")
            self._check_keys(tag, body, scope, line)
            getattr(self, '_' + tag.replace('-', '_'))(body, scope, line)

    def _condition_holds(self, tag, body, scope, line):
        """Evaluate an ``if:`` / ``unless:`` attribute (True when there is none)."""
        if not isinstance(body, dict):
            return True
        given = [key for key in _CONDITION_KEYS if key in body]
        if not given:
            return True
        if len(given) > 1:
            raise LaunchFileError(scope.path, getattr(body, 'line', line),
                                  f"tag '{tag}': 'if' and 'unless' cannot be used together")
        key = given[0]
        value = self._text(body, key, scope, line).strip().lower()
        if value not in _TRUE + _FALSE:
            raise LaunchFileError(
                scope.path, getattr(body, 'line', line),
                f"tag '{tag}': condition {key}: {body[key]!r} evaluates to {value!r}, "
                "expected one of 'true', '1', 'false', '0'")
        return (value in _TRUE) == (key == 'if')

    def _check_keys(self, tag, body, scope, line, allowed=None):
        required, optional = allowed or _ALLOWED_KEYS[tag]
        if not isinstance(body, dict):
            raise LaunchFileError(scope.path, line, f"tag '{tag}' needs a mapping of attributes")
        line = getattr(body, 'line', line)
        if allowed is None:
            optional = optional | set(_CONDITION_KEYS)
        missing = sorted(required - set(body))
        if missing:
            raise LaunchFileError(scope.path, line,
                                  f"tag '{tag}' lacks attribute(s): {', '.join(missing)}")
        extra = sorted(set(body) - required - optional)
        if extra:
            raise LaunchFileError(
                scope.path, line, f"tag '{tag}': attribute(s) {', '.join(extra)} not supported "
                f"by the embedded runner (supported: {', '.join(sorted(required | optional))})")

    def _text(self, body, key, scope, line):
        """Return a text attribute, substituted (launch_yaml does no type coercion)."""
        value = body[key]
        if not isinstance(value, str):
            raise LaunchFileError(
                scope.path, line, f"attribute '{key}' must be a string (quote it: '{value}')")
        return self.substitute(value, scope, line)

    # tags -----------------------------------------------------------------------------

    def _arg(self, body, scope, line):
        name = body['name']
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise LaunchFileError(scope.path, line, f'invalid argument name {name!r}')
        default = self._text(body, 'default', scope, line) if 'default' in body else None
        description = body.get('description', '')
        choices = self._choices(body, scope, line)
        self.result.arguments.append((name, default, description, scope.path))
        if name not in scope.configs:
            if default is None:
                raise LaunchFileError(
                    scope.path, line, f"launch argument '{name}' is required and was not given"
                    f' (pass {name}:=VALUE)')
            scope.configs[name] = default
        if choices and scope.configs[name] not in choices:
            raise LaunchFileError(
                scope.path, line, f"launch argument '{name}' must be one of "
                f"{', '.join(choices)}, got {scope.configs[name]!r}")

    def _choices(self, body, scope, line):
        """Return the ``choice: [{value: A}, ...]`` of an ``arg`` (launch's choices)."""
        items = body.get('choice')
        if items is None:
            return []
        if not isinstance(items, list) or not items or not all(
                isinstance(i, dict) and set(i) == {'value'} and isinstance(i['value'], str)
                for i in items):
            raise LaunchFileError(scope.path, line, "'choice' must be a list of {value: TEXT}")
        return [i['value'] for i in items]

    def _let(self, body, scope, line):
        scope.configs[body['name']] = self._text(body, 'value', scope, line)

    def _set_env(self, body, scope, line):
        scope.env[self._text(body, 'name', scope, line)] = self._text(body, 'value', scope, line)

    def _push_ros_namespace(self, body, scope, line):
        pushed = self._text(body, 'namespace', scope, line).strip()
        scope.namespace = _prefix_namespace(scope.namespace, pushed, scope.path, line)

    def _group(self, body, scope, line):
        if isinstance(body, dict):
            self._check_keys('group', body, scope, line, ({'children'}, set(_CONDITION_KEYS)))
            children = body['children']
        else:
            children = body
        if not isinstance(children, list):
            raise LaunchFileError(scope.path, line, "tag 'group' needs a list of children")
        self._run_entities(children, scope.child(), line)

    def _include(self, body, scope, line):
        path = self._text(body, 'file', scope, line)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(scope.path), path)
        if not os.path.isfile(path):
            raise LaunchFileError(scope.path, line, f'included file not found: {path}')
        if not path.endswith('.yaml'):
            raise LaunchFileError(scope.path, line,
                                  f'the embedded runner includes YAML launch files only: {path}')
        inner = scope.child(os.path.abspath(path))
        for item in self._list_of_maps(body, 'arg', scope, line):
            self._check_keys('arg', item, scope, line, ({'name', 'value'}, set()))
            inner.configs[item['name']] = self._text(item, 'value', scope,
                                                     getattr(item, 'line', line))
        self._include_depth += 1
        if self._include_depth > 20:
            raise LaunchFileError(scope.path, line, 'includes nested too deep (a cycle?)')
        try:
            self._run_file(inner.path, inner)
        finally:
            self._include_depth -= 1

    def _list_of_maps(self, body, key, scope, line):
        items = body.get(key) or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise LaunchFileError(scope.path, line, f"attribute '{key}' must be a list of "
                                  'mappings')
        return items

    def _node(self, body, scope, line):
        package = self._text(body, 'pkg', scope, line)
        executable = self._text(body, 'exec', scope, line)
        name = self._text(body, 'name', scope, line) if 'name' in body else None
        if name is not None and not _NAME_RE.match(name):
            raise LaunchFileError(scope.path, line, f'invalid node name {name!r}')
        namespace = scope.namespace
        if 'namespace' in body:
            namespace = _prefix_namespace(namespace, self._text(body, 'namespace', scope, line),
                                          scope.path, line)
        output = self._text(body, 'output', scope, line) if 'output' in body else 'screen'
        if output not in OUTPUT_CHOICES:
            raise LaunchFileError(scope.path, line, f'node output {output!r} not one of '
                                  + ', '.join(OUTPUT_CHOICES))
        args = shlex.split(self._text(body, 'args', scope, line)) if 'args' in body else []
        params = []
        for item in self._list_of_maps(body, 'param', scope, line):
            item_line = getattr(item, 'line', line)
            if 'from' in item:
                self._check_keys('param', item, scope, item_line, ({'from'}, set()))
                path = self._text(item, 'from', scope, item_line)
                params.append(('file', path))
            else:
                self._check_keys('param', item, scope, item_line, ({'name', 'value'}, set()))
                value = item['value']
                if isinstance(value, str):
                    value = self.substitute(value, scope, item_line)
                params.append(('value', item['name'], _param_text(value)))
        remaps = []
        for item in self._list_of_maps(body, 'remap', scope, line):
            item_line = getattr(item, 'line', line)
            self._check_keys('remap', item, scope, item_line, ({'from', 'to'}, set()))
            remaps.append((self._text(item, 'from', scope, item_line),
                           self._text(item, 'to', scope, item_line)))
        spec = NodeSpec(package, executable, name, namespace, params, remaps, args, output,
                        dict(scope.env), f'{scope.path}:{line}')
        spec.command = self.resolve_executable(package, executable, scope.path, line)
        self._check_param_files(spec, scope.path, line)
        self.result.nodes.append(spec)

    # substitutions ---------------------------------------------------------------------

    def substitute(self, text, scope, line):
        """Expand ``$(...)`` substitutions in ``text`` (nested ones first)."""
        out = []
        i = 0
        while i < len(text):
            start = text.find('$(', i)
            if start < 0:
                out.append(text[i:])
                break
            out.append(text[i:start])
            depth, j = 1, start + 2
            while j < len(text) and depth:
                if text.startswith('$(', j):
                    depth += 1
                    j += 2
                    continue
                if text[j] == ')':
                    depth -= 1
                j += 1
            if depth:
                raise LaunchFileError(scope.path, line, f'unclosed substitution in {text!r}')
            inner = self.substitute(text[start + 2:j - 1], scope, line)
            out.append(self._evaluate(inner, scope, line))
            i = j
        return ''.join(out)

    def _evaluate(self, expression, scope, line):
        parts = expression.split()
        kind, params = (parts[0], parts[1:]) if parts else ('', [])
        if kind == 'var' and len(params) == 1:
            if params[0] not in scope.configs:
                raise LaunchFileError(scope.path, line, f'undefined launch variable '
                                      f'{params[0]!r} in $(var {params[0]})')
            return scope.configs[params[0]]
        if kind == 'env' and len(params) in (1, 2):
            value = os.environ.get(params[0], params[1] if len(params) == 2 else None)
            if value is None:
                raise LaunchFileError(scope.path, line, f'environment variable {params[0]!r} '
                                      'is not set and $(env) has no default')
            return value
        if kind == 'find-pkg-share' and len(params) == 1:
            try:
                return self.share_directory(params[0])
            except FileNotFoundError as exc:
                raise LaunchFileError(scope.path, line, str(exc)) from None
        if kind == 'dirname' and not params:
            return os.path.dirname(scope.path)
        if kind in ('equals', 'not-equals') and len(params) == 2:
            same = _equal(*params)
            return 'true' if same == (kind == 'equals') else 'false'
        raise LaunchFileError(
            scope.path, line, f'substitution $({expression}) is not supported by the embedded '
            'runner (supported: var NAME, env NAME [DEFAULT], find-pkg-share PKG, dirname, '
            'equals A B, not-equals A B)')

    # executables and parameter files ---------------------------------------------------

    def resolve_executable(self, package, executable, path, line):
        """Return (argv prefix, how it was found) for a node executable."""
        try:
            share = self.share_directory(package)
        except FileNotFoundError as exc:
            raise LaunchFileError(path, line, str(exc)) from None
        looked = []
        if os.path.basename(os.path.dirname(share)) == 'share':
            installed = os.path.join(os.path.dirname(os.path.dirname(share)), 'lib', package,
                                     executable)
            if os.access(installed, os.X_OK):
                return [installed], f'installed executable {installed}'
            looked.append(installed)
        for folder in (os.path.dirname(sys.executable), None):
            found = shutil.which(executable, path=folder)
            if found:
                return [found], f'console script {found}'
        looked.append('a console script on PATH')
        module = f'{package}.nodes.{executable}'
        if package == resources.PACKAGE:
            if importlib.util.find_spec(module) is not None:
                return [sys.executable, '-m', module], f'python -m {module}'
            looked.append(f'module {module}')
        raise LaunchFileError(path, line, f"executable '{executable}' of package '{package}' "
                              f'not found (looked for {", ".join(looked)})')

    def _check_param_files(self, spec, path, line):
        for item in spec.params:
            if item[0] != 'file':
                continue
            param_file = item[1]
            try:
                with open(param_file) as handle:
                    content = yaml.safe_load(handle)
            except OSError as exc:
                raise LaunchFileError(path, line, f'parameter file {param_file}: '
                                      f'{exc.strerror}') from None
            except yaml.YAMLError as exc:
                raise LaunchFileError(path, line, f'parameter file {param_file} is not valid '
                                      f'YAML: {exc}') from None
            if not isinstance(content, dict):
                raise LaunchFileError(path, line, f'parameter file {param_file} must be a '
                                      'mapping of node names to ros__parameters')
            if not any(_matches_node(key, spec.full_name) and isinstance(section, dict)
                       and 'ros__parameters' in section
                       for key, section in content.items()):
                raise LaunchFileError(
                    path, line, f'parameter file {param_file} has no ros__parameters section '
                    f'for node {spec.full_name} (sections: {", ".join(map(str, content))})')


def _matches_node(key, full_name):
    """Whether a parameter-file section key applies to the node ``full_name`` (as rcl does)."""
    key = str(key)
    if not key.startswith('/'):
        key = '/' + key
    pattern = re.escape(key).replace(r'/\*\*', '(/.*)?').replace(r'\*', '[^/]*')
    return re.fullmatch(pattern, full_name) is not None


def _equal(left, right):
    """Compare as launch's EqualsSubstitution: booleans, then numbers, then text."""
    if all(v.lower() in _TRUE + _FALSE for v in (left, right)):
        return (left.lower() in _TRUE) == (right.lower() in _TRUE)
    try:
        return math.isclose(float(left), float(right))
    except ValueError:
        return left == right


def _prefix_namespace(base, pushed, path, line):
    if not pushed:
        return base
    joined = pushed if pushed.startswith('/') else base.rstrip('/') + '/' + pushed
    joined = '/' + joined.strip('/')
    if not all(_NAME_RE.match(part) for part in joined.strip('/').split('/') if part):
        raise LaunchFileError(path, line, f'invalid namespace {joined!r}')
    return joined


def _param_text(value):
    """Format a parameter value as rcl reads it after ``-p name:=`` (YAML)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return '[' + ', '.join(_param_text(v) for v in value) + ']'
    if isinstance(value, str):
        return value if value.strip() else "''"
    raise TypeError(f'unsupported parameter value {value!r}')


def parse_launch_arguments(items):
    """``['a:=1', 'b:=x']`` -> ``{'a': '1', 'b': 'x'}``; raise ValueError naming a bad one."""
    arguments = {}
    for item in items:
        name, sep, value = item.partition(':=')
        if not sep or not _NAME_RE.match(name):
            raise ValueError(f'launch arguments are name:=value, got {item!r}')
        arguments[name] = value
    return arguments


def describe(path, arguments, share_directory=resources.share_directory):
    """Interpret ``path`` with the embedded runner; return a :class:`LaunchDescriptionData`."""
    return Interpreter(share_directory).load(path, arguments)


# --- running ----------------------------------------------------------------------------

def _log(text):
    sys.stdout.write(f'[launch] {text}\n')
    sys.stdout.flush()


def _report(label, text):
    sys.stdout.write(f'[{label}] {text}\n')
    sys.stdout.flush()


class LaunchRun:
    """The node processes of one launch; start(), then poll() until done, then stop()."""

    def __init__(self, nodes, sink=None, sigint_timeout=5.0, sigterm_timeout=3.0,
                 log=_log, report=_report):
        self.nodes = nodes
        self.sink = sink
        self.sigint_timeout = sigint_timeout
        self.sigterm_timeout = sigterm_timeout
        self.log = log
        self.report = report
        self.procs = {}
        self.exits = {}                 # label -> (returncode, by_us)
        self._reported = set()

    def start(self):
        labels = [n.label for n in self.nodes]
        for spec in self.nodes:
            label = spec.label
            if labels.count(label) > 1:
                label = f'{label}-{len(self.procs) + 1}'
            env = {**os.environ, 'PYTHONUNBUFFERED': '1', **spec.env}
            kwargs = {} if self.sink is None else {'sink': self.sink}
            proc = ManagedProcess(label, spec.argv(), env=env, **kwargs).start()
            self.procs[label] = proc
            self.log(f'{label} started (pid {proc.pid}): {shlex.join(spec.argv())}')
        return self

    def poll(self):
        """Report nodes that exited on their own since the last call; return their labels."""
        ended = []
        for label, proc in self.procs.items():
            if label in self._reported or proc.running():
                continue
            self._reported.add(label)
            self.exits[label] = (proc.returncode, False)
            self.report(label, f'exited: {describe_returncode(proc.returncode)}'
                        ' (on its own)')
            ended.append(label)
        return ended

    def running(self):
        return [label for label, proc in self.procs.items() if proc.running()]

    def stop(self):
        """Stop every node (in parallel); report and return {label: returncode}."""
        self.poll()
        labels = [label for label in self.procs if label not in self._reported]
        codes = dict(zip(labels, stop_together([self.procs[label] for label in labels],
                                               self.sigint_timeout, self.sigterm_timeout)))
        for label in sorted(codes):
            proc = self.procs[label]
            how = describe_returncode(codes[label])
            escalated = proc.stop_signal not in (None, signal.SIGINT)
            self.exits[label] = (codes[label], True)
            self._reported.add(label)
            note = f' (after {proc.stop_signal.name})' if escalated else ''
            self.report(label, f'exited: {how}{note}')
        return {label: code for label, (code, _by_us) in self.exits.items()}

    def failures(self):
        """Labels of the nodes that did not end cleanly."""
        bad = []
        for label, (code, by_us) in self.exits.items():
            proc = self.procs[label]
            clean = code == 0 or (by_us and code == -signal.SIGINT)
            if by_us and proc.stop_signal in (signal.SIGTERM, signal.SIGKILL):
                clean = False
            if not clean:
                bad.append(label)
        return sorted(bad)


def run_embedded(path, arguments, exit_on_node_exit=False, sigint_timeout=5.0,
                 sigterm_timeout=3.0, duration=None):
    """Run a launch file with the embedded runner until a signal (or ``duration`` s)."""
    description = describe(path, arguments)
    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    run = LaunchRun(description.nodes, sigint_timeout=sigint_timeout,
                    sigterm_timeout=sigterm_timeout)
    try:
        run.start()
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            ended = run.poll()
            if ended and exit_on_node_exit:
                _log(f'{", ".join(ended)} exited: stopping the launch (--exit-on-node-exit)')
                break
            if not run.running():
                _log('every node has exited')
                break
            if deadline is not None and time.monotonic() >= deadline:
                _log(f'duration of {duration} s reached')
                break
            if stdout_guard.CLOSED.is_set():
                break
            stop.wait(0.1)
        if received:
            _log(f'{received[0]} received: stopping {len(run.running())} node(s)')
    finally:
        run.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failures = run.failures()
    if failures:
        _log(f'not clean: {", ".join(failures)}')
    if stdout_guard.CLOSED.is_set():
        stopped = len(run.procs)
        stdout_guard.say_closed('telesurgery-launch', f'stopped the launch ({stopped} node(s)'
                                + (f'; not clean: {", ".join(failures)}' if failures else '')
                                + ')')
        return stdout_guard.EXIT_CODE
    return 1 if failures else 0


def ros_launch_available():
    """Whether the real ROS 2 ``launch`` (with launch_ros and launch_yaml) is importable."""
    try:
        import launch
        import launch_ros  # noqa: F401
        import launch_yaml  # noqa: F401
    except ImportError:
        return False
    # A folder named launch/ in the working directory imports as an empty namespace package.
    return hasattr(launch, 'LaunchService')


def run_with_ros_launch(path, arguments):
    """Hand the file, unchanged, to the real ROS 2 launch (as ``ros2 launch`` does)."""
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import AnyLaunchDescriptionSource
    service = LaunchService(argv=[f'{k}:={v}' for k, v in arguments.items()])
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        AnyLaunchDescriptionSource(path), launch_arguments=list(arguments.items()))]))
    return service.run()


def find_launch_file(first, second=None):
    """``FILE`` or ``PKG FILE`` (as ``ros2 launch``): return the launch file's path."""
    if second is not None:
        return os.path.join(resources.share_directory(first), 'launch', second)
    if os.path.isfile(first) or os.sep in first:
        return first
    candidate = os.path.join(resources.share_directory(), 'launch', first)
    return candidate if os.path.isfile(candidate) else first


def print_description(description, out=sys.stdout):
    """Print the arguments and the processes a launch would start (``--print``)."""
    out.write('arguments:\n')
    seen = set()
    for name, default, text, _path in description.arguments:
        if name in seen:
            continue
        seen.add(name)
        value = 'required' if default is None else f'default {default!r}'
        out.write(f'  {name} ({value}){": " + text if text else ""}\n')
    out.write(f'processes ({len(description.nodes)}):\n')
    for spec in description.nodes:
        out.write(f'  {spec.label}  [{spec.command[1]}]  from {spec.origin}\n')
        out.write(f'    {shlex.join(spec.argv())}\n')


def build_parser():
    parser = argparse.ArgumentParser(
        prog='telesurgery-launch',
        description='Run a telesurgery_ros YAML launch file: handed to ROS 2 launch when it is '
                    'installed, else run by the embedded runner (a subset of launch_yaml).')
    parser.add_argument('launch', nargs='+', metavar='FILE [name:=value ...]',
                        help='a launch file path, a file name in telesurgery_ros/launch, or '
                             'PKG FILE; then launch arguments as name:=value')
    parser.add_argument('--check', '--print', dest='check', action='store_true',
                        help='validate the file with the embedded runner, print the processes '
                             'it would start and exit (0 valid, 2 invalid)')
    parser.add_argument('--show-args', action='store_true',
                        help='list the launch arguments and exit')
    parser.add_argument('--embedded', action='store_true',
                        help='use the embedded runner even when ROS 2 launch is installed')
    parser.add_argument('--exit-on-node-exit', action='store_true',
                        help='stop every node as soon as one exits (default: report it and '
                             'keep the others running, as ros2 launch does)')
    parser.add_argument('--sigint-timeout', type=float, default=5.0, metavar='S',
                        help='seconds a node gets after SIGINT before SIGTERM (default 5)')
    parser.add_argument('--sigterm-timeout', type=float, default=3.0, metavar='S',
                        help='seconds after SIGTERM before SIGKILL (default 3)')
    return parser


def main(argv=None):
    parser = build_parser()
    options = parser.parse_args(argv)
    stdout_guard.guard()
    words = [w for w in options.launch if ':=' not in w]
    if len(words) not in (1, 2) or options.launch[:len(words)] != words:
        parser.error('expected FILE or PKG FILE, then name:=value arguments')
    try:
        arguments = parse_launch_arguments(options.launch[len(words):])
        path = find_launch_file(*words)
    except (ValueError, FileNotFoundError) as exc:
        print(f'telesurgery-launch: {exc}', file=sys.stderr)
        return 2
    try:
        if options.check or options.show_args:
            description = describe(path, arguments)
            print_description(description)
            return 0
        if ros_launch_available() and not options.embedded:
            _log(f'ROS 2 launch found: handing {path} to it')
            return run_with_ros_launch(path, arguments)
        _log(f'embedded runner (ROS 2 launch not installed): {path}')
        return run_embedded(path, arguments, options.exit_on_node_exit,
                            options.sigint_timeout, options.sigterm_timeout)
    except LaunchFileError as exc:
        print(f'telesurgery-launch: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
