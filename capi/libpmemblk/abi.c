/*
 * abi.c: the exported C functions of nvblk's libpmemblk.so.1 (the API of
 * libpmemblk.h). They set errno and the per-thread message, guard against
 * use after fork(), and call the Go side (main.go, nvblk_go_*) for pool
 * work. Exported with the symbol version LIBPMEMBLK_1.0 (libpmemblk.map).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "libpmemblk.h"
#include "nvblk_capi.h"
#include "_cgo_export.h"

/* An open pool: a handle into the Go side's table, and the geometry. */
struct pmemblk {
	uintptr_t handle;
	size_t bsize;
	size_t nblock;
};

/* The calling thread's last error message (pmemblk_errormsg). */
static __thread char nvblk_msg[NVBLK_MSG_MAX];

static void
set_msg(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(nvblk_msg, sizeof(nvblk_msg), fmt, ap);
	va_end(ap);
}

/* Allocator hooks (pmemblk_set_funcs); only the handles use them. */
static void *(*nvblk_malloc)(size_t) = malloc;
static void (*nvblk_free)(void *) = free;

/*
 * fork: the Go runtime's threads do not exist in a child, so a call into
 * Go there may hang, and the pools' in-memory state is a copy of the
 * parent's (main.go, "fork"). The pid at load time and an atfork handler
 * tell a child from its parent; in a child every call fails with ENOTSUP.
 */
static pid_t nvblk_pid;
static volatile sig_atomic_t nvblk_forked;
static volatile sig_atomic_t nvblk_fork_warned;

static void
nvblk_atfork_child(void)
{
	nvblk_forked = 1;
}

__attribute__((constructor)) static void
nvblk_init(void)
{
	nvblk_pid = getpid();
	pthread_atfork(NULL, NULL, nvblk_atfork_child);
}

static int
in_child(void)
{
	if (__builtin_expect(nvblk_forked, 0))
		return 1;
	return 0;
}

/* Fails a call made in a child process; always returns -1. */
static int
forked_fail(const char *fn)
{
	set_msg("%s: called in process %d, a child of process %d after fork(): "
		"nvblk's libpmemblk runs Go code, and the Go runtime does not "
		"survive fork(); use threads instead of processes (fio: --thread), "
		"or exec a new program in the child", fn, (int)getpid(),
		(int)nvblk_pid);
	if (!nvblk_fork_warned) {
		nvblk_fork_warned = 1;
		char line[NVBLK_MSG_MAX + 32];
		int n = snprintf(line, sizeof(line), "libpmemblk (nvblk): %s\n",
			nvblk_msg);
		if (n > 0) {
			ssize_t w = write(2, line, (size_t)n < sizeof(line) ?
				(size_t)n : sizeof(line) - 1);
			(void)w;
		}
	}
	errno = ENOTSUP;
	return -1;
}

/* The checks every pool function makes: not in a child, a pool given. */
static int
enter(const char *fn, PMEMblkpool *pbp)
{
	if (in_child())
		return forked_fail(fn);
	if (__builtin_expect(pbp == NULL, 0)) {
		set_msg("%s: the pool is NULL", fn);
		errno = EINVAL;
		return -1;
	}
	return 0;
}

/* The checks of the functions that take a path (rare calls). */
static int
enter_path(const char *fn)
{
	if (in_child() || getpid() != nvblk_pid) {
		nvblk_forked = 1;
		return forked_fail(fn);
	}
	return 0;
}

static PMEMblkpool *
open_or_create(const char *fn, const char *path, size_t bsize, int create,
	size_t poolsize, mode_t mode)
{
	if (enter_path(fn) < 0)
		return NULL;
	PMEMblkpool *pbp = nvblk_malloc(sizeof(*pbp));
	if (pbp == NULL) {
		set_msg("%s: out of memory", fn);
		errno = ENOMEM;
		return NULL;
	}
	struct nvblk_pool_info info;
	int e = nvblk_go_open((char *)path, bsize, create, poolsize,
		(unsigned)mode, &info, nvblk_msg);
	if (e != 0) {
		nvblk_free(pbp);
		errno = e;
		return NULL;
	}
	pbp->handle = info.handle;
	pbp->bsize = info.bsize;
	pbp->nblock = info.nblock;
	return pbp;
}

PMEMblkpool *
pmemblk_open(const char *path, size_t bsize)
{
	return open_or_create("pmemblk_open", path, bsize, 0, 0, 0);
}

PMEMblkpool *
pmemblk_create(const char *path, size_t bsize, size_t poolsize, mode_t mode)
{
	return open_or_create("pmemblk_create", path, bsize, 1, poolsize, mode);
}

void
pmemblk_close(PMEMblkpool *pbp)
{
	if (enter("pmemblk_close", pbp) < 0)
		return;
	int e = nvblk_go_close(pbp->handle, nvblk_msg);
	if (e < 0) {
		errno = EINVAL; /* not a pool of ours: leave the memory alone */
		return;
	}
	if (e > 0)
		errno = e; /* closed all the same */
	nvblk_free(pbp);
}

size_t
pmemblk_bsize(PMEMblkpool *pbp)
{
	return pbp->bsize;
}

size_t
pmemblk_nblock(PMEMblkpool *pbp)
{
	return pbp->nblock;
}

/* A NULL buffer fails (libpmemblk would crash on it). */
static int
null_buf(const char *fn)
{
	set_msg("%s: the buffer is NULL", fn);
	errno = EINVAL;
	return -1;
}

