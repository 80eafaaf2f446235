"""Edits k3s's registries.yaml on a node: adds or removes this registry, keeps everything else.

This file runs on the node (``python3 -c <source>``), so it uses only the standard library and
PyYAML (3.12 on RHEL 8: no sort_keys), and never prints the document: registries.yaml can hold
other registries' passwords. The caller writes the result; this program only reads the current
file and prints the new one.

    merge   FILE ADDRESS CA_FILE [OLD_ADDRESS [CACHES [OLD_CACHES]]]  < auth.json
            (auth.json: {} or {"username","password"}; CACHES: JSON [{"upstream","address"}], the
            pull-through caches: mirrors.<upstream> -> https://<address> with the same CA and auth;
            none for a cache with "anonymous": true)
    unmerge FILE ADDRESS [CACHES]
    forget-guide FILE HOSTNAME   the manual guide's entry: configs.HOSTNAME (no port) with its key_file
    private-registry CONFIG...   the registries file k3s's config files name (private-registry), if any

Exit status 3: the file cannot be edited (the message says why); 4: no PyYAML on the node.

Why the text is edited line by line and never loaded and dumped again: k3s reads the file with
gopkg.in/yaml.v2 into string fields (rancher/wharfie pkg/registries), which keeps an unquoted
scalar's literal text, where PyYAML reads YAML 1.1 (a password 0123 is the number 83, yes is
True, 12:30:00 is 45000) and drops comments. So only our own entries' lines change: PyYAML
finds where the sections and their entries are (yaml.compose gives every node's position), our
entries are written by yaml.safe_dump, and every other byte stays as it was. Our entries carry a
comment, MARK, on their first line: it tells a later removal which lines are ours, also an
endpoint added to someone else's endpoint-less mirror (k3s's embedded mirror, Spegel, is set
up with ``mirrors: {docker.io: }`` entries), so that removing it gives back exactly that entry.
"""

import json
import sys

try:
    import yaml
except ImportError:  # the node has no PyYAML: the calling script names the package to install
    sys.exit(4)

MARK = "# k3s-registry"
SECTIONS = ("mirrors", "configs")


class EditError(Exception):
    pass


def _fail_block_style(what):
    raise EditError(
        "registries.yaml: " + what + " is written in flow style ({...}); write it in block style "
        "(one entry per line) so that entries can be added without rewriting the others"
    )


