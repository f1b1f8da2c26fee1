#!/usr/bin/env python3
"""Prints the kernel's view of the tree under argv[1], one line per file, in the format the
Rust test prints ours (crc32 of contents and xattr values)."""
import os, stat, sys, zlib
root = sys.argv[1]
def line(rel, p):
    st = os.lstat(p)
    m = st.st_mode
    out = ['/' + rel if rel else '/', 'ino=%d' % st.st_ino, 'mode=%o' % m, 'uid=%d' % st.st_uid,
           'gid=%d' % st.st_gid, 'nlink=%d' % st.st_nlink, 'mtime=%d' % st.st_mtime_ns]
    if stat.S_ISREG(m):
        out.append('size=%d' % st.st_size)
        out.append('crc=%08x' % (zlib.crc32(open(p, 'rb').read()) & 0xffffffff))
    if stat.S_ISLNK(m):
        out.append('target=%s' % os.readlink(p))
    if stat.S_ISCHR(m) or stat.S_ISBLK(m):
        out.append('rdev=%d,%d' % (os.major(st.st_rdev), os.minor(st.st_rdev)))
    if not stat.S_ISLNK(m):
        for n in sorted(os.listxattr(p)):
            out.append('xattr:%s=%08x' % (n, zlib.crc32(os.getxattr(p, n)) & 0xffffffff))
    print(' '.join(out))
line('', root)
for d, dirs, files in os.walk(root):
    dirs.sort()
    for n in sorted(dirs + files):
        p = os.path.join(d, n)
        line(os.path.relpath(p, root), p)
