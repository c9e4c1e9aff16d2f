// Package kernel tests nvblk against the Linux kernel's own BTT driver
// (drivers/nvdimm/btt.c, nd_btt) running under qemu: images nvblk writes are
// attached and read by the kernel, images the kernel writes are read by
// nvblk, an interrupted write is handed over in both directions, and a real
// media error is raised under a data block. Everything is in the tests; see
// README.md for how the harness works and what it found.
package kernel
