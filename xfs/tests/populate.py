#!/usr/bin/env python3
"""Fills directory argv[1] with what the XFS reader must handle: directories in every form,
fragmented and sparse files, symlinks short and long, xattrs small and remote, hard links."""
import os, sys
r = sys.argv[1]
os.chdir(r)
os.makedirs('etc/sysconfig/network-scripts', exist_ok=True)
open('etc/os-release', 'w').write('NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nVERSION_ID="7"\n')
open('etc/redhat-release', 'w').write('CentOS Linux release 7.9.2009 (Core)\n')
open('etc/sysconfig/network-scripts/ifcfg-eth0', 'w').write('DEVICE=eth0\nIPADDR=10.0.0.5\n')
os.setxattr('etc/os-release', 'security.selinux', b'system_u:object_r:etc_t:s0\0')
os.setxattr('etc/os-release', 'user.small', b'small')
os.setxattr('etc/os-release', 'trusted.t', b'root only')
os.link('etc/os-release', 'etc/hard')
os.symlink('os-release', 'etc/short-link')
os.symlink('/' + 'x' * 700, 'etc/long-link')
# Directories: short form, block, leaf, node.
for n, cnt in (('sf', 5), ('block', 40), ('leaf', 400), ('node', 5000)):
    os.makedirs('dirs/' + n)
    for i in range(cnt):
        open('dirs/%s/file-with-a-longish-name-%05d' % (n, i), 'w').write(str(i))
os.mkdir('dirs/node/sub')
# A fragmented file (B+tree fork): write every other block, backwards.
with open('frag', 'wb') as f:
    for i in range(4000, -1, -1):
        f.seek(i * 8192)
        f.write(b'%07d' % i * 500)
# Sparse, and an unwritten (preallocated) region.
with open('sparse', 'wb') as f:
    f.seek(10 << 20)
    f.write(b'end')
fd = os.open('prealloc', os.O_CREAT | os.O_WRONLY)
os.posix_fallocate(fd, 0, 1 << 20)
os.pwrite(fd, b'middle', 300000)
os.close(fd)
# Attributes: many (leaf/node form) and large remote values.
open('attrs', 'w').write('x')
for i in range(300):
    os.setxattr('attrs', 'user.key%04d' % i, b'value-%d' % i * 8)
os.setxattr('attrs', 'user.remote', bytes(range(256)) * 200)
open('remote1', 'w').write('y')
os.setxattr('remote1', 'user.big', b'B' * 60000)
os.mkfifo('fifo')
os.mknod('chardev', 0o20644, os.makedev(1, 3))
os.chown('etc/os-release', 1000, 1001)
os.utime('etc/redhat-release', ns=(1234567890123456789, 987654321012345678))
