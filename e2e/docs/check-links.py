#!/usr/bin/env python3
"""Checks the relative links of every Markdown file in the repository.

    python3 e2e/docs/check-links.py [ROOT]

The files are the tracked *.md files and the untracked ones git does not ignore (`git ls-files
'*.md'` and `git ls-files -co --exclude-standard '*.md'`, run in ROOT; ROOT defaults to the
repository holding this script; outside a git work tree every *.md under ROOT is read).

Every inline link and image (`[text](target)`, `![alt](target)`) and every reference definition
(`[label]: target`) whose target is relative (no scheme such as http:, https: or mailto:) must name
a file or directory that exists, relative to the linking file (a target starting with `/` is
relative to ROOT). A `#anchor`, alone or after a .md file, must be the GitHub slug of one of that
file's headings (lowercased, punctuation other than '-' and '_' dropped, spaces turned to '-', a
repeated heading's slug suffixed -1, -2, ...) or an HTML `id`/`name` in it. Links inside fenced
code blocks and inline code are not links and are skipped.

Each broken link is printed as `FILE:LINE: target — reason`, then `links: N checked, N broken`.
Exit status 1 when any link is broken, else 0. Python 3 standard library only.
"""

import html
import os
import re
import subprocess
import sys
import unicodedata
from urllib.parse import unquote

SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
REF_DEF = re.compile(r"^ {0,3}\[((?:[^\]\\]|\\.)+)\]:[ \t]*(<[^>\n]*>|\S+)")
HTML_ID = re.compile(r"""<[A-Za-z][^>]*?\s(?:id|name)\s*=\s*["']([^"']+)["']""")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)


def repo_root():
    if len(sys.argv) > 1:
        return os.path.abspath(sys.argv[1])
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, check=True,
                             capture_output=True, text=True).stdout.strip()
        return out or os.path.abspath(os.path.join(here, "..", ".."))
    except (OSError, subprocess.CalledProcessError):
        return os.path.abspath(os.path.join(here, "..", ".."))


def markdown_files(root):
    """Tracked *.md files plus untracked ones that are not ignored; every *.md outside git."""
    names = set()
    try:
        for args in (["ls-files", "-z", "*.md"], ["ls-files", "-z", "-co", "--exclude-standard", "*.md"]):
            out = subprocess.run(["git", *args], cwd=root, check=True, capture_output=True).stdout
            names.update(n for n in out.decode("utf-8", "surrogateescape").split("\0") if n)
    except (OSError, subprocess.CalledProcessError):
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x != ".git"]
            for f in files:
                if f.endswith(".md"):
                    names.add(os.path.relpath(os.path.join(d, f), root))
    # A tracked file deleted in the work tree has nothing to check.
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n)))


def split_fences(lines):
    """Yields (line number, text, in_fence) for every line; fence lines count as in the fence."""
    fence = None
    for no, line in enumerate(lines, 1):
        m = FENCE.match(line)
        if fence is None:
            if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
                fence = m.group(1)
                yield no, line, True
                continue
            yield no, line, False
        else:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2).strip():
                fence = None
            yield no, line, True


def blank_code_spans(text):
    """Replaces inline code spans (and their backticks) by spaces, keeping newlines and offsets."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        if text[i] == "\\" and i + 1 < n:
            i += 2
            continue
        if text[i] != "`":
            i += 1
            continue
        j = i
        while j < n and text[j] == "`":
            j += 1
        run = j - i
        k = j
        close = -1
        while k < n:
            if text[k] == "`":
                m = k
                while m < n and text[m] == "`":
                    m += 1
                if m - k == run:
                    close = m
                    break
                k = m
            else:
                k += 1
        if close < 0:
            i = j  # an unmatched backtick run is literal text
            continue
        for p in range(i, close):
            if out[p] != "\n":
                out[p] = " "
        i = close
    return "".join(out)


def heading_text(raw):
    """The text GitHub renders for a heading's Markdown (near enough for its slug)."""
    t = raw.strip()
    t = re.sub(r"`+([^`]*?)`+", r"\1", t)
    t = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", t)
    t = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", t)
    t = re.sub(r"\[([^\]]*)\]\[[^\]]*\]", r"\1", t)
    t = re.sub(r"<[^>]+>", "", t)
    t = re.sub(r"(?<![A-Za-z0-9])(_{1,3})(?=\S)(.+?)(?<=\S)\1(?![A-Za-z0-9])", r"\2", t)
    t = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", t)
    return html.unescape(t)


def slugify(text):
    """github-slugger: lowercase, drop punctuation but '-' and '_', each space becomes '-'."""
    kept = []
    for c in text.lower():
        if c in " -_" or unicodedata.category(c)[0] in "LNM":
            kept.append(c)
    return "".join(kept).replace(" ", "-")


