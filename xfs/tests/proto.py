#!/usr/bin/env python3
"""Writes a source tree under argv[1] and prints an mkfs.xfs protofile naming it, so v4
filesystems (which this kernel cannot mount) get the same kind of contents as v5 ones."""
import os, sys
src = sys.argv[1]
os.makedirs(src, exist_ok=True)
lines = ['/dev/null', '0 0', 'd--755 0 0']
def f(name, data, mode='644', uid=0, gid=0):
    p = os.path.join(src, name.replace('/', '_'))
    open(p, 'wb').write(data)
    lines.append('%s ---%s %d %d %s' % (name.split('/')[-1], mode, uid, gid, p))
lines.append('etc d--755 0 0')
f('etc/os-release', b'NAME="CentOS Linux"\nID="centos"\nVERSION_ID="7"\n', uid=1000, gid=1001)
f('etc/big', bytes(range(256)) * 4000)
lines.append('short l--777 0 0 os-release')
lines.append('null c--666 0 0 1 3')
lines.append('pipe p--600 0 0')
lines.append('$')
for n, cnt in (('block', 30), ('leaf', 300), ('node', 3000)):
    lines.append('%s d--750 0 0' % n)
    for i in range(cnt):
        lines.append('entry-with-a-long-name-%05d ---600 7 8 %s' % (i, os.path.join(src, 'small')))
    lines.append('$')
open(os.path.join(src, 'small'), 'wb').write(b'small file\n')
lines.append('$')
print('\n'.join(lines))
