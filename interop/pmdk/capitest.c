//go:build ignore

// The Go tool skips this file (it is not cgo); the tests compile it with gcc.

/*
 * capitest: exercises every function of the libpmemblk API and prints
 * one line per call: its result and errno, never pointers or messages,
 * so the output of a run against PMDK's libpmemblk 1.12 and one against
 * nvblk's libpmemblk.so.1 can be compared line by line (capi_test.go).
 * Messages go to stderr. Built by the tests:
 *   gcc -O2 -pthread -o capitest capitest.c -lpmemblk
 *
 *   capitest api DIR      the API on pools made in DIR (empty)
 *   capitest rofile POOL  open of a pool file the caller cannot write,
 *                         and create of a pool with mode 0444 beside it
 *                         (run as a user other than root)
 *   capitest fork DIR     nvblk only: calls in a child after fork() fail
 *                         with ENOTSUP and a message, at once
 *   capitest sigbus DIR   nvblk only: the pool file truncated under the
 *                         mapping: reads and writes fail with EIO
 *   capitest sigbus-chain DIR  the same with a SIGBUS handler of the
 *                         program's own, installed after the library was
 *                         loaded, with SA_ONSTACK, calling the previous one
 *   capitest extra DIR    nvblk only: pool set files and copy-on-write
 *                         opens are refused, errormsg is per thread, NULL
 *                         pools and buffers fail with EINVAL
 *
 * Exit status: 0 when every expectation held, 1 otherwise (the failed
 * ones are printed as "FAIL ..." lines), 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpmemblk.h>

static int failures;
static const char *dir;

#define POOLSIZE ((size_t)32 << 20)
#define BSIZE 4096

static const char *
ename(int e)
{
	const char *n = e ? strerrorname_np(e) : "0";
	return n ? n : "?";
}

/* result prints "label ret errno" (errno only when ret < 0) and the message. */
static void
result(const char *label, long long ret)
{
	int e = errno;
	printf("%s %lld %s\n", label, ret, ret < 0 ? ename(e) : "-");
	if (ret < 0)
		fprintf(stderr, "%s: %s\n", label, pmemblk_errormsg());
	errno = e;
}

static void
expect(int cond, const char *what)
{
	if (!cond) {
		printf("FAIL %s\n", what);
		failures++;
	}
}

static char *
path(const char *name)
{
	static char buf[8][4096];
	static int i;
	char *p = buf[i++ % 8];
	snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
	return p;
}

/* open/create results as 0 (a pool) or -1 (NULL and errno). */
static PMEMblkpool *
pool_result(const char *label, PMEMblkpool *pbp)
{
	result(label, pbp ? 0 : -1);
	return pbp;
}

static void
make_file(const char *p, off_t size)
{
	int fd = open(p, O_CREAT | O_RDWR | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, size) != 0) {
		perror(p);
		exit(2);
	}
	close(fd);
}

static void
fill(uint8_t *buf, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 8));
}

static int
all_zero(const uint8_t *buf, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (buf[i])
			return 0;
	return 1;
}

/* --- concurrent writers with self-describing blocks ---------------------- */

#define NTHREADS 8
#define NWRITES 400
#define HOTBLOCKS 64

struct rec {
	uint64_t block, thread, seq, sum;
};

static PMEMblkpool *cpool;
static int cfail[NTHREADS];

static uint64_t
rec_sum(const struct rec *r)
{
	return r->block * 0x9E3779B97F4A7C15ULL ^ r->thread * 0xBF58476D1CE4E5B9ULL ^
		(r->seq + 1) * 0x94D049BB133111EBULL;
}

/* A block is whole: every record equal, describing this block. */
static int
block_ok(const uint8_t *buf, uint64_t block)
{
	const struct rec *r = (const struct rec *)buf;
	if (all_zero(buf, BSIZE))
		return 1; /* never written */
	if (r->block != block || r->sum != rec_sum(r) || r->thread >= NTHREADS ||
	    r->seq >= NWRITES)
		return 0;
	for (size_t i = 1; i < BSIZE / sizeof(*r); i++)
		if (memcmp(&r[i], r, sizeof(*r)) != 0)
			return 0;
	return 1;
}

