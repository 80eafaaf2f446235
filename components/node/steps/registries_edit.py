"""Edits k3s's registries.yaml on a node: adds or removes this registry, keeps everything else.

This file runs on the node (``python3 -c <source>``), so it uses only the standard library and
PyYAML, and never prints the document: registries.yaml can hold other registries' passwords.
The caller writes the result; this program only reads the current file and prints the new one.

    merge   FILE ADDRESS CA_FILE [OLD_ADDRESS [CACHES [OLD_CACHES]]]  < auth.json
            (auth.json: {} or {"username","password"}; CACHES: JSON [{"upstream","address"}], the
            pull-through caches: mirrors.<upstream> -> https://<address> with the same CA and auth)
    unmerge FILE ADDRESS [CACHES]
    forget-guide FILE HOSTNAME   the manual guide's entry: configs.HOSTNAME (no port) with its key_file

Exit status 3: the file cannot be edited (the message says why); 4: no PyYAML on the node.
"""

import json
import sys

try:
    import yaml
except ImportError:  # the node has no PyYAML: the calling script names the package to install
    sys.exit(4)


class EditError(Exception):
    pass


def load_document(text):
    try:
        document = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # The parser's message quotes the offending line, which may hold a password: not shown.
        raise EditError(f"registries.yaml is not valid YAML{where}; fix or remove it and retry") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise EditError("registries.yaml does not hold a mapping at the top level; fix or remove it and retry")
    for section in ("mirrors", "configs"):
        if document.get(section) is not None and not isinstance(document[section], dict):
            raise EditError(f"registries.yaml: '{section}' is not a mapping; fix it and retry")
    return document


def remove_registry(document, address):
    for section in ("mirrors", "configs"):
        entries = document.get(section)
        if isinstance(entries, dict):
            entries.pop(address, None)
            if not entries:
                del document[section]
    return document


def add_registry(document, address, ca_file, auth):
    document.setdefault("mirrors", {})[address] = {"endpoint": [f"https://{address}"]}
    document.setdefault("configs", {})[address] = _config(ca_file, auth)
    return document


def _config(ca_file, auth):
    config = {"tls": {"ca_file": ca_file}}
    if auth:
        config["auth"] = {"username": auth["username"], "password": auth["password"]}
    return config


def remove_cache(document, cache):
    """Takes out a cache this program wrote: its configs entry, and the upstream's mirror if it is ours."""
    mirrors = document.get("mirrors")
    if isinstance(mirrors, dict) and mirrors.get(cache["upstream"]) == {"endpoint": [f"https://{cache['address']}"]}:
        del mirrors[cache["upstream"]]
        if not mirrors:
            del document["mirrors"]
    remove_registry_configs(document, cache["address"])
    return document


def remove_registry_configs(document, address):
    configs = document.get("configs")
    if isinstance(configs, dict):
        configs.pop(address, None)
        if not configs:
            del document["configs"]


def add_caches(document, caches, ca_file, auth):
    """k3s asks mirrors.<upstream> first and falls back to the upstream itself when they fail."""
    mirrors = document.get("mirrors") if isinstance(document.get("mirrors"), dict) else {}
    taken = sorted(cache["upstream"] for cache in caches if cache["upstream"] in mirrors)
    if taken:
        raise EditError(
            "registries.yaml already has a mirror for " + ", ".join(taken) + " that this program did not write; "
            "remove it from the file, or remove that upstream from the stack's mirrors"
        )
    for cache in caches:
        document.setdefault("mirrors", {})[cache["upstream"]] = {"endpoint": [f"https://{cache['address']}"]}
        document.setdefault("configs", {})[cache["address"]] = _config(ca_file, auth)
    return document


# What the manual guide put under configs.<hostname>: its own self-signed certificate as the CA
# and the registry's private key as a (meaningless) client key, both in the trust store.
GUIDE_TLS_FILES = {
    "ca_file": "/usr/local/share/ca-certificates/registry.crt",
    "key_file": "/usr/local/share/ca-certificates/registry.key",
}


def forget_guide(text, hostname):
    """Removes configs.<hostname> when it is the guide's entry (its tls names the guide's files)."""
    document = load_document(text)
    configs = document.get("configs")
    entry = configs.get(hostname) if isinstance(configs, dict) else None
    tls = entry.get("tls") if isinstance(entry, dict) and set(entry) == {"tls"} else None
    if not isinstance(tls, dict) or tls.get("key_file") != GUIDE_TLS_FILES["key_file"]:
        return text
    if set(tls) - set(GUIDE_TLS_FILES) or tls.get("ca_file", GUIDE_TLS_FILES["ca_file"]) != GUIDE_TLS_FILES["ca_file"]:
        return text
    del configs[hostname]
    if not configs:
        del document["configs"]
    return render(document)


def render(document):
    if not document:
        return ""
    return yaml.safe_dump(document, default_flow_style=False, sort_keys=False)


def merge(text, address, ca_file, old_address=None, auth=None, caches=(), old_caches=()):
    document = load_document(text)
    if old_address and old_address != address:
        remove_registry(document, old_address)
    for cache in list(old_caches) + list(caches):
        remove_cache(document, cache)
    add_registry(remove_registry(document, address), address, ca_file, auth)
    return render(add_caches(document, caches, ca_file, auth))


def unmerge(text, address, caches=()):
    document = remove_registry(load_document(text), address)
    for cache in caches:
        remove_cache(document, cache)
    return render(document)


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def main(argv):
    command, path, address = argv[1:4]
    if command == "merge":
        ca_file = argv[4]
        old_address = argv[5] if len(argv) > 5 else None
        caches = json.loads(argv[6]) if len(argv) > 6 and argv[6] else []
        old_caches = json.loads(argv[7]) if len(argv) > 7 and argv[7] else []
        auth = json.loads(sys.stdin.read() or "{}")
        result = merge(_read(path), address, ca_file, old_address, auth, caches, old_caches)
    elif command == "unmerge":
        caches = json.loads(argv[4]) if len(argv) > 4 and argv[4] else []
        result = unmerge(_read(path), address, caches)
    elif command == "forget-guide":
        result = forget_guide(_read(path), address)
    else:
        raise EditError(f"unknown command {command!r}")
    sys.stdout.write(result)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except EditError as error:
        sys.stderr.write(f"k3s-registry: {error}\n")
        sys.exit(3)
