"""The package's shape: the running service never imports dev-mode or operator-command code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import messaging_service

PACKAGE = Path(messaging_service.__file__).parent
TOOLING = ("messaging_service.dev", "messaging_service.ops")


def _module_path(name: str) -> Path | None:
    relative = Path(*name.split(".")[1:])
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(name: str) -> set[str]:
    """Every messaging_service module ``name`` imports, at the top or inside a function."""
    path = _module_path(name)
    assert path is not None, name
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from messaging_service.x import y`` may import the module x.y
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {
        module
        for module in found
        if module.startswith("messaging_service") and _module_path(module) is not None
    }


def _closure(roots: tuple[str, ...]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_imports(module) - seen)
    return seen


def test_the_running_service_imports_no_dev_mode_or_operator_command_module() -> None:
    """Every import, even one inside a function, from the ``run`` command down."""
    closure = _closure(("messaging_service.cli", "messaging_service.app"))
    assert "messaging_service.service.pipeline" in closure  # the walk does reach the service
    tooling = sorted(module for module in closure if module.startswith(TOOLING))
    assert tooling == []


def test_starting_the_cli_loads_no_dev_mode_or_operator_command_module() -> None:
    code = (
        "import sys, messaging_service.cli, messaging_service.app;"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('messaging_service'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "messaging_service.service.pipeline" in loaded
    assert [module for module in loaded if module.startswith(TOOLING)] == []


def test_the_operator_and_dev_commands_are_still_there() -> None:
    from click.testing import CliRunner

    from messaging_service.cli import main

    listing = CliRunner().invoke(main, ["--help"]).output
    for command in ("run", "config", "dev", "send", "render", "dlq"):
        assert f"  {command} " in listing


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:] or body
    assert node.end_lineno is not None
    return node.end_lineno - body[0].lineno + 1


def test_no_function_of_the_package_is_longer_than_sixty_lines() -> None:
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.name} ({_body_lines(node)} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > 60
    ]
    assert long == []


ALLOWED = {
    # Dependencies point inward: the pure core needs nothing else; the service never reaches
    # an adapter except through the core's Protocols; adapters never reach the service.
    "core": ("messaging_service.core", "messaging_service.errors"),
    "service": (
        "messaging_service.core",
        "messaging_service.errors",
        "messaging_service.service",
        "messaging_service.telemetry",
    ),
    "adapters": (
        "messaging_service.core",
        "messaging_service.errors",
        "messaging_service.adapters",
        "messaging_service.config",
        "messaging_service.tls",
        "messaging_service.redaction",
        "messaging_service.telemetry",
    ),
}


def test_dependencies_point_inward() -> None:
    wrong = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / layer).glob("*.py")):
            module = f"messaging_service.{layer}.{path.stem}"
            wrong += [
                f"{module} imports {target}"
                for target in sorted(_imports(module))
                if not target.startswith(allowed)
            ]
    assert wrong == []