static void *
writer(void *arg)
{
	uint64_t t = (uintptr_t)arg;
	uint8_t *buf = malloc(BSIZE), *rbuf = malloc(BSIZE);
	uint64_t x = t * 2654435761u + 1;
	for (uint64_t seq = 0; seq < NWRITES; seq++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint64_t b = x % HOTBLOCKS;
		struct rec r = {b, t, seq, 0};
		r.sum = rec_sum(&r);
		for (size_t i = 0; i < BSIZE / sizeof(r); i++)
			memcpy(buf + i * sizeof(r), &r, sizeof(r));
		if (pmemblk_write(cpool, buf, (long long)b) != 0)
			cfail[t]++;
		uint64_t rb = (x >> 20) % HOTBLOCKS;
		if (pmemblk_read(cpool, rbuf, (long long)rb) != 0 || !block_ok(rbuf, rb))
			cfail[t]++;
	}
	free(buf);
	free(rbuf);
	return NULL;
}

static void
concurrency(void)
{
	cpool = pool_result("threads.create", pmemblk_create(path("threads"), BSIZE, POOLSIZE, 0644));
	if (!cpool)
		return;
	pthread_t th[NTHREADS];
	for (uintptr_t t = 0; t < NTHREADS; t++)
		pthread_create(&th[t], NULL, writer, (void *)t);
	int bad = 0;
	for (int t = 0; t < NTHREADS; t++) {
		pthread_join(th[t], NULL);
		bad += cfail[t];
	}
	uint8_t *buf = malloc(BSIZE);
	int written = 0;
	for (uint64_t b = 0; b < HOTBLOCKS; b++) {
		if (pmemblk_read(cpool, buf, (long long)b) != 0 || !block_ok(buf, b))
			bad++;
		written += !all_zero(buf, BSIZE);
	}
	printf("threads.torn_or_failed %d\n", bad);
	printf("threads.blocks_written %d\n", written);
	expect(bad == 0, "8 threads: every block read whole and self-describing");
	expect(written == HOTBLOCKS, "8 threads: every hot block written");
	free(buf);
	pmemblk_close(cpool);
	result("threads.check", pmemblk_check(path("threads"), BSIZE));
}

/* --- the API --------------------------------------------------------------- */

/* Allocator hooks for pmemblk_set_funcs that count their calls. */
static atomic_int n_alloc;
static void *
count_malloc(size_t n)
{
	atomic_fetch_add(&n_alloc, 1);
	return malloc(n);
}
static void *
count_realloc(void *p, size_t n)
{
	atomic_fetch_add(&n_alloc, 1);
	return realloc(p, n);
}
static char *
count_strdup(const char *s)
{
	atomic_fetch_add(&n_alloc, 1);
	return strdup(s);
}