int
pmemblk_read(PMEMblkpool *pbp, void *buf, long long blockno)
{
	if (enter("pmemblk_read", pbp) < 0)
		return -1;
	if (__builtin_expect(buf == NULL, 0))
		return null_buf("pmemblk_read");
	int e = nvblk_go_read(pbp->handle, buf, blockno, nvblk_msg);
	if (__builtin_expect(e != 0, 0)) {
		errno = e;
		return -1;
	}
	return 0;
}

int
pmemblk_write(PMEMblkpool *pbp, const void *buf, long long blockno)
{
	if (enter("pmemblk_write", pbp) < 0)
		return -1;
	if (__builtin_expect(buf == NULL, 0))
		return null_buf("pmemblk_write");
	int e = nvblk_go_write(pbp->handle, (void *)buf, blockno, nvblk_msg);
	if (__builtin_expect(e != 0, 0)) {
		errno = e;
		return -1;
	}
	return 0;
}

static int
set_state(const char *fn, PMEMblkpool *pbp, long long blockno, int zero)
{
	if (enter(fn, pbp) < 0)
		return -1;
	int e = nvblk_go_set(pbp->handle, blockno, zero, nvblk_msg);
	if (e != 0) {
		errno = e;
		return -1;
	}
	return 0;
}

int
pmemblk_set_zero(PMEMblkpool *pbp, long long blockno)
{
	return set_state("pmemblk_set_zero", pbp, blockno, 1);
}

int
pmemblk_set_error(PMEMblkpool *pbp, long long blockno)
{
	return set_state("pmemblk_set_error", pbp, blockno, 0);
}

int
pmemblk_check(const char *path, size_t bsize)
{
	if (enter_path("pmemblk_check") < 0)
		return -1;
	int r = nvblk_go_check((char *)path, bsize, nvblk_msg);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	return r;
}

const char *
pmemblk_check_version(unsigned major_required, unsigned minor_required)
{
	if (major_required != PMEMBLK_MAJOR_VERSION) {
		set_msg("libpmemblk major version mismatch (need %u, found %u)",
			major_required, PMEMBLK_MAJOR_VERSION);
		return nvblk_msg;
	}
	if (minor_required > PMEMBLK_MINOR_VERSION) {
		set_msg("libpmemblk minor version mismatch (need %u, found %u)",
			minor_required, PMEMBLK_MINOR_VERSION);
		return nvblk_msg;
	}
	return NULL;
}

const char *
pmemblk_errormsg(void)
{
	return nvblk_msg;
}

void
pmemblk_set_funcs(void *(*malloc_func)(size_t size),
	void (*free_func)(void *ptr),
	void *(*realloc_func)(void *ptr, size_t size),
	char *(*strdup_func)(const char *s))
{
	(void)realloc_func;
	(void)strdup_func;
	nvblk_malloc = malloc_func ? malloc_func : malloc;
	nvblk_free = free_func ? free_func : free;
}

/*
 * CTL: the entry points libpmemblk 1.12 has, all global int values. They
 * are accepted and read back; nvblk always allocates the file at create
 * (fallocate.at_create), records no shutdown state (sds.at_create) and
 * does not prefault (prefault.*). Copy-on-write opens are refused.
 */
static struct {
	const char *name;
	int value;
} nvblk_ctl[] = {
	{"prefault.at_create", 0},
	{"prefault.at_open", 0},
	{"sds.at_create", 1},
	{"fallocate.at_create", 1},
	{"copy_on_write.at_open", 0},
};
static pthread_mutex_t nvblk_ctl_mu = PTHREAD_MUTEX_INITIALIZER;

static int *
ctl_find(const char *name)
{
	if (name == NULL)
		return NULL;
	for (size_t i = 0; i < sizeof(nvblk_ctl) / sizeof(nvblk_ctl[0]); i++)
		if (strcmp(nvblk_ctl[i].name, name) == 0)
			return &nvblk_ctl[i].value;
	return NULL;
}

static int
ctl_fail(int e, const char *fmt, const char *name)
{
	set_msg(fmt, name ? name : "(null)");
	errno = e;
	return -1;
}

int
pmemblk_ctl_get(PMEMblkpool *pbp, const char *name, void *arg)
{
	(void)pbp;
	int *v = ctl_find(name);
	if (v == NULL)
		return ctl_fail(EINVAL, "invalid query entry point %s", name);
	if (arg == NULL)
		return ctl_fail(EINVAL, "%s: read queries require non-NULL argument", name);
	pthread_mutex_lock(&nvblk_ctl_mu);
	*(int *)arg = *v;
	pthread_mutex_unlock(&nvblk_ctl_mu);
	return 0;
}

int
pmemblk_ctl_set(PMEMblkpool *pbp, const char *name, void *arg)
{
	(void)pbp;
	int *v = ctl_find(name);
	if (v == NULL)
		return ctl_fail(EINVAL, "invalid query entry point %s", name);
	if (arg == NULL)
		return ctl_fail(EINVAL, "%s: write queries require non-NULL argument", name);
	int nv = *(int *)arg;
	if (strcmp(name, "copy_on_write.at_open") == 0 && nv != 0)
		return ctl_fail(EINVAL, "%s: copy-on-write opens are not supported by nvblk's libpmemblk", name);
	pthread_mutex_lock(&nvblk_ctl_mu);
	*v = nv;
	pthread_mutex_unlock(&nvblk_ctl_mu);
	return 0;
}

int
pmemblk_ctl_exec(PMEMblkpool *pbp, const char *name, void *arg)
{
	(void)pbp;
	(void)arg;
	return ctl_fail(EINVAL, "invalid query entry point %s", name);
}
