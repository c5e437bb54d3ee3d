#!/usr/bin/env python3
"""Import graph of src/: which file names which, and the cycles in it.

    scripts/deps.py            # the cycles (strongly connected groups of files), exit 1 if any
    scripts/deps.py --edges    # every edge, file -> file
    scripts/deps.py --lines    # files over 700 lines

A file depends on another when it names an item of it: `use crate::a::b::C`, `crate::a::b::f()`
in code, or `super::x` (resolved against the file's own module). A path resolves to the longest
prefix that is a file (`src/a/b.rs`, `src/a/b/mod.rs`). `#[cfg(test)]` modules are left out:
tests may reach anywhere. Comments and string literals are stripped first.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
LINE_LIMIT = 700


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def file_of(parts):
    """The longest prefix of `parts` that is a file of src/, as a module path."""
    for n in range(len(parts), 0, -1):
        base = os.path.join(ROOT, *parts[:n])
        if os.path.isfile(base + ".rs") or os.path.isfile(os.path.join(base, "mod.rs")):
            return tuple(parts[:n])
    return None


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"'(?:\\.|[^'\\])'", "''", text)
    return text


def drop_test_modules(text):
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::d}` -> [a::b, a::c::d]."""
    tree = tree.strip()
    m = re.match(r"^(.*?)::\{(.*)\}$", tree, re.S)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    paths = []
    for item in items:
        item = item.strip()
        if item:
            for p in expand_use(item):
                paths.append(prefix if p == "self" else prefix + "::" + p)
    return paths


def edges():
    graph = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            me = tuple(module_of(path))
            text = drop_test_modules(strip(open(path, encoding="utf-8").read()))
            paths = []
            for m in re.finditer(r"\buse\s+([^;]+);", text):
                paths += expand_use(m.group(1))
            paths += re.findall(r"\b(crate(?:::\w+)+)", text)
            paths += re.findall(r"\b(super(?:::\w+)+)", text)
            # Child modules declared here (`mod inbox;`) are named without a prefix.
            children = set(re.findall(r"\bmod\s+(\w+)\s*;", text))
            for child in children:
                paths += ["self::" + child + p for p in re.findall(rf"(?<![:\w]){child}((?:::\w+)+)", text)]
                paths += ["self::" + child for _ in re.findall(rf"(?<![:\w]){child}::\{{", text)]
            targets = set()
            for p in paths:
                parts = [x.strip() for x in re.split(r"::", p.split(" as ")[0]) if x.strip()]
                if not parts:
                    continue
                if parts[0] == "crate":
                    parts = parts[1:]
                elif parts[0] == "super":
                    base = list(me) if f == "mod.rs" else list(me)
                    base = base[:-1]
                    while parts and parts[0] == "super":
                        parts = parts[1:]
                        if parts and parts[0] == "super":
                            base = base[:-1]
                    parts = base + parts
                elif parts[0] == "self":
                    parts = list(me) + [x for x in parts[1:] if x != "self"]
                else:
                    continue
                target = file_of(parts)
                if target is not None and target != me:
                    targets.add(target)
            graph[me] = targets
    return graph


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            # A parent module naming its children (`pub mod x`) is no cycle of substance:
            # a group counts when it is more than one file.
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "/".join(m) if m else "lib"


def main():
    graph = edges()
    if "--edges" in sys.argv:
        for v in sorted(graph):
            for w in sorted(graph[v]):
                print(f"{name(v)} -> {name(w)}")
        return 0
    if "--lines" in sys.argv:
        over = 0
        for dirpath, _, files in os.walk(ROOT):
            for f in sorted(files):
                path = os.path.join(dirpath, f)
                n = sum(1 for _ in open(path, encoding="utf-8", errors="replace"))
                if f.endswith(".rs") and n > LINE_LIMIT:
                    over += 1
                    print(f"{n:5} {os.path.relpath(path, ROOT)}")
        return 1 if over else 0
    found = cycles(graph)
    for group in found:
        print("cycle: " + ", ".join(name(m) for m in group))
    if not found:
        print("no import cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
