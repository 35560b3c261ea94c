#!/usr/bin/env python3
"""Fails on a module dependency cycle inside any workspace crate (file
granularity): a file's imports must point down only.

Edges come from `crate::a::b`, `super::x` and `self::x` paths in code (doc
comments and line comments are ignored; `mod tests` blocks are ignored, since a
test module may look anywhere). With no arguments it checks the src folder
of every library and binary in the workspace."""
import os, re, sys

def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            p = os.path.join(root, f)
            parts = os.path.relpath(p, src)[:-3].split(os.sep)
            if parts[-1] == 'mod':
                parts = parts[:-1]
            if parts in (['lib'], ['main']):
                parts = []
            mods[tuple(parts)] = p
    return mods

def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    # drop #[cfg(test)] mod tests { ... } blocks (brace matched)
    out, i = [], 0
    for m in re.finditer(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        j, depth = m.end(), 1
        while j < len(text) and depth:
            depth += {'{': 1, '}': -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return ''.join(out)

def paths(text):
    """Every path expression, with `use a::{b, c::d}` groups expanded."""
    res = []
    def expand(prefix, body):
        depth, cur, items = 0, '', []
        for c in body:
            if c == '{': depth += 1
            if c == '}': depth -= 1
            if c == ',' and depth == 0:
                items.append(cur); cur = ''
            else:
                cur += c
        items.append(cur)
        for it in items:
            it = it.strip()
            if not it:
                continue
            m = re.match(r'^([\w:]*?)::\{(.*)\}$', it, re.S)
            if m:
                expand(prefix + [m.group(1)], m.group(2))
            else:
                res.append('::'.join(prefix + [it]))
    for m in re.finditer(r'\b((?:crate|super|self)(?:::\w+)*)::\{', text):
        j, depth = m.end(), 1
        while j < len(text) and depth:
            depth += {'{': 1, '}': -1}.get(text[j], 0)
            j += 1
        expand([m.group(1)], text[m.end():j - 1])
    for m in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)', text):
        res.append(m.group(1))
    return res

def resolve(path, here, mods, is_dir_mod):
    segs = path.split('::')
    if segs[0] == 'crate':
        base = []
    else:
        base = list(here) if is_dir_mod else list(here[:-1])
        if segs[0] == 'self':
            base = list(here)
        while segs and segs[0] in ('super', 'self'):
            if segs[0] == 'super':
                base = base[:-1] if not is_dir_mod or base != list(here) else list(here[:-1])
            segs = segs[1:]
            if segs and segs[0] == 'super':
                base = base[:-1]
                segs = segs[1:]
        segs = ['x'] + segs
    segs = segs[1:]
    best = None
    for k in range(len(segs), 0, -1):
        cand = tuple(base + segs[:k])
        if cand in mods:
            best = cand
            break
    return best

def sccs(g):
    idx, low, st, on, res, c = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(100000)
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in g.get(v, ()):
            if w not in idx:
                sc(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                res.append(comp)
    for v in g:
        if v not in idx:
            sc(v)
    return res

def workspace_src_dirs():
    import json, subprocess
    meta = json.loads(subprocess.run(
        ['cargo', 'metadata', '--no-deps', '--format-version', '1'],
        check=True, capture_output=True, text=True).stdout)
    dirs = set()
    for p in meta['packages']:
        for t in p['targets']:
            if set(t['kind']) & {'lib', 'bin', 'cdylib', 'rlib', 'staticlib'}:
                dirs.add(os.path.relpath(os.path.dirname(t['src_path'])))
    return sorted(dirs)

bad = 0
for src in sys.argv[1:] or workspace_src_dirs():
    mods = modules(src)
    g = {}
    for m, p in mods.items():
        is_dir = p.endswith('mod.rs') or m == ()
        deps = set()
        for path in paths(strip(open(p).read())):
            t = resolve(path, m, mods, is_dir)
            # a module may name its own children or ancestors (re-exports)
            if t is None or t == m or t[:len(m)] == m or m[:len(t)] == t:
                continue
            deps.add(t)
        g[m] = deps
    name = lambda t: '::'.join(t) or 'crate'
    cyc = sccs(g)
    for comp in cyc:
        bad += 1
        print(f"{src}: cycle: {' '.join(sorted(map(name, comp)))}")
        for a in sorted(comp):
            print(f"   {name(a)} -> {', '.join(sorted(name(x) for x in g[a] if x in comp))}")
    if not cyc:
        print(f"{src}: no module cycles ({len(mods)} modules)")
sys.exit(1 if bad else 0)