static void
api(void)
{
	pmemblk_set_funcs(count_malloc, free, count_realloc, count_strdup);
	/* versions */
	expect(pmemblk_check_version(PMEMBLK_MAJOR_VERSION, PMEMBLK_MINOR_VERSION) == NULL,
		"check_version(1, 1) is NULL");
	expect(pmemblk_check_version(1, 0) == NULL, "check_version(1, 0) is NULL");
	const char *v = pmemblk_check_version(2, 0);
	expect(v != NULL && strstr(v, "major version mismatch") != NULL, "check_version(2, 0) mismatch");
	v = pmemblk_check_version(1, 2);
	expect(v != NULL && strstr(v, "minor version mismatch") != NULL, "check_version(1, 2) mismatch");
	expect(v != NULL && strcmp(v, pmemblk_errormsg()) == 0, "check_version's message is errormsg's");
	printf("constants %zu %zu %zu %d %d\n", PMEMBLK_MIN_POOL, PMEMBLK_MIN_PART, PMEMBLK_MIN_BLK,
		PMEMBLK_MAJOR_VERSION, PMEMBLK_MINOR_VERSION);

	/* ctl */
	static const char *names[] = {"prefault.at_create", "prefault.at_open", "sds.at_create",
		"fallocate.at_create", "copy_on_write.at_open"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		int val = -1;
		char label[128];
		snprintf(label, sizeof(label), "ctl_get.%s", names[i]);
		result(label, pmemblk_ctl_get(NULL, names[i], &val));
		printf("%s.value %d\n", label, val);
	}
	int one = 1, val = 0;
	result("ctl_get.unknown", pmemblk_ctl_get(NULL, "no.such.entry", &val));
	result("ctl_get.null_arg", pmemblk_ctl_get(NULL, "prefault.at_open", NULL));
	result("ctl_set.prefault", pmemblk_ctl_set(NULL, "prefault.at_open", &one));
	result("ctl_get.prefault", pmemblk_ctl_get(NULL, "prefault.at_open", &val));
	printf("ctl_get.prefault.value %d\n", val);
	result("ctl_set.unknown", pmemblk_ctl_set(NULL, "no.such.entry", &one));
	result("ctl_exec.prefault", pmemblk_ctl_exec(NULL, "prefault.at_open", &one));
	result("ctl_exec.unknown", pmemblk_ctl_exec(NULL, "no.such.entry", &one));

	/* opening what is not a pool */
	pool_result("open.missing", pmemblk_open(path("missing"), 0));
	result("check.missing", pmemblk_check(path("missing"), 0));
	make_file(path("zeros"), POOLSIZE);
	pool_result("open.not_a_pool", pmemblk_open(path("zeros"), 0));
	result("check.not_a_pool", pmemblk_check(path("zeros"), 0));
	if (mkfifo(path("fifo"), 0644) != 0 || mkdir(path("dir"), 0755) != 0)
		exit(2);
	pool_result("open.fifo", pmemblk_open(path("fifo"), 0));
	result("check.fifo", pmemblk_check(path("fifo"), 0));
	pool_result("open.directory", pmemblk_open(path("dir"), 0));
	result("check.directory", pmemblk_check(path("dir"), 0));
	make_file(path("small"), 1 << 20);
	pool_result("open.small_file", pmemblk_open(path("small"), 0));
	pool_result("create0.small_file", pmemblk_create(path("small"), BSIZE, 0, 0644));

	/* create's failures */
	pool_result("create.too_small", pmemblk_create(path("p"), BSIZE, 1 << 20, 0644));
	pool_result("create.bsize0", pmemblk_create(path("p"), 0, POOLSIZE, 0644));
	pool_result("create.bsize_huge", pmemblk_create(path("p"), (size_t)1 << 30, POOLSIZE, 0644));
	pool_result("create.no_dir", pmemblk_create(path("nodir/p"), BSIZE, POOLSIZE, 0644));
	expect(access(path("p"), F_OK) != 0, "failed creates leave no file");

	/* a pool */
	mode_t old = umask(022);
	PMEMblkpool *pbp = pool_result("create", pmemblk_create(path("p"), BSIZE, POOLSIZE, 0640));
	umask(old);
	if (!pbp)
		exit(1);
	struct stat st;
	expect(stat(path("p"), &st) == 0 && (st.st_mode & 0777) == 0640, "create's mode is applied");
	printf("stat.size %lld\n", (long long)st.st_size);
	size_t nblock = pmemblk_nblock(pbp);
	printf("bsize %zu nblock %zu\n", pmemblk_bsize(pbp), nblock);
	printf("set_funcs.used %d\n", atomic_load(&n_alloc) > 0);
	pool_result("create.exists", pmemblk_create(path("p"), BSIZE, POOLSIZE, 0644));

	uint8_t *buf = malloc(BSIZE), *want = malloc(BSIZE);
	memset(buf, 0xAA, BSIZE);
	result("read.fresh", pmemblk_read(pbp, buf, 0));
	expect(all_zero(buf, BSIZE), "a fresh pool reads zeros");
	result("set_zero.fresh", pmemblk_set_zero(pbp, 3));
	result("read.negative", pmemblk_read(pbp, buf, -1));
	result("read.nblock", pmemblk_read(pbp, buf, (long long)nblock));
	result("write.nblock", pmemblk_write(pbp, buf, (long long)nblock));
	result("write.negative", pmemblk_write(pbp, buf, -1));
	result("set_zero.nblock", pmemblk_set_zero(pbp, (long long)nblock));
	result("set_error.nblock", pmemblk_set_error(pbp, (long long)nblock));

	for (long long b = 0; b < 8; b++) {
		fill(buf, BSIZE, (uint64_t)b);
		result("write", pmemblk_write(pbp, buf, b));
	}
	fill(buf, BSIZE, 99);
	result("write.last", pmemblk_write(pbp, buf, (long long)nblock - 1));
	for (long long b = 0; b < 8; b++) {
		fill(want, BSIZE, (uint64_t)b);
		result("read", pmemblk_read(pbp, buf, b));
		expect(memcmp(buf, want, BSIZE) == 0, "read returns what was written");
	}
	result("set_zero", pmemblk_set_zero(pbp, 5));
	memset(buf, 0xAA, BSIZE);
	result("read.zeroed", pmemblk_read(pbp, buf, 5));
	expect(all_zero(buf, BSIZE), "set_zero then read: zeros");
	result("set_error", pmemblk_set_error(pbp, 6));
	result("read.error", pmemblk_read(pbp, buf, 6));
	result("read.error_again", pmemblk_read(pbp, buf, 6));
	fill(buf, BSIZE, 66);
	result("write.clears_error", pmemblk_write(pbp, buf, 6));
	result("read.after_error", pmemblk_read(pbp, buf, 6));
	fill(want, BSIZE, 66);
	expect(memcmp(buf, want, BSIZE) == 0, "a write clears the error state");
	result("set_error.keep", pmemblk_set_error(pbp, 7));
	pmemblk_close(pbp);

	/* reopen */
	pbp = pool_result("open", pmemblk_open(path("p"), 0));
	if (pbp) {
		printf("reopen bsize %zu nblock %zu\n", pmemblk_bsize(pbp), pmemblk_nblock(pbp));
		result("read.reopen", pmemblk_read(pbp, buf, 2));
		fill(want, BSIZE, 2);
		expect(memcmp(buf, want, BSIZE) == 0, "data survives close and open");
		result("read.reopen_zeroed", pmemblk_read(pbp, buf, 5));
		expect(all_zero(buf, BSIZE), "zeroed block survives close and open");
		result("read.reopen_error", pmemblk_read(pbp, buf, 7));
		pmemblk_close(pbp);
	}
	pbp = pool_result("open.bsize", pmemblk_open(path("p"), BSIZE));
	if (pbp)
		pmemblk_close(pbp);
	pool_result("open.wrong_bsize", pmemblk_open(path("p"), 512));
	result("check", pmemblk_check(path("p"), BSIZE));
	result("check.bsize0", pmemblk_check(path("p"), 0));
	result("check.wrong_bsize", pmemblk_check(path("p"), 512));
	pool_result("create0.existing_pool", pmemblk_create(path("p"), BSIZE, 0, 0644));

	/* an open pool is locked (flock) against other opens and checks */
	pbp = pool_result("open.first", pmemblk_open(path("p"), 0));
	pool_result("open.while_open", pmemblk_open(path("p"), 0));
	result("check.while_open", pmemblk_check(path("p"), 0));
	if (pbp)
		pmemblk_close(pbp);
	pbp = pool_result("open.after_close", pmemblk_open(path("p"), 0));
	if (pbp)
		pmemblk_close(pbp);

	/* create with size 0 in an existing zeroed file */
	pbp = pool_result("create0.zeroed_file", pmemblk_create(path("zeros"), 512, 0, 0644));
	if (pbp) {
		printf("create0 bsize %zu nblock %zu\n", pmemblk_bsize(pbp), pmemblk_nblock(pbp));
		memset(buf, 0x5A, 512);
		result("create0.write", pmemblk_write(pbp, buf, 1));
		pmemblk_close(pbp);
		result("create0.check", pmemblk_check(path("zeros"), 512));
	}

	/* a damaged pool header */
	int fd = open(path("p"), O_RDWR);
	uint8_t byte;
	if (fd < 0 || pread(fd, &byte, 1, 100) != 1)
		exit(2);
	byte ^= 0xFF;
	if (pwrite(fd, &byte, 1, 100) != 1)
		exit(2);
	close(fd);
	pool_result("open.damaged_header", pmemblk_open(path("p"), 0));
	result("check.damaged_header", pmemblk_check(path("p"), 0));

	free(buf);
	free(want);
	concurrency();
}

