#!/usr/bin/env python3
"""Checks the shape of every AG B+tree (bnobt, cntbt, inobt, finobt) of an XFS image, and the
block map B+trees of the inodes named after it, through xfs_db (an independent parser):
CRCs correct, levels, owner, UUID and self-address in each header, left/right sibling chains
on every level, every block but the root at least half full, parent keys equal to their
child's first key, records in order, bnobt and cntbt the same extents, and the AGF/AGI
counters (freeblks, longest, btreeblks, ino_blocks, fino_blocks) agreeing with the trees.
xfs_repair -n checks the records, not the sibling chains or the fill.
Usage: btcheck.py IMAGE [INODE...]; prints a summary line, exits 1 naming the first fault."""
import re, subprocess, sys

img = sys.argv[1]
inodes = [int(a) for a in sys.argv[2:]]


def db(cmds):
    args = ['xfs_db', '-r']
    for c in cmds:
        args += ['-c', c]
    out = subprocess.run(args + [img], capture_output=True, text=True, check=True)
    return out.stdout


def fields(text):
    f = {}
    for l in text.splitlines():
        m = re.match(r'^([\w.]+) = (.*)$', l)
        if m:
            f[m.group(1)] = m.group(2).strip()
    return f


def num(v):
    return None if v == 'null' else int(v, 0)


def fail(msg):
    print('btcheck: ' + msg)
    sys.exit(1)


sb = fields(db(['sb 0', 'p']))
bs = int(sb['blocksize'])
agblocks = int(sb['agblocks'])
agblklog = int(sb['agblklog'])
agcount = int(sb['agcount'])
uuid = sb['uuid']
if sb.get('meta_uuid', '').strip('0-') and int(sb.get('features_incompat', '0'), 0) & 4:
    uuid = sb['meta_uuid']


def parse_block(text):
    """Header fields, and the record, key and pointer lists of one printed block."""
    f = fields(text)
    sec = {'recs': [], 'keys': [], 'ptrs': []}
    cur = None
    for l in text.splitlines():
        m = re.match(r'^(?:[\w.]+\.)?(recs|keys|ptrs)\[', l)
        if m:
            cur = m.group(1)
            l = l.split('=', 1)[1]
            l = re.sub(r'^\s*\[[^\]]*\]', '', l)
        elif re.match(r'^[\w.]+ = ', l):
            cur = None
        if cur in ('recs', 'keys'):
            sec[cur] += [tuple(int(x, 0) for x in m.split(','))
                         for m in re.findall(r'\d+:\[([^\]]*)\]', l)]
        elif cur == 'ptrs':
            if ':' in l:
                sec[cur] += [int(x) for x in re.findall(r'\d+:(\d+)', l)]
            else:
                # One pointer alone is printed without its index.
                sec[cur] += [int(x) for x in l.split()]
    return f, sec


def read_blocks(fsbs, typ):
    cmds = []
    for b in fsbs:
        cmds += ['fsb %d' % b, 'type %s' % typ, 'p']
    out = db(cmds)
    parts = re.split(r'(?m)^(?=magic = )', out)
    parts = [p for p in parts if p.startswith('magic = ')]
    if len(parts) != len(fsbs):
        fail('xfs_db printed %d blocks for %d' % (len(parts), len(fsbs)))
    return [parse_block(p) for p in parts]


