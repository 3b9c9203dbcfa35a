"""The layering a newcomer reads in the README holds: a lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import apimw_async

PACKAGE = Path(apimw_async.__file__).parent

# Lowest first. A module's layer is the first prefix that matches its dotted path.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "values",
        [
            "_version",
            "_config",
            "_errors",
            "_clock",
            "_timestamps",
            "_models",
            "_types",
            "webhooks._signature",
            "webhooks._events",
        ],
    ),
    (
        "transport",
        ["_urls", "_envelope", "_loops", "_send", "_sessions", "_retry", "_admission"],
    ),
    ("endpoints", ["_auth_api"]),
    ("tokens", ["stores", "_token_manager"]),
    ("client", ["_client", "resources", "_middleware", "webhooks._receiver"]),
    (
        "integrations",
        [
            "webhooks._aiohttp",
            "webhooks",
            "fastapi",
            "pytest_plugin",
            "testing",
            "demo",
            "cli",
            "__main__",
            "__init__",
        ],
    ),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return index
    raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package_parts = module.split(".")
    if path.name != "__init__.py":
        package_parts = package_parts[:-1]
    type_checking_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                type_checking_only.add(id(child))
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("apimw_async."):
                target = node.module.removeprefix("apimw_async.")
            else:
                continue
            if target:
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    exists = (PACKAGE / Path(*candidate.split("."))).with_suffix(".py").exists()
                    found.add(candidate if exists else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("apimw_async."):
                    found.add(alias.name.removeprefix("apimw_async."))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "__init__")
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    module = module_name(path)
    own = layer_of(module)
    for target in imported_modules(path, module):
        assert layer_of(target) <= own, (
            f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        )


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = PACKAGE / "_send.py"
    source = bad.read_text() + "\nfrom ._client import Client\n"
    fake = tmp_path / "_send.py"
    fake.write_text(source)
    assert "_client" in imported_modules(fake, "_send")
    assert layer_of("_client") > layer_of("_send")
