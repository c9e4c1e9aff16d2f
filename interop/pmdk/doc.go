// Package pmdk tests nvblk's pmemblk package against PMDK itself: Debian's
// libpmemblk 1.12 (through blkhelper.c, a small C program the tests build
// with gcc -lpmemblk) and the pmempool tool (pmdk-tools). Pools libpmemblk
// writes are read by nvblk, pools nvblk writes are read by libpmemblk and
// pass `pmempool check`, an interrupted write left by either is completed
// by the other, and a pool with a damaged primary BTT info block is read
// through its backup and repaired by `nvblk check --repair`.
//
// In CI (CI=true) a missing gcc, libpmemblk or pmempool fails the tests;
// elsewhere they are skipped. Install them with scripts/install-deps.sh.
package pmdk