def check_tree(name, typ, root_ptrs, top_level, owner, leaf_rs, key_sz, ptr_sz, hdr, to_fsb,
               daddr_of, first_key, order, inode_root, top_keys=None):
    """Walks one tree from the pointers of its top; returns (records, blocks)."""
    leaf_max = (bs - hdr) // leaf_rs
    node_max = (bs - hdr) // (key_sz + ptr_sz)
    level = top_level
    ptrs = root_ptrs
    blocks = 0
    keys_above = top_keys
    while True:
        got = read_blocks([to_fsb(p) for p in ptrs], typ)
        blocks += len(got)
        nxt, nxt_keys, recs = [], [], []
        for i, (f, sec) in enumerate(got):
            p = ptrs[i]
            where = '%s block %d (level %d)' % (name, p, level)
            if '(correct)' not in f.get('crc', ''):
                fail(where + ': CRC ' + f.get('crc', '?'))
            if int(f['level']) != level:
                fail(where + ': says level ' + f['level'])
            if num(f['owner']) != owner:
                fail(where + ': owner %s, not %d' % (f['owner'], owner))
            if f['uuid'] != uuid:
                fail(where + ': uuid ' + f['uuid'])
            if int(f['bno']) != daddr_of(p):
                fail(where + ': self address %s, not %d' % (f['bno'], daddr_of(p)))
            left = num(f['leftsib'])
            right = num(f['rightsib'])
            want_l = ptrs[i - 1] if i > 0 else None
            want_r = ptrs[i + 1] if i + 1 < len(ptrs) else None
            if left != want_l or right != want_r:
                fail(where + ': siblings %s/%s, not %s/%s' % (left, right, want_l, want_r))
            n = int(f['numrecs'])
            mx = leaf_max if level == 0 else node_max
            is_root = not inode_root and level == top_level
            alone = len(ptrs) == 1
            if n > mx or (not is_root and not (inode_root and alone) and n < mx // 2):
                fail(where + ': %d records (max %d)' % (n, mx))
            if level == 0:
                if len(sec['recs']) != n:
                    fail(where + ': %d records printed of %d' % (len(sec['recs']), n))
                first = first_key(sec['recs'][0]) if n else None
                recs += sec['recs']
            else:
                if len(sec['keys']) != n or len(sec['ptrs']) != n:
                    fail(where + ': keys/pointers do not match numrecs')
                first = sec['keys'][0] if n else None
                nxt += sec['ptrs']
                nxt_keys += sec['keys']
            if keys_above is not None and n and tuple(keys_above[i]) != tuple(first):
                fail(where + ': parent key %s, first key %s' % (keys_above[i], first))
        if level == 0:
            for a, b in zip(recs, recs[1:]):
                if not order(a, b):
                    fail('%s: records out of order: %s then %s' % (name, a, b))
            return recs, blocks
        ptrs, keys_above, level = nxt, nxt_keys, level - 1


summary = []
for ag in range(agcount):
    agf = fields(db(['agf %d' % ag, 'p']))
    agi = fields(db(['agi %d' % ag, 'p']))
    base = ag << agblklog
    daddr = lambda p, ag=ag: (ag * agblocks + p) * (bs // 512)
    to_fsb = lambda p, base=base: base + p
    bno, nb = check_tree('AG %d bnobt' % ag, 'bnobt', [int(agf['bnoroot'])],
                         int(agf['bnolevel']) - 1, ag, 8, 8, 4, 56, to_fsb, daddr,
                         lambda r: r, lambda a, b: a[0] + a[1] < b[0], False)
    cnt, nc = check_tree('AG %d cntbt' % ag, 'cntbt', [int(agf['cntroot'])],
                         int(agf['cntlevel']) - 1, ag, 8, 8, 4, 56, to_fsb, daddr,
                         lambda r: (r[1], r[0]), lambda a, b: (a[1], a[0]) < (b[1], b[0]),
                         False)
    if sorted(bno) != sorted(cnt):
        fail('AG %d: bnobt and cntbt hold different extents' % ag)
    free = sum(c for _, c in bno)
    if int(agf['freeblks']) != free:
        fail('AG %d: agf freeblks %s, trees %d' % (ag, agf['freeblks'], free))
    if int(agf['longest']) != max([c for _, c in bno] + [0]):
        fail('AG %d: agf longest %s' % (ag, agf['longest']))
    if int(agf['btreeblks']) != nb - 1 + nc - 1:
        fail('AG %d: agf btreeblks %s, trees %d' % (ag, agf['btreeblks'], nb + nc - 2))
    line = 'AG %d: bno %s/%d cnt %s/%d' % (ag, agf['bnolevel'], nb, agf['cntlevel'], nc)
    for t, root, lev, cntf in (('inobt', 'root', 'level', 'ino_blocks'),
                               ('finobt', 'free_root', 'free_level', 'fino_blocks')):
        if root not in agi or agi[root] in ('', 'null') or int(agi.get(lev, '0') or 0) == 0:
            continue
        recs, n = check_tree('AG %d %s' % (ag, t), t, [int(agi[root])], int(agi[lev]) - 1, ag,
                             16, 4, 4, 56, to_fsb, daddr, lambda r: (r[0],),
                             lambda a, b: a[0] < b[0], False)
        inobtcnt = int(sb.get('features_ro_compat', '0'), 0) & 8
        if inobtcnt and int(agi[cntf]) != n:
            fail('AG %d: agi %s %s, tree %d' % (ag, cntf, agi[cntf], n))
        line += ' %s %s/%d' % (t, agi[lev], n)
    summary.append(line)

for ino in inodes:
    f, sec = parse_block(db(['inode %d' % ino, 'p']))
    if not f.get('core.format', '').startswith('3'):
        summary.append('inode %d: %s' % (ino, f.get('core.format')))
        continue
    level = int(f['u3.bmbt.level'])
    fsb_daddr = lambda p: ((p >> agblklog) * agblocks + (p & ((1 << agblklog) - 1))) * (bs // 512)
    # Keys of the root in the inode against its children's first keys.
    recs, n = check_tree('inode %d bmbt' % ino, 'bmapbtd', sec['ptrs'], level - 1, ino, 16, 8, 8,
                         72, lambda p: p, fsb_daddr, lambda r: (r[0],),
                         lambda a, b: a[0] + a[2] <= b[0], True, sec['keys'])
    if len(recs) != int(f['core.nextents']):
        fail('inode %d: nextents %s, tree %d' % (ino, f['core.nextents'], len(recs)))
    summary.append('inode %d: bmbt root level %d, %d blocks, %d extents' % (ino, level, n, len(recs)))

print('; '.join(summary))
