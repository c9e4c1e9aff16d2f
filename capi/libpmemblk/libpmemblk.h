/*
 * libpmemblk.h: the C API of libpmemblk 1.12 (PMDK), as implemented by
 * nvblk's libpmemblk.so.1 (capi/libpmemblk in the nvblk repository).
 *
 * A pool is a file holding an array of fixed-size blocks, each read and
 * written atomically (a BTT). Functions set errno and a message for
 * pmemblk_errormsg() when they fail. See libpmemblk(7) for the API and
 * the nvblk README ("Migrating from libpmemblk") for what differs.
 */
#ifndef LIBPMEMBLK_H
#define LIBPMEMBLK_H 1

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An open pool; opaque. */
typedef struct pmemblk PMEMblkpool;

/* The API version this header describes (libpmemblk 1.1). */
#define PMEMBLK_MAJOR_VERSION 1
#define PMEMBLK_MINOR_VERSION 1

/*
 * NULL when the library provides at least major_required.minor_required
 * of the API (the major version must match exactly), else a message.
 */
const char *pmemblk_check_version(unsigned major_required,
	unsigned minor_required);

/* The smallest pool: 16 MiB for the BTT plus 8 KiB of pool headers. */
#define PMEMBLK_MIN_POOL ((size_t)((1u << 20) * 16 + (1u << 10) * 8))

/* The smallest part of a pool set (pool sets are not supported here). */
#define PMEMBLK_MIN_PART ((size_t)(1024 * 1024 * 2))

/* Blocks smaller than this still take this much room in the pool. */
#define PMEMBLK_MIN_BLK ((size_t)512)

PMEMblkpool *pmemblk_open(const char *path, size_t bsize);
PMEMblkpool *pmemblk_create(const char *path, size_t bsize,
	size_t poolsize, mode_t mode);
int pmemblk_check(const char *path, size_t bsize);
void pmemblk_close(PMEMblkpool *pbp);
size_t pmemblk_bsize(PMEMblkpool *pbp);
size_t pmemblk_nblock(PMEMblkpool *pbp);
int pmemblk_read(PMEMblkpool *pbp, void *buf, long long blockno);
int pmemblk_write(PMEMblkpool *pbp, const void *buf, long long blockno);
int pmemblk_set_zero(PMEMblkpool *pbp, long long blockno);
int pmemblk_set_error(PMEMblkpool *pbp, long long blockno);

/* Allocator hooks; the library uses them for its per-pool handle. */
void pmemblk_set_funcs(
	void *(*malloc_func)(size_t size),
	void (*free_func)(void *ptr),
	void *(*realloc_func)(void *ptr, size_t size),
	char *(*strdup_func)(const char *s));

/* The calling thread's last error message. */
const char *pmemblk_errormsg(void);

int pmemblk_ctl_get(PMEMblkpool *pbp, const char *name, void *arg);
int pmemblk_ctl_set(PMEMblkpool *pbp, const char *name, void *arg);
int pmemblk_ctl_exec(PMEMblkpool *pbp, const char *name, void *arg);

#ifdef __cplusplus
}
#endif
#endif /* LIBPMEMBLK_H */