def anchors_of(path, cache={}):
    """The anchors a Markdown file offers: heading slugs (with -1, -2 for repeats) and HTML ids."""
    if path in cache:
        return cache[path]
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    found, seen = set(), {}

    def add(text):
        base = slugify(heading_text(text))
        slug = base
        while slug in seen:
            seen[base] += 1
            slug = f"{base}-{seen[base]}"
        seen[slug] = 0
        found.add(slug)

    prev = None  # the previous line, when it could be a setext heading's text
    for _, line, fenced in split_fences(lines):
        if fenced:
            prev = None
            continue
        for m in HTML_ID.finditer(line):
            found.add(m.group(1))
        m = ATX.match(line)
        if m:
            add(m.group(2) or "")
            prev = None
            continue
        if prev is not None and SETEXT.match(line):
            add(prev)
            prev = None
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith(("|", ">", "- ", "* ", "+ ", "<")) or re.match(r"\d+[.)] ", stripped) \
                or line.startswith("    "):
            prev = None
        else:
            prev = line
    cache[path] = found
    return found


def parse_destination(text, i):
    """Parses `(dest "title")` starting at text[i] == '('; returns (dest, dest offset, end) or None."""
    n = len(text)
    j = i + 1
    while j < n and text[j] in " \t\n":
        j += 1
    start = j
    if j < n and text[j] == "<":
        k = text.find(">", j + 1)
        if k < 0 or "\n" in text[j:k]:
            return None
        dest, j = text[j + 1:k], k + 1
    else:
        depth = 0
        while j < n:
            c = text[j]
            if c == "\\" and j + 1 < n:
                j += 2
                continue
            if c in " \t\n":
                break
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            j += 1
        dest = text[start:j]
    while j < n and text[j] in " \t\n":
        j += 1
    if j < n and text[j] in "\"'(":
        close = {"\"": "\"", "'": "'", "(": ")"}[text[j]]
        k = j + 1
        while k < n and text[k] != close:
            k += 2 if text[k] == "\\" else 1
        if k >= n:
            return None
        j = k + 1
        while j < n and text[j] in " \t\n":
            j += 1
    if j >= n or text[j] != ")":
        return None
    return dest, start, j + 1


def inline_links(text):
    """Yields (target, offset of the target) for every inline link and image in a block."""
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c != "[":
            i += 1
            continue
        depth, j = 1, i + 1
        while j < n and depth:
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == "[":
                depth += 1
            elif text[j] == "]":
                depth -= 1
            j += 1
        if depth:
            i += 1
            continue
        if j < n and text[j] == "(":
            parsed = parse_destination(text, j)
            if parsed:
                dest, at, end = parsed
                yield dest, at
                # The link text may hold an image: look inside it too.
                yield from ((d, i + 1 + a) for d, a in inline_links(text[i + 1:j - 1]))
                i = end
                continue
        i += 1


def blocks(lines):
    """Paragraph-like runs of lines outside fenced code: (first line number, joined text)."""
    run, first = [], None
    for no, line, fenced in split_fences(lines):
        if fenced or not line.strip():
            if run:
                yield first, "\n".join(run)
            run, first = [], None
            continue
        if not run:
            first = no
        run.append(line)
    if run:
        yield first, "\n".join(run)


def check_target(root, source, target):
    """Returns None when the relative target resolves, else the reason it does not."""
    path_part, _, fragment = target.partition("#")
    path_part = unquote(path_part.split("?", 1)[0])
    here = os.path.dirname(os.path.join(root, source))
    if not path_part:
        resolved = os.path.join(root, source)
    elif path_part.startswith("/"):
        resolved = os.path.join(root, path_part.lstrip("/"))
    else:
        resolved = os.path.join(here, path_part)
    resolved = os.path.normpath(resolved)
    if not os.path.exists(resolved):
        return f"no such file or directory: {os.path.relpath(resolved, root)}"
    if not fragment or not resolved.endswith(".md") or not os.path.isfile(resolved):
        return None  # line anchors (#L10) of other files are GitHub's business
    anchor = unquote(fragment)
    if anchor not in anchors_of(resolved):
        where = "this file" if resolved == os.path.normpath(os.path.join(root, source)) \
            else os.path.relpath(resolved, root)
        return f"no heading with the anchor #{anchor} in {where}"
    return None


def main():
    root = repo_root()
    checked = broken = 0
    for name in markdown_files(root):
        with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        for first, text in blocks(lines):
            text = HTML_COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
            plain = blank_code_spans(text)
            found = list(inline_links(plain))
            for k, line in enumerate(plain.split("\n")):
                m = REF_DEF.match(line)
                if m:
                    found.append((m.group(2), sum(len(x) + 1 for x in plain.split("\n")[:k]) + m.start(2)))
            for dest, at in found:
                dest = dest.strip()
                if dest.startswith("<") and dest.endswith(">"):
                    dest = dest[1:-1]
                if not dest or SCHEME.match(dest) or dest.startswith("//"):
                    continue
                checked += 1
                reason = check_target(root, name, dest)
                if reason:
                    broken += 1
                    print(f"{name}:{first + plain.count(chr(10), 0, at)}: {dest} — {reason}")
    print(f"links: {checked} checked, {broken} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