/* --- nvblk only -------------------------------------------------------------- */

static void
do_fork(void)
{
	PMEMblkpool *pbp = pmemblk_create(path("f"), BSIZE, POOLSIZE, 0644);
	expect(pbp != NULL, "create before fork");
	if (!pbp)
		return;
	uint8_t *buf = calloc(1, BSIZE);
	fill(buf, BSIZE, 1);
	expect(pmemblk_write(pbp, buf, 0) == 0, "write before fork");
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int bad = 0;
		errno = 0;
		if (pmemblk_read(pbp, buf, 0) != -1 || errno != ENOTSUP)
			bad |= 1;
		if (strstr(pmemblk_errormsg(), "fork") == NULL)
			bad |= 2;
		errno = 0;
		if (pmemblk_write(pbp, buf, 0) != -1 || errno != ENOTSUP)
			bad |= 4;
		errno = 0;
		if (pmemblk_open(path("f"), 0) != NULL || errno != ENOTSUP)
			bad |= 8;
		errno = 0;
		if (pmemblk_check(path("f"), 0) != -1 || errno != ENOTSUP)
			bad |= 16;
		fprintf(stderr, "child: %s\n", pmemblk_errormsg());
		_exit(bad);
	}
	int status = 0;
	expect(pid > 0 && waitpid(pid, &status, 0) == pid, "fork and wait");
	printf("fork.child_exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		"in the child every call fails with ENOTSUP and a message about fork");
	uint8_t *want = malloc(BSIZE);
	fill(want, BSIZE, 1);
	expect(pmemblk_read(pbp, buf, 0) == 0 && memcmp(buf, want, BSIZE) == 0,
		"the parent goes on working");
	pmemblk_close(pbp);
	free(buf);
	free(want);
}

