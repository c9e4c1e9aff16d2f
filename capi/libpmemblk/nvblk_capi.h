/* The interface between abi.c (the C ABI) and main.go (the Go side). */
#ifndef NVBLK_CAPI_H
#define NVBLK_CAPI_H 1

#include <stddef.h>
#include <stdint.h>

/* Size of the per-thread error message buffer, with its NUL. */
#define NVBLK_MSG_MAX 1024

/* What the Go side reports about an opened pool. */
struct nvblk_pool_info {
	uintptr_t handle;
	size_t bsize;
	size_t nblock;
};

#endif
