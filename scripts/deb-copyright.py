#!/usr/bin/python3
"""Write debian/copyright (DEP-5) from `cargo metadata`.

The package's module links statically every crate of the normal (not build,
not dev) dependency closure for the build target, proc-macro crates apart
(they run inside rustc and are not linked). Each gets a Files paragraph with
its licence (Cargo.toml's SPDX expression in DEP-5 words) and the copyright
lines of its own licence files (its `authors` when there are none).

    scripts/deb-copyright.py            print the file
    scripts/deb-copyright.py --write    write debian/copyright
    scripts/deb-copyright.py --check    exit 1 when debian/copyright differs

Needs the crates' sources in cargo's registry (`cargo fetch --locked`).
"""

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPYRIGHT = os.path.join(REPO, "debian", "copyright")

# SPDX identifiers as DEP-5 short names (MIT is "Expat" in Debian).
SHORT_NAMES = {"MIT": "Expat"}

# Debian ships these in /usr/share/common-licenses: refer, do not copy.
COMMON = {"Apache-2.0": "Apache-2.0"}

# The BSD licences share all but the third clause.
BSD_CLAUSES_1_2 = """\
Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are
met:
.
1. Redistributions of source code must retain the above copyright notice,
   this list of conditions and the following disclaimer.
.
2. Redistributions in binary form must reproduce the above copyright
   notice, this list of conditions and the following disclaimer in the
   documentation and/or other materials provided with the distribution."""

BSD_CLAUSE_3 = """\
3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission."""

BSD_DISCLAIMER = """\
THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS
IS" AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO,
THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR
PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL,
EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO,
PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR
PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF
LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING
NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS
SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE."""

TEXTS = {
    "Expat": """\
Permission is hereby granted, free of charge, to any person obtaining a
copy of this software and associated documentation files (the "Software"),
to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense,
and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:
.
The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.
.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
DEALINGS IN THE SOFTWARE.""",
    "ISC": """\
Permission to use, copy, modify, and/or distribute this software for any
purpose with or without fee is hereby granted, provided that the above
copyright notice and this permission notice appear in all copies.
.
THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF
MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR
ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN
ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF
OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.""",
    "BSD-2-Clause": BSD_CLAUSES_1_2 + "\n.\n" + BSD_DISCLAIMER,
    "BSD-3-Clause": BSD_CLAUSES_1_2 + "\n.\n" + BSD_CLAUSE_3 + "\n.\n" + BSD_DISCLAIMER,
    "Unicode-3.0": """\
UNICODE LICENSE V3
.
Permission is hereby granted, free of charge, to any person obtaining a
copy of data files and any associated documentation (the "Data Files") or
software and any associated documentation (the "Software") to deal in the
Data Files or Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, and/or sell
copies of the Data Files or Software, and to permit persons to whom the
Data Files or Software are furnished to do so, provided that either (a)
this copyright and permission notice appear with all copies of the Data
Files or Software, or (b) this copyright and permission notice appear in
associated Documentation.
.
THE DATA FILES AND SOFTWARE ARE PROVIDED "AS IS", WITHOUT WARRANTY OF ANY
KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT OF
THIRD PARTY RIGHTS.
.
IN NO EVENT SHALL THE COPYRIGHT HOLDER OR HOLDERS INCLUDED IN THIS NOTICE
BE LIABLE FOR ANY CLAIM, OR ANY SPECIAL INDIRECT OR CONSEQUENTIAL DAMAGES,
OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS,
WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION,
ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THE DATA
FILES OR SOFTWARE.
.
Except as contained in this notice, the name of a copyright holder shall
not be used in advertising or otherwise to promote the sale, use or other
dealings in these Data Files or Software without prior written
authorization of the copyright holder.""",
    "Unlicense": """\
This is free and unencumbered software released into the public domain.
.
Anyone is free to copy, modify, publish, use, compile, sell, or
distribute this software, either in source code form or as a compiled
binary, for any purpose, commercial or non-commercial, and by any
means.
.
In jurisdictions that recognize copyright laws, the author or authors
of this software dedicate any and all copyright interest in the
software to the public domain. We make this dedication for the benefit
of the public at large and to the detriment of our heirs and
successors. We intend this dedication to be an overt act of
relinquishment in perpetuity of all present and future rights to this
software under copyright law.
.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
IN NO EVENT SHALL THE AUTHORS BE LIABLE FOR ANY CLAIM, DAMAGES OR
OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE,
ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR
OTHER DEALINGS IN THE SOFTWARE.""",
}