static struct sigaction prev_bus;
static volatile sig_atomic_t own_handler_ran;

/* A program's own SIGBUS handler that passes faults it does not own on. */
static void
own_sigbus(int sig, siginfo_t *si, void *ctx)
{
	own_handler_ran = 1;
	if (prev_bus.sa_flags & SA_SIGINFO)
		prev_bus.sa_sigaction(sig, si, ctx);
	else
		_exit(9);
}

static void
do_sigbus(int chain)
{
	if (chain) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = own_sigbus;
		sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
		sigemptyset(&sa.sa_mask);
		expect(sigaction(SIGBUS, &sa, &prev_bus) == 0, "install a SIGBUS handler");
	}
	PMEMblkpool *pbp = pmemblk_create(path("b"), BSIZE, POOLSIZE, 0644);
	expect(pbp != NULL, "create");
	if (!pbp)
		return;
	uint8_t *buf = calloc(1, BSIZE);
	long long last = (long long)pmemblk_nblock(pbp) - 1;
	fill(buf, BSIZE, 3);
	expect(pmemblk_write(pbp, buf, last) == 0, "write the last block");
	/* Keep the pool headers and the BTT's first info block, drop the rest. */
	expect(truncate(path("b"), 16384) == 0, "truncate under the mapping");
	errno = 0;
	int r = pmemblk_read(pbp, buf, last);
	result("sigbus.read", r);
	expect(r == -1 && errno == EIO, "a read of a truncated block fails with EIO");
	errno = 0;
	r = pmemblk_write(pbp, buf, last);
	result("sigbus.write", r);
	expect(r == -1 && errno == EIO, "a write to a truncated block fails with EIO");
	if (chain)
		expect(own_handler_ran, "the program's handler saw the SIGBUS first");
	pmemblk_close(pbp);
	free(buf);
}

static void *
msg_thread(void *arg)
{
	(void)arg;
	/* A fresh thread has no message yet; its failures do not change others'. */
	int ok = pmemblk_errormsg() != NULL && pmemblk_errormsg()[0] == '\0';
	pmemblk_open(path("missing-in-thread"), 0);
	ok = ok && strstr(pmemblk_errormsg(), "missing-in-thread") != NULL;
	return ok ? (void *)1 : NULL;
}