class Document:
    """registries.yaml as lines, with where its sections and their entries are."""

    def __init__(self, text):
        self.parse(text)

    def parse(self, text):
        self.lines = text.splitlines(True)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader) if text.strip() else None
            self.value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = " at line %d, column %d" % (mark.line + 1, mark.column + 1) if mark else ""
            # The parser's message quotes the offending line, which may hold a password: not shown.
            raise EditError("registries.yaml is not valid YAML" + where + "; fix or remove it and retry") from None
        if self.value is None:
            self.value = {}
        if not isinstance(self.value, dict) or (root is not None and not isinstance(root, yaml.MappingNode)):
            raise EditError("registries.yaml does not hold a mapping at the top level; fix or remove it and retry")
        if root is not None and root.flow_style:
            _fail_block_style("the top level")
        for section in SECTIONS:
            if self.value.get(section) is not None and not isinstance(self.value[section], dict):
                raise EditError("registries.yaml: '" + section + "' is not a mapping; fix it and retry")
        self.root = root

    # ------------------------------------------------------------------ where things are

    def _top(self):
        """(key node, value node, first line, end line) of each top-level entry."""
        if self.root is None:
            return []
        pairs = self.root.value
        found = []
        for index, (key, value) in enumerate(pairs):
            end = pairs[index + 1][0].start_mark.line if index + 1 < len(pairs) else len(self.lines)
            found.append((key, value, key.start_mark.line, end))
        return found

    def section(self, name):
        """(key node, value node, first line, end line) of a section, or None."""
        for key, value, first, end in self._top():
            if isinstance(key, yaml.ScalarNode) and key.value == name:
                return key, value, first, self._trimmed(first, end, 0)
        return None

    def _trimmed(self, first, end, indent):
        """``end`` moved back over blank lines and comments at ``indent`` or less: they belong
        to what follows."""
        while end > first + 1:
            line = self.lines[end - 1]
            stripped = line.strip()
            if stripped and not (stripped.startswith("#") and len(line) - len(line.lstrip()) <= indent):
                break
            end -= 1
        return end

    def entries(self, name):
        """{key: (key node, value node, first line, end line)} of a section's entries."""
        found = self.section(name)
        if found is None:
            return {}
        _, value, _, section_end = found
        if not isinstance(value, yaml.MappingNode):
            return {}
        if value.flow_style and value.value:
            _fail_block_style("'" + name + "'")
        pairs = value.value
        result = {}
        for index, (key, child) in enumerate(pairs):
            end = pairs[index + 1][0].start_mark.line if index + 1 < len(pairs) else section_end
            result[key.value] = (key, child, key.start_mark.line, self._trimmed(key.start_mark.line, end, key.start_mark.column))
        return result

    def entry_indent(self, name):
        entries = self.entries(name)
        if entries:
            return min(key.start_mark.column for key, _, _, _ in entries.values())
        return 2

    def is_marked(self, line):
        return self.lines[line].rstrip().endswith(MARK)

    # ------------------------------------------------------------------ changes

    def text(self):
        return "".join(self.lines)

    def reload(self):
        self.parse(self.text())

    def delete_lines(self, first, end):
        del self.lines[first:end]
        self.reload()

    def insert_lines(self, at, new_lines):
        if at > 0 and not self.lines[at - 1].endswith("\n"):
            self.lines[at - 1] += "\n"
        self.lines[at:at] = new_lines
        self.reload()

    def remove_entry(self, name, key):
        """Takes out an entry of a section; a section left empty by it goes too."""
        entry = self.entries(name).get(key)
        if entry is None:
            return False
        self.delete_lines(entry[2], entry[3])
        section = self.section(name)
        if section is not None and not self.entries(name) and _empty(section[1]):
            self.delete_lines(section[2], section[3])
        return True

    def add_entry(self, name, key, value):
        """Appends an entry to a section (made, at the end of the file, if there is none)."""
        section = self.section(name)
        if section is None:
            self.insert_lines(len(self.lines), [name + ":\n"])
            section = self.section(name)
        _, section_value, first, end = section
        if isinstance(section_value, yaml.MappingNode) and section_value.flow_style:
            if section_value.value:
                _fail_block_style("'" + name + "'")
            # An empty {} on the key's line: the entries go below the key instead.
            line = self.lines[first]
            start, stop = section_value.start_mark.column, section_value.end_mark.column
            self.lines[first] = line[:start].rstrip() + line[stop:]
            self.reload()
            _, section_value, first, end = self.section(name)
        elif not _empty(section_value) and not isinstance(section_value, yaml.MappingNode):
            raise EditError("registries.yaml: '" + name + "' is not a mapping; fix it and retry")
        self.insert_lines(end, rendered({key: value}, self.entry_indent(name)))


def _empty(node):
    """A value written as nothing at all (``key:`` and the end of the line)."""
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null") and node.start_mark.index == node.end_mark.index


def rendered(value, indent):
    """The lines of ``value`` as yaml.safe_dump writes it, indented, MARK on the first."""
    text = yaml.safe_dump(value, default_flow_style=False, width=1 << 30)
    lines = [" " * indent + line + "\n" for line in text.splitlines()]
    lines[0] = lines[0][:-1] + "  " + MARK + "\n"
    return lines


# ---------------------------------------------------------------------------- our entries

def _mirror(address):
    return {"endpoint": ["https://" + address]}


def _config(ca_file, auth):
    config = {"tls": {"ca_file": ca_file}}
    if auth:
        config["auth"] = {"username": auth["username"], "password": auth["password"]}
    return config


def _current(document, name, key):
    section = document.value.get(name)
    return section.get(key) if isinstance(section, dict) else None


def set_entry(document, name, key, value):
    """Our entry, as ``value``: left alone when it is that already (no change, no restart)."""
    if key in (document.value.get(name) or {}) and _current(document, name, key) == value:
        return
    document.remove_entry(name, key)
    document.add_entry(name, key, value)


def remove_registry(document, address):
    for name in SECTIONS:
        document.remove_entry(name, address)


def add_cache_mirror(document, upstream, address):
    """mirrors.<upstream> -> our cache. An entry already there with no endpoints (the embedded
    mirror's ``docker.io:``, or only a rewrite) gets ours added; one with endpoints of its own is
    someone else's mirror, and stops the step."""
    url = "https://" + address
    entry = document.entries("mirrors").get(upstream)
    if entry is None:
        document.add_entry("mirrors", upstream, _mirror(address))
        return
    key, value, first, _ = entry
    current = _current(document, "mirrors", upstream)
    if isinstance(current, dict) and current.get("endpoint") == [url]:
        return
    if isinstance(current, dict) and "endpoint" in current:
        raise EditError(
            "registries.yaml already has a mirror for " + upstream + " that this program did not write; "
            "remove it from the file, or remove that upstream from the stack's mirrors"
        )
    if _empty(value):
        indent = key.start_mark.column + 2
    elif isinstance(value, yaml.MappingNode) and value.value and not value.flow_style:
        indent = min(child.start_mark.column for child, _ in value.value)
    elif isinstance(value, yaml.MappingNode) and value.value:
        _fail_block_style("mirrors." + upstream)
    else:
        raise EditError(
            "registries.yaml: mirrors." + upstream + " has a value on its own line; write it as '"
            + upstream + ":' with nothing after it, so that this program's endpoint can be added below"
        )
    document.insert_lines(first + 1, rendered({"endpoint": [url]}, indent))


