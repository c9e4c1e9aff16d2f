// Package xfs is an end-to-end test of partitions: a GPT written by nvblk
// with XFS data on raw partition 1 and XFS's external log on the BTT of
// partition 2, both served by `nvblk serve` as NBD exports "p1" and "p2",
// attached with nbdfuse and loop devices, then mkfs.xfs -l logdev=,
// mount, write files, umount, xfs_repair -n, remount and compare. It needs
// root, FUSE, loop devices, XFS in the kernel, and xfsprogs, fuse3 and
// libnbd-bin (scripts/install-deps.sh); everything it sets up is torn
// down in t.Cleanup, also on failure.
package xfs
