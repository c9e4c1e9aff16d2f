// Package pmdk tests nvblk's pmemblk package against PMDK itself: Debian's
// libpmemblk 1.12 (through blkhelper.c, a small C program the tests build
// with gcc -lpmemblk) and the pmempool tool (pmdk-tools). Pools libpmemblk
// writes are read by nvblk, pools nvblk writes are read by libpmemblk and
// pass `pmempool check`, an interrupted write left by either is completed
// by the other, and a pool with a damaged primary BTT info block is read
// through its backup and repaired by `nvblk check --repair`.
//
// The capi tests do the same with nvblk's own libpmemblk.so.1
// (capi/libpmemblk, built by scripts/build-capi.sh): blkhelper.c and
// bench/blkbench.c built unchanged against it, capitest.c run against both
// libraries with every call's result and errno compared, Debian's fio
// loading it through LD_LIBRARY_PATH, and what only nvblk's does (calls
// after fork() fail at once, SIGBUS becomes EIO).
//
// In CI (CI=true) a missing gcc, libpmemblk or pmempool fails the tests;
// elsewhere they are skipped. Install them with scripts/install-deps.sh.
package pmdk