static void
do_extra(void)
{
	FILE *f = fopen(path("set"), "w");
	fprintf(f, "PMEMPOOLSET\n32M %s\n", path("part"));
	fclose(f);
	errno = 0;
	PMEMblkpool *pbp = pmemblk_open(path("set"), 0);
	result("poolset.open", pbp ? 0 : -1);
	expect(pbp == NULL && errno == ENOTSUP && strstr(pmemblk_errormsg(), "pool set"),
		"a pool set file is refused with ENOTSUP and a message");
	pbp = pmemblk_create(path("set"), BSIZE, 0, 0644);
	result("poolset.create", pbp ? 0 : -1);
	expect(pbp == NULL && errno == ENOTSUP, "create in a pool set file is refused");
	result("poolset.check", pmemblk_check(path("set"), 0));

	int one = 1, zero = 0;
	errno = 0;
	result("ctl_set.copy_on_write", pmemblk_ctl_set(NULL, "copy_on_write.at_open", &one));
	expect(errno == EINVAL && strstr(pmemblk_errormsg(), "copy-on-write"),
		"copy-on-write opens are refused");
	result("ctl_set.copy_on_write_off", pmemblk_ctl_set(NULL, "copy_on_write.at_open", &zero));

	pmemblk_open(path("missing-in-main"), 0);
	pthread_t th;
	void *ok = NULL;
	pthread_create(&th, NULL, msg_thread, NULL);
	pthread_join(th, &ok);
	expect(ok != NULL, "a thread's message is its own");
	expect(strstr(pmemblk_errormsg(), "missing-in-main") != NULL, "the main thread keeps its message");

	pmemblk_close(NULL);
	expect(errno == EINVAL, "close(NULL) sets EINVAL");
	errno = 0;
	expect(pmemblk_read(NULL, &one, 0) == -1 && errno == EINVAL, "read(NULL) fails with EINVAL");
	PMEMblkpool *p = pmemblk_create(path("nullbuf"), BSIZE, POOLSIZE, 0644);
	expect(p != NULL, "create");
	if (p) {
		errno = 0;
		expect(pmemblk_read(p, NULL, 0) == -1 && errno == EINVAL, "a read into NULL fails with EINVAL");
		errno = 0;
		expect(pmemblk_write(p, NULL, 0) == -1 && errno == EINVAL, "a write from NULL fails with EINVAL");
		pmemblk_close(p);
	}
}

static void
rofile(const char *p)
{
	errno = 0;
	PMEMblkpool *pbp = pool_result("rofile.open", pmemblk_open(p, 0));
	if (pbp) {
		uint8_t buf[BSIZE] = {0};
		result("rofile.write", pmemblk_write(pbp, buf, 0));
		pmemblk_close(pbp);
	}
	/* The checker only reads. */
	result("rofile.check", pmemblk_check(p, 0));

	/* A new pool whose mode denies writing is still written through
	 * the handle create returned. */
	char np[4096];
	snprintf(np, sizeof(np), "%s.new", p);
	mode_t old = umask(022);
	pbp = pool_result("rofile.create_0444", pmemblk_create(np, BSIZE, POOLSIZE, 0444));
	umask(old);
	struct stat st;
	if (stat(np, &st) == 0)
		printf("rofile.create_0444.mode %o\n", (unsigned)(st.st_mode & 0777));
	if (pbp) {
		uint8_t buf[BSIZE];
		fill(buf, BSIZE, 4);
		result("rofile.create_0444.write", pmemblk_write(pbp, buf, 0));
		pmemblk_close(pbp);
	}
	pool_result("rofile.create_0444.reopen", pmemblk_open(np, 0));
	unlink(np);
}

int
main(int argc, char *argv[])
{
	if (argc != 3) {
		fprintf(stderr, "usage: capitest api|rofile|fork|sigbus|sigbus-chain|extra DIR|POOL\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	dir = argv[2];
	if (strcmp(argv[1], "api") == 0)
		api();
	else if (strcmp(argv[1], "rofile") == 0)
		rofile(argv[2]);
	else if (strcmp(argv[1], "fork") == 0)
		do_fork();
	else if (strcmp(argv[1], "sigbus") == 0)
		do_sigbus(0);
	else if (strcmp(argv[1], "sigbus-chain") == 0)
		do_sigbus(1);
	else if (strcmp(argv[1], "extra") == 0)
		do_extra();
	else
		return 2;
	return failures ? 1 : 0;
}
