"""What the Pulumi CLI does with Pulumi.yaml and a stack file before the program starts.

There is no CLI here, so these rules are transcribed from its source (pulumi/pulumi v3.259.0,
the version `.pulumi-version` pins as tested) and applied by the tests:

- ``sdk/go/common/workspace/project.json`` and ``project.go`` (``ValidateProject``,
  ``RewriteShorthandConfigValues``, ``Project.Validate``, ``ValidateConfigValue``): the shape
  of the ``config:`` block and its defaults;
- ``sdk/go/common/resource/config/object.go`` (``MarshalString``): how a stack file value
  becomes the text a program reads (scalars as JSON text, lists and maps as JSON);
- ``pkg/workspace/config.go`` (``mergeConfig``, ``validateStackConfigValues``): required keys,
  injected defaults, secret and type checks, with the CLI's own error messages.

The result is what the language host hands the program: every key with a string value, and
the list of keys that were secrets.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

CONFIG_TYPES = ("string", "integer", "boolean", "array", "object")
DECLARATION_ATTRIBUTES = ("type", "items", "description", "secret", "default", "value")
TEST_CIPHER_PREFIX = "testcipher:"


class CliError(Exception):
    """The CLI stops with this message before the program runs."""


@dataclass(frozen=True)
class StackValue:
    text: str
    secure: bool = False
    is_object: bool = False


@dataclass(frozen=True)
class ProgramConfig:
    """What the program is started with."""

    values: dict[str, str]
    secret_keys: tuple[str, ...]


def encrypt_for_test(plaintext: str) -> dict[str, str]:
    """A stack file's ``secure:`` value that ``decrypt_for_test`` opens (the tests' secrets provider)."""
    return {"secure": TEST_CIPHER_PREFIX + base64.b64encode(plaintext.encode()).decode()}


def decrypt_for_test(ciphertext: str) -> str:
    if not ciphertext.startswith(TEST_CIPHER_PREFIX):
        raise CliError(f"failed to decrypt {ciphertext[:16]}...: not encrypted by this stack's secrets provider")
    return base64.b64decode(ciphertext[len(TEST_CIPHER_PREFIX):]).decode()


# ----------------------------------------------------------------------------- Pulumi.yaml

def load_project(path: Path) -> dict[str, Any]:
    project = yaml.safe_load(path.read_text())
    validate_project(project)
    return project


def validate_project(project: Any) -> None:
    if not isinstance(project, dict):
        raise CliError(f"expected project to be an object, was '{type(project).__name__}'")
    name = project.get("name")
    if not isinstance(name, str) or not name:
        raise CliError("project is missing a non-empty string 'name' attribute")
    config = project.get("config") or {}
    if not isinstance(config, dict):
        raise CliError("#/config: expected object")
    for key, declaration in config.items():
        _validate_declaration_schema(key, declaration)
    for key, declaration in _declarations(project).items():
        _validate_declaration(name, key, declaration)


def _validate_declaration_schema(key: str, declaration: Any) -> None:
    """project.json: a config entry is a string, integer, boolean, array or a ConfigTypeDeclaration."""
    if isinstance(declaration, (str, int, bool, list)):
        return
    if not isinstance(declaration, dict):
        raise CliError(f"#/config/{key}: value must be a string, integer, boolean, array or object")
    unknown = sorted(set(declaration) - set(DECLARATION_ATTRIBUTES))
    if unknown:
        raise CliError(f"#/config/{key}: additionalProperties '{unknown[0]}' not allowed")
    if "type" in declaration and declaration["type"] not in CONFIG_TYPES:
        raise CliError(f"#/config/{key}/type: value must be one of {', '.join(map(repr, CONFIG_TYPES))}")
    if "description" in declaration and not isinstance(declaration["description"], str):
        raise CliError(f"#/config/{key}/description: expected string")
    if "secret" in declaration and not isinstance(declaration["secret"], bool):
        raise CliError(f"#/config/{key}/secret: expected boolean")
    items = declaration.get("items")
    while items is not None:
        if not isinstance(items, dict) or items.get("type") not in CONFIG_TYPES:
            raise CliError(f"#/config/{key}/items: missing properties: 'type'")
        if items["type"] == "array" and "items" not in items:
            raise CliError(f"#/config/{key}/items: missing properties: 'items'")
        items = items.get("items")


def _declarations(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """RewriteShorthandConfigValues: a bare value is a default (project namespace) or a value."""
    name = project["name"]
    declarations = {}
    for key, declaration in (project.get("config") or {}).items():
        if isinstance(declaration, dict):
            declarations[key] = declaration
        elif _is_project_key(name, key):
            declarations[key] = {"default": declaration}
        else:
            declarations[key] = {"value": declaration}
    return declarations


def _is_project_key(project_name: str, key: str) -> bool:
    return ":" not in key or key.split(":", 1)[0] == project_name


def _validate_declaration(project_name: str, key: str, declaration: dict[str, Any]) -> None:
    """Project.Validate."""
    if "default" in declaration and "value" in declaration:
        raise CliError(f"project config '{key}' cannot have both a 'default' and 'value' attribute")
    typed = "type" in declaration
    if _is_project_key(project_name, key):
        if typed and declaration["type"] == "array" and "items" not in declaration:
            raise CliError(
                f"The configuration key '{key}' declares an array but does not specify the underlying "
                "type via the 'items' attribute"
            )
        if typed and "default" in declaration and not valid_config_value(
            declaration["type"], declaration.get("items"), declaration["default"]
        ):
            raise CliError(
                f"The default value specified for configuration key '{key}' is not of the expected type "
                f"'{full_type_name(declaration['type'], declaration.get('items'))}'"
            )
    else:
        if typed:
            raise CliError(f"Configuration key '{key}' is not namespaced by the project and should not define a type")
        if "default" in declaration:
            raise CliError(
                f"Configuration key '{key}' is not namespaced by the project and should not define a default "
                "value. Did you mean to use the 'value' attribute instead of 'default'?"
            )
        if "value" not in declaration:
            raise CliError(f"Configuration key '{key}' is namespaced and must provide an attribute 'value'")


def full_type_name(type_name: str, items: Optional[dict[str, Any]]) -> str:
    if items is not None:
        return f"array<{full_type_name(items['type'], items.get('items'))}>"
    return type_name


def valid_config_value(type_name: str, items: Optional[dict[str, Any]], value: Any) -> bool:
    """ValidateConfigValue."""
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "integer":
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return True
        if isinstance(value, float):
            return value == math.trunc(value)
        if isinstance(value, str):
            try:
                int(value, 10)
            except ValueError:
                return False
            return value.strip() == value  # strconv.Atoi accepts no spaces
        return False
    if type_name == "boolean":
        return value in ("true", "false") or isinstance(value, bool)
    if type_name == "object":
        return isinstance(value, dict)
    if not isinstance(value, list) or items is None:
        return False
    return all(valid_config_value(items["type"], items.get("items"), item) for item in value)


# ----------------------------------------------------------------------------- stack files

def load_stack_file(path: Path) -> dict[str, StackValue]:
    document = yaml.safe_load(path.read_text()) or {}
    return {key: stack_value(value) for key, value in (document.get("config") or {}).items()}


def stack_value(value: Any) -> StackValue:
    """object.MarshalString: strings as they are, other scalars as JSON text, the rest as JSON."""
    if isinstance(value, dict) and set(value) == {"secure"}:
        return StackValue(value["secure"], secure=True)
    if isinstance(value, str):
        return StackValue(value)
    if isinstance(value, (bool, int, float)):
        return StackValue(json.dumps(value))
    return StackValue(_go_json(value), is_object=True)


def _go_json(value: Any) -> str:
    """encoding/json.Marshal: compact, map keys sorted."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _default_value(raw: Any) -> StackValue:
    """createConfigValue: a primitive as its %v text, anything else as JSON."""
    if isinstance(raw, bool):
        return StackValue("true" if raw else "false")
    if isinstance(raw, (str, int)):
        return StackValue(str(raw))
    return StackValue(_go_json(raw), is_object=True)