def remove_cache(document, cache):
    """Takes out a cache this program wrote: its configs entry, and its endpoint for the upstream
    (the whole mirror entry if this program made it, else exactly the lines it added)."""
    upstream, url = cache["upstream"], "https://" + cache["address"]
    entry = document.entries("mirrors").get(upstream)
    current = _current(document, "mirrors", upstream)
    if entry is not None and isinstance(current, dict) and current.get("endpoint") == [url]:
        _, value, first, end = entry
        children = value.value if isinstance(value, yaml.MappingNode) else []
        keys = [child.value for child, _ in children]
        added = keys.index("endpoint") if "endpoint" in keys else None
        if added is not None and not document.is_marked(first) and document.is_marked(children[added][0].start_mark.line):
            # Our endpoint in someone else's entry: exactly the lines we added go.
            child = children[added][0]
            child_end = children[added + 1][0].start_mark.line if added + 1 < len(children) else end
            document.delete_lines(child.start_mark.line,
                                  document._trimmed(child.start_mark.line, child_end, child.start_mark.column))
        elif document.is_marked(first) or current == _mirror(cache["address"]):
            document.remove_entry("mirrors", upstream)
    document.remove_entry("configs", cache["address"])


def merge(text, address, ca_file, old_address=None, auth=None, caches=(), old_caches=()):
    document = Document(text)
    if old_address and old_address != address:
        remove_registry(document, old_address)
    wanted = {cache["upstream"]: cache for cache in caches}
    for cache in old_caches:
        if wanted.get(cache["upstream"]) != cache:
            remove_cache(document, cache)
    set_entry(document, "mirrors", address, _mirror(address))
    set_entry(document, "configs", address, _config(ca_file, auth))
    for cache in caches:
        add_cache_mirror(document, cache["upstream"], cache["address"])
        # An anonymous cache gets no credentials: the configs entry would send them to it.
        set_entry(document, "configs", cache["address"], _config(ca_file, None if cache.get("anonymous") else auth))
    return document.text() if document.value else ""


def unmerge(text, address, caches=()):
    document = Document(text)
    remove_registry(document, address)
    for cache in caches:
        remove_cache(document, cache)
    return document.text() if document.value or document.text().strip() else ""


# What the manual guide put under configs.<hostname>: its own self-signed certificate as the CA
# and the registry's private key as a (meaningless) client key, both in the trust store.
GUIDE_TLS_FILES = {
    "ca_file": "/usr/local/share/ca-certificates/registry.crt",
    "key_file": "/usr/local/share/ca-certificates/registry.key",
}


def forget_guide(text, hostname):
    """Removes configs.<hostname> when it is the guide's entry (its tls names the guide's files)."""
    document = Document(text)
    entry = _current(document, "configs", hostname)
    tls = entry.get("tls") if isinstance(entry, dict) and set(entry) == {"tls"} else None
    if not isinstance(tls, dict) or tls.get("key_file") != GUIDE_TLS_FILES["key_file"]:
        return text
    if set(tls) - set(GUIDE_TLS_FILES) or tls.get("ca_file", GUIDE_TLS_FILES["ca_file"]) != GUIDE_TLS_FILES["ca_file"]:
        return text
    document.remove_entry("configs", hostname)
    return document.text()


def private_registry(paths):
    """The ``private-registry`` k3s's config files set, or "". k3s reads config.yaml, then
    config.yaml.d/*.yaml in order, a later file's value replacing an earlier one's; a file it
    cannot read is k3s's own error to report, not this program's."""
    found = ""
    for path in paths:
        try:
            settings = yaml.safe_load(_read(path))
        except yaml.YAMLError:
            continue
        if isinstance(settings, dict) and isinstance(settings.get("private-registry"), str):
            found = settings["private-registry"]
    return found


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def main(argv):
    command = argv[1]
    if command == "private-registry":
        sys.stdout.write(private_registry(argv[2:]))
        return
    path, address = argv[2:4]
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
        raise EditError("unknown command " + repr(command))
    sys.stdout.write(result)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except EditError as error:
        sys.stderr.write("k3s-registry: " + str(error) + "\n")
        sys.exit(3)