# A copyright statement in a licence file, not the licence's own wording
# ("Copyright License", "copyright notice", "Copyright [yyyy] [name]").
STATEMENT = re.compile(r"^\W*(Copyright\s+(\(c\)\s*|©\s*)?\d.*|Copyright\s+(\(c\)|©)\s+\S.*)$", re.I)
LICENCE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|UNLICENSE)", re.I)


class Error(Exception):
    pass


def run(*cmd):
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise Error("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
    return r.stdout


def host_target():
    for line in run("rustc", "-vV").splitlines():
        if line.startswith("host: "):
            return line[len("host: "):]
    raise Error("rustc -vV names no host")


def linked_crates(meta):
    """Packages of the normal-dependency closure of the root, proc-macros
    and the root itself excluded, sorted by name and version."""
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            dep_pkg = packages[dep["pkg"]]
            proc_macro = any("proc-macro" in t["kind"] for t in dep_pkg["targets"])
            if not proc_macro and any(k["kind"] is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    seen.discard(root)
    return packages[root], sorted((packages[p] for p in seen), key=lambda p: (p["name"], p["version"]))


def dep5_licence(spdx):
    """Cargo.toml's SPDX expression in DEP-5 words; the short names used."""
    if not spdx:
        raise Error("a crate without a `license` field")
    words = re.findall(r"\(|\)|[^\s()]+", spdx.replace("/", " OR "))
    out, names = [], []
    for w in words:
        if w in ("OR", "AND"):
            out.append(w.lower())
        elif w in "()":
            out.append(w)
        else:
            name = SHORT_NAMES.get(w, w)
            if name not in TEXTS and name not in COMMON:
                raise Error("licence %r has no text in %s: add it" % (w, __file__))
            names.append(name)
            out.append(name)
    return " ".join(out).replace("( ", "(").replace(" )", ")"), names


def copyright_lines(pkg):
    crate_dir = os.path.dirname(pkg["manifest_path"])
    lines = []
    for name in sorted(os.listdir(crate_dir)):
        path = os.path.join(crate_dir, name)
        if not (LICENCE_FILE.match(name) and os.path.isfile(path)):
            continue
        with open(path, errors="replace") as f:
            for line in f:
                m = STATEMENT.match(line.strip())
                if m and m.group(1) not in lines:
                    lines.append(m.group(1).rstrip("."))
    if not lines:
        lines = [a for a in pkg["authors"]] or ["the %s developers" % pkg["name"]]
    return lines


def field(name, values):
    """A DEP-5 field with one value per line (continuation lines indented)."""
    return "%s: %s" % (name, "\n ".join(values))


def generate():
    meta = json.loads(run("cargo", "metadata", "--locked", "--offline", "--format-version", "1",
                          "--filter-platform", host_target()))
    root, crates = linked_crates(meta)
    project_licence, used = dep5_licence(root["license"])
    with open(os.path.join(REPO, "debian", "control")) as f:
        maintainer = re.search(r"^Maintainer: (.*)$", f.read(), re.M).group(1)
    paras = ["""\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mod_amqp_heartbeat
Upstream-Contact: %s
Comment: The module links statically the Rust crates of the paragraphs
 named crates.io/NAME-VERSION/ below. They are not in this source package:
 cargo downloads them from crates.io at build time, at the versions pinned
 by Cargo.lock. This file is generated by scripts/deb-copyright.py from
 `cargo metadata`; `make deb` fails when it is out of date.""" % maintainer,
             "Files: *\n%s\nLicense: %s" % (field("Copyright", ["the mod_amqp_heartbeat authors"]),
                                           project_licence)]
    for pkg in crates:
        licence, names = dep5_licence(pkg["license"])
        used += names
        paras.append("Files: crates.io/%s-%s/*\n%s\nLicense: %s"
                     % (pkg["name"], pkg["version"], field("Copyright", copyright_lines(pkg)), licence))
    for name in sorted(set(used)):
        if name in COMMON:
            paras.append("License: %s\n On Debian systems, the complete text of the licence is in\n"
                         " /usr/share/common-licenses/%s." % (name, COMMON[name]))
        else:
            paras.append("License: %s\n%s" % (name, "\n".join(" " + ln for ln in TEXTS[name].splitlines())))
    return "\n\n".join(paras) + "\n"


def main(argv):
    try:
        text = generate()
    except Error as e:
        print("deb-copyright: %s" % e, file=sys.stderr)
        return 2
    if argv[1:] == ["--write"]:
        with open(COPYRIGHT, "w") as f:
            f.write(text)
    elif argv[1:] == ["--check"]:
        try:
            with open(COPYRIGHT) as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print("deb-copyright: debian/copyright is out of date (the crates or their licences changed);"
                  " run scripts/deb-copyright.py --write and commit it", file=sys.stderr)
            return 1
    elif argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
