#!/usr/bin/env python3
"""Changes the tree populate.py made under argv[1] in every way the log must carry: creates,
writes, appends, truncates, renames (within and across directories, over a file), unlinks,
mkdir/rmdir, symlinks, hard links, chmod/chown, xattrs set and removed, entries added to and
removed from the block, leaf and node directories, and a change to the B+tree-fork file.
argv[2] is 'data' (the first round, file data synced after) or 'meta' (a second round of
metadata-only changes left in the log)."""
import os, sys
r = sys.argv[1]
round_ = sys.argv[2]
os.chdir(r)
if round_ == 'data':
    os.makedirs('new/a/b', exist_ok=True)
    for i in range(60):
        with open('new/a/f%03d' % i, 'wb') as f:
            f.write(b'%d\n' % i * (i * 37 % 5000 + 1))
    with open('etc/sysconfig/network-scripts/ifcfg-eth0', 'a') as f:
        f.write('GATEWAY=10.0.0.1\n')
    os.setxattr('etc/sysconfig/network-scripts/ifcfg-eth0', 'security.selinux',
                b'system_u:object_r:net_conf_t:s0\0')
    with open('etc/os-release', 'r+b') as f:
        f.truncate(10)
    with open('frag', 'r+b') as f:
        for i in range(1, 4000, 400):
            f.seek(i * 8192 + 4096)
            f.write(b'hole filled %d' % i)
    with open('sparse', 'r+b') as f:
        f.seek(5 << 20)
        f.write(b'middle of the hole')
    with open('big', 'wb') as f:
        f.write(os.urandom(3 << 20))
    for i in range(0, 5000, 7):
        os.unlink('dirs/node/file-with-a-longish-name-%05d' % i)
    for i in range(300):
        open('dirs/node/added-%04d' % i, 'w').write('n%d' % i)
    for i in range(0, 400, 3):
        os.rename('dirs/leaf/file-with-a-longish-name-%05d' % i, 'dirs/leaf/renamed-%05d' % i)
    for i in range(40):
        os.rename('dirs/block/file-with-a-longish-name-%05d' % i, 'dirs/sf/moved-%02d' % i)
    for i in range(0, 300, 2):
        os.removexattr('attrs', 'user.key%04d' % i)
    os.setxattr('attrs', 'user.added', b'A' * 3000)
    os.setxattr('remote1', 'user.big', b'C' * 50000)
    os.symlink('/' + 'y' * 900, 'new/long-link')
    os.symlink('short', 'new/short-link')
    os.link('new/a/f001', 'new/a/b/hard')
    # A new file whose data fork turns into a B+tree (its root logged in the inode).
    with open('frag2', 'wb') as f:
        for i in range(400, -1, -2):
            f.seek(i * 4096)
            f.write(b'%05d' % i * 800)
else:
    os.rename('new/a/f002', 'new/a/f003')  # over an existing file
    os.rename('new/a/b', 'dirs/moved-dir')
    for i in range(10, 20):
        os.unlink('new/a/f%03d' % i)
    os.mkdir('new/empty')
    os.mkdir('new/gone')
    os.rmdir('new/gone')
    os.chmod('etc/redhat-release', 0o600)
    os.chown('new/a/f004', 123, 456)
    os.setxattr('new/a/f005', 'user.meta', b'round two')
    os.setxattr('new/a/f005', 'trusted.meta', b'x' * 200)
    for i in range(40):
        open('dirs/block/late-%02d' % i, 'w').close()
    for i in range(100):
        open('new/empty-%03d' % i, 'w').close()
    os.utime('dirs/sf', ns=(1, 2))
    # Freeing extents: truncates (EFI/EFD pairs when a checkpoint falls between them).
    os.truncate('big', 1 << 20)
    os.truncate('frag2', 100 * 4096 + 7)