def _full_key(project_name: str, key: str) -> str:
    return key if ":" in key else f"{project_name}:{key}"


# ----------------------------------------------------------------------------- the merge

def program_config(
    project: dict[str, Any], stack_name: str, stack: dict[str, StackValue], decrypt=decrypt_for_test
) -> ProgramConfig:
    """mergeConfig with validation, as `pulumi preview`/`up` run it; raises CliError like the CLI."""
    project_name = project["name"]
    merged = dict(stack)
    missing = []
    declarations = _declarations(project)
    for key in sorted(declarations):
        declaration = declarations[key]
        full = _full_key(project_name, key)
        if full in merged:
            continue
        if "value" not in declaration and "default" not in declaration:
            if _is_project_key(project_name, key):
                missing.append(key)
            continue
        merged[full] = _default_value(declaration["default"] if "default" in declaration else declaration["value"])
    if missing:
        raise CliError(missing_keys_message(stack_name, missing))
    for key in sorted(declarations):
        declaration = declarations[key]
        value = merged.get(_full_key(project_name, key))
        if "type" not in declaration or value is None:
            continue
        if declaration.get("secret") and not value.secure:
            raise CliError(f"Stack '{stack_name}' with configuration key '{key}' must be encrypted as it's secret")
        text = decrypt(value.text) if value.secure else value.text
        content = json.loads(text) if value.is_object else text
        if not valid_config_value(declaration["type"], declaration.get("items"), content):
            raise CliError(
                f"Stack '{stack_name}' with configuration key '{key}' must be of type "
                f"'{full_type_name(declaration['type'], declaration.get('items'))}'"
            )
    values = {key: decrypt(value.text) if value.secure else value.text for key, value in merged.items()}
    secrets = tuple(sorted(key for key, value in merged.items() if value.secure))
    return ProgramConfig(values, secrets)


def missing_keys_message(stack_name: str, keys: list[str]) -> str:
    """missingStackConfigurationKeysError with formatMissingKeys."""
    if len(keys) == 1:
        listing = f"'{keys[0]}'"
    else:
        ordered = sorted(keys)
        listing = ", ".join(f"'{key}'" for key in ordered[:-2])
        listing = (listing + ", " if listing else "") + f"'{ordered[-2]}' and '{ordered[-1]}'"
    return f"Stack '{stack_name}' is missing configuration {'value' if len(keys) == 1 else 'values'} {listing}"
