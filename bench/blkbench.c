/*
 * blkbench: the workload of `nvblk bench`, run against PMDK's libpmemblk,
 * and the physical floors of 4 KiB persistent copies on the same machine.
 *
 *   blkbench MODE [-t THREADS] [-d DURATION] [-s SIZE] [-b BSIZE] [-P] PATH
 *
 * MODE (pool modes; PATH is a pmemblk pool, created with SIZE bytes and
 * BSIZE-byte blocks if missing):
 *   write   random single-block pmemblk_write over all blocks
 *   read    random single-block pmemblk_read over all blocks
 *   fill    pmemblk_write of every block once (blocks split between threads)
 *   create  only create (or open) the pool
 * MODE (raw modes; PATH is a plain file, created with SIZE bytes of zeros if
 * missing, mapped shared; random 4 KiB-aligned offsets over all of it):
 *   raw-nt     4 KiB non-temporal copy (AVX2 if the CPU has it, else SSE2) + sfence
 *   raw-pmem   pmem_memcpy_persist(4 KiB) from libpmem (NT copy + fence)
 *   raw-btt    what one BTT sector write must persist at least: raw-nt, then
 *              two 8-byte log halves and one 4-byte map entry, each
 *              pmem_persist'ed (flush + fence) on its own, in that order
 *   raw-nvblk-write  exactly nvblk's persistence steps for one sector write
 *              (two fences; see raw_nvblk_write), no locks: nvblk's floor
 *   raw-nvblk-read   a map entry load, then the 4 KiB copy out
 *   raw-store  plain 4 KiB memcpy into the mapping, no flush, no fence
 *   raw-load   plain 4 KiB memcpy out of the mapping
 *
 * -t threads (1), -d duration as 3s, 500ms or seconds (3s), -s size for a
 * new file (1G; K, M, G suffixes), -b block size (4096), -P: do not prefault.
 *
 * Output, one line on stdout, the format of `nvblk bench`:
 *   op=write threads=1 ops_per_s=... mb_per_s=... ns_per_op=...
 * ns_per_op is elapsed * threads / ops. Diagnostics (prefault time, page
 * faults during the measurement) go to stderr.
 *
 * Before measuring, every page of the pool's (or file's) mapping is
 * touched, found in /proc/self/maps: read, and written back unchanged where
 * the mapping is writable, so the measurement takes no page faults (what
 * `nvblk bench --prefault` does). Run with PMEM_IS_PMEM_FORCE=1 on tmpfs.
 *
 * Build: gcc -O2 -pthread -o blkbench blkbench.c -lpmemblk -lpmem
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <immintrin.h>
#include <inttypes.h>
#include <libpmem.h>
#include <libpmemblk.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define RAW_BLOCK 4096

enum mode { M_WRITE, M_READ, M_FILL, M_CREATE, M_RAW_NT, M_RAW_PMEM, M_RAW_BTT, M_RAW_STORE, M_RAW_LOAD,
	M_RAW_NVBLK_W, M_RAW_NVBLK_R };

static const struct {
	const char *name;
	enum mode mode;
} modes[] = {
	{"write", M_WRITE}, {"read", M_READ}, {"fill", M_FILL}, {"create", M_CREATE},
	{"raw-nt", M_RAW_NT}, {"raw-pmem", M_RAW_PMEM}, {"raw-btt", M_RAW_BTT},
	{"raw-store", M_RAW_STORE}, {"raw-load", M_RAW_LOAD},
	{"raw-nvblk-write", M_RAW_NVBLK_W}, {"raw-nvblk-read", M_RAW_NVBLK_R},
};

struct worker {
	pthread_t tid;
	int idx;
	uint64_t ops;
	uint64_t rng;
	uint64_t lo, hi; /* fill range */
	unsigned char *buf;
	int err;
	char pad[64];
};

static enum mode mode;
static const char *mode_name;
static int nthreads = 1;
static double duration = 3.0;
static long long create_size = 1LL << 30;
static size_t bsize = 4096;
static int prefault = 1;
static const char *path;

static PMEMblkpool *pbp;
static uint64_t nblocks;
static unsigned char *raw_base;
static uint64_t raw_size;
static int have_avx2;

static atomic_int stop_flag;
static pthread_barrier_t start_barrier;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "blkbench: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* next returns a uniform value in [0, n) (xorshift64*, multiply-shift). */
static inline uint64_t next(uint64_t *s, uint64_t n)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return (uint64_t)(((unsigned __int128)(x * 0x2545f4914f6cdd1dULL) * n) >> 64);
}

static long long parse_size(const char *s)
{
	char *end;
	long long v = strtoll(s, &end, 10);
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	case 't': case 'T': v <<= 40; end++; break;
	}
	if (*end == 'i' || *end == 'I')
		end++;
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end || v <= 0)
		die("bad size %s", s);
	return v;
}

static double parse_duration(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (strcmp(end, "ms") == 0)
		v /= 1e3;
	else if (strcmp(end, "us") == 0)
		v /= 1e6;
	else if (strcmp(end, "m") == 0)
		v *= 60;
	else if (*end && strcmp(end, "s") != 0)
		die("bad duration %s", s);
	if (!(v > 0) || v > 3600)
		die("duration %s: want more than 0 and at most 1h", s);
	return v;
}

/*
 * prefault_path touches every page of every mapping of file in
 * /proc/self/maps: reads it and, where the mapping is writable, writes the
 * byte back unchanged. Returns the number of bytes touched.
 */
static uint64_t prefault_path(const char *file)
{
	char real[PATH_MAX], line[PATH_MAX + 256];
	if (!realpath(file, real))
		die("realpath %s: %s", file, strerror(errno));
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		die("/proc/self/maps: %s", strerror(errno));
	long page = sysconf(_SC_PAGESIZE);
	uint64_t touched = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		char perms[8];
		int n = 0;
		if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi, perms, &n) < 3 || n == 0)
			continue;
		char *p = line + n;
		p[strcspn(p, "\n")] = 0;
		if (strcmp(p, real) != 0 || perms[0] != 'r')
			continue;
		for (unsigned long a = lo; a < hi; a += page) {
			volatile unsigned char *b = (volatile unsigned char *)a;
			unsigned char v = *b;
			if (perms[1] == 'w')
				*b = v;
		}
		touched += hi - lo;
	}
	fclose(f);
	return touched;
}

/* 4 KiB non-temporal copies; dst and src 64-byte aligned. */
__attribute__((target("avx2"))) static void copy_nt_avx2(void *dst, const void *src)
{
	__m256i *d = dst;
	const __m256i *s = src;
	for (int i = 0; i < RAW_BLOCK / 32; i += 4) {
		__m256i a = _mm256_load_si256(s + i), b = _mm256_load_si256(s + i + 1);
		__m256i c = _mm256_load_si256(s + i + 2), e = _mm256_load_si256(s + i + 3);
		_mm256_stream_si256(d + i, a);
		_mm256_stream_si256(d + i + 1, b);
		_mm256_stream_si256(d + i + 2, c);
		_mm256_stream_si256(d + i + 3, e);
	}
}

static void copy_nt_sse2(void *dst, const void *src)
{
	__m128i *d = dst;
	const __m128i *s = src;
	for (int i = 0; i < RAW_BLOCK / 16; i += 4) {
		__m128i a = _mm_load_si128(s + i), b = _mm_load_si128(s + i + 1);
		__m128i c = _mm_load_si128(s + i + 2), e = _mm_load_si128(s + i + 3);
		_mm_stream_si128(d + i, a);
		_mm_stream_si128(d + i + 1, b);
		_mm_stream_si128(d + i + 2, c);
		_mm_stream_si128(d + i + 3, e);
	}
}

static inline void copy_nt(void *dst, const void *src)
{
	if (have_avx2)
		copy_nt_avx2(dst, src);
	else
		copy_nt_sse2(dst, src);
}

/* raw-btt layout: the file's first 1/64 holds map entries and log slots. */
static inline void raw_btt_write(struct worker *w, uint64_t nblk)
{
	uint64_t meta = nblk / 64; /* blocks reserved for metadata at the start */
	uint64_t blk = meta + next(&w->rng, nblk - meta);
	copy_nt(raw_base + blk * RAW_BLOCK, w->buf);
	_mm_sfence();
	/* log entry of this lane: 64-byte group per lane, in block 0.. */
	unsigned char *log = raw_base + (uint64_t)(w->idx % 64) * 64;
	uint64_t half = w->ops ^ blk;
	memcpy(log, &half, 8);
	pmem_persist(log, 8);
	memcpy(log + 8, &half, 8);
	pmem_persist(log + 8, 8);
	/* map entry of a random LBA, after the log area */
	uint64_t maparea = meta * RAW_BLOCK - 4096;
	uint32_t *map = (uint32_t *)(raw_base + 4096 + 4 * next(&w->rng, maparea / 4));
	*map = (uint32_t)blk;
	pmem_persist(map, 4);
}

/*
 * raw-nvblk-write: exactly the persistence steps of an nvblk BTT sector
 * write (btt commit), with no locks and no checks: read the LBA's map
 * entry; the data into a block with non-temporal stores; the log entry's
 * first half stored and flushed, with the lane's previous map entry's
 * line; one fence; the second half stored, flushed, fenced; the map
 * entry stored and left pending for the next write. Same layout as
 * raw-btt. raw-nvblk-read: read the LBA's map entry, then copy the block
 * out (an nvblk read, without its read-tracking and checks).
 */
static inline void raw_nvblk_write(struct worker *w, uint64_t nblk, uint32_t **pend)
{
	uint64_t meta = nblk / 64;
	uint64_t maparea = meta * RAW_BLOCK - 4096;
	uint32_t *map = (uint32_t *)(raw_base + 4096 + 4 * next(&w->rng, maparea / 4));
	volatile uint32_t old = *map;
	(void)old;
	uint64_t blk = meta + next(&w->rng, nblk - meta);
	copy_nt(raw_base + blk * RAW_BLOCK, w->buf);
	unsigned char *log = raw_base + (uint64_t)(w->idx % 64) * 64 + 16 * (w->ops & 1);
	uint64_t half = w->ops ^ blk;
	memcpy(log, &half, 8);
	pmem_flush(log, 8);
	if (*pend)
		pmem_flush(*pend, 4);
	pmem_drain();
	memcpy(log + 8, &half, 8);
	pmem_persist(log + 8, 8);
	*map = (uint32_t)blk;
	*pend = map;
	w->ops++;
}

static inline void raw_nvblk_read(struct worker *w, uint64_t nblk)
{
	uint64_t meta = nblk / 64;
	uint64_t maparea = meta * RAW_BLOCK - 4096;
	uint32_t *map = (uint32_t *)(raw_base + 4096 + 4 * next(&w->rng, maparea / 4));
	uint64_t blk = meta + (*(volatile uint32_t *)map + next(&w->rng, nblk - meta)) % (nblk - meta);
	memcpy(w->buf, raw_base + blk * RAW_BLOCK, RAW_BLOCK);
	__asm__ volatile("" : : "r"(w->buf) : "memory");
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t ops = 0;
	uint64_t nblk = raw_size / RAW_BLOCK;
	pthread_barrier_wait(&start_barrier);
	switch (mode) {
	case M_WRITE:
	case M_READ:
		while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
			for (int k = 0; k < BATCH; k++) {
				long long b = (long long)next(&w->rng, nblocks);
				int r = mode == M_WRITE ? pmemblk_write(pbp, w->buf, b) : pmemblk_read(pbp, w->buf, b);
				if (r != 0) {
					w->err = errno ? errno : EIO;
					goto out;
				}
			}
			ops += BATCH;
		}
		break;
	case M_FILL:
		for (uint64_t b = w->lo; b < w->hi; b++) {
			memcpy(w->buf, &b, sizeof b);
			if (pmemblk_write(pbp, w->buf, (long long)b) != 0) {
				w->err = errno ? errno : EIO;
				goto out;
			}
			ops++;
		}
		break;
	case M_RAW_NT:
		while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
			for (int k = 0; k < BATCH; k++) {
				copy_nt(raw_base + next(&w->rng, nblk) * RAW_BLOCK, w->buf);
				_mm_sfence();
			}
			ops += BATCH;
		}
		break;
	case M_RAW_PMEM:
		while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
			for (int k = 0; k < BATCH; k++)
				pmem_memcpy_persist(raw_base + next(&w->rng, nblk) * RAW_BLOCK, w->buf, RAW_BLOCK);
			ops += BATCH;
		}
		break;
	case M_RAW_BTT:
		w->ops = 0;
		while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
			for (int k = 0; k < BATCH; k++)
				raw_btt_write(w, nblk);
			ops += BATCH;
			w->ops = ops;
		}
		break;
	case M_RAW_NVBLK_W: {
		uint32_t *pend = NULL;
		w->ops = 0;
		while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
			for (int k = 0; k < BATCH; k++)
				raw_nvblk_write(w, nblk, &pend);
			ops += BATCH;
		}
		break;
	}
	case M_RAW_NVBLK_R:
		while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
			for (int k = 0; k < BATCH; k++)
				raw_nvblk_read(w, nblk);
			ops += BATCH;
		}
		break;
	case M_RAW_STORE:
		while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
			for (int k = 0; k < BATCH; k++) {
				memcpy(raw_base + next(&w->rng, nblk) * RAW_BLOCK, w->buf, RAW_BLOCK);
				__asm__ volatile("" ::: "memory");
			}
			ops += BATCH;
		}
		break;
	case M_RAW_LOAD:
		while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
			for (int k = 0; k < BATCH; k++) {
				memcpy(w->buf, raw_base + next(&w->rng, nblk) * RAW_BLOCK, RAW_BLOCK);
				__asm__ volatile("" : : "r"(w->buf) : "memory");
			}
			ops += BATCH;
		}
		break;
	case M_CREATE:
		break;
	}
out:
	w->ops = ops;
	if (w->err)
		atomic_store(&stop_flag, 1);
	return NULL;
}

static void open_pool(void)
{
	if (access(path, F_OK) != 0) {
		pbp = pmemblk_create(path, bsize, (size_t)create_size, 0644);
		if (!pbp)
			die("pmemblk_create %s: %s", path, pmemblk_errormsg());
		fprintf(stderr, "blkbench: created pool %s: %lld bytes, %zu-byte blocks\n", path, create_size, bsize);
	} else {
		pbp = pmemblk_open(path, bsize);
		if (!pbp)
			die("pmemblk_open %s: %s", path, pmemblk_errormsg());
	}
	nblocks = pmemblk_nblock(pbp);
	if (nblocks == 0)
		die("%s: pool has no blocks", path);
	if (pmemblk_bsize(pbp) != bsize)
		die("%s: block size %zu, want %zu", path, pmemblk_bsize(pbp), bsize);
}

static void open_raw(void)
{
	int fd = open(path, O_RDWR);
	if (fd < 0 && errno == ENOENT) {
		fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
		if (fd < 0)
			die("create %s: %s", path, strerror(errno));
		static char zeros[1 << 20];
		for (long long off = 0; off < create_size; off += sizeof zeros) {
			size_t n = create_size - off < (long long)sizeof zeros ? (size_t)(create_size - off) : sizeof zeros;
			if (pwrite(fd, zeros, n, off) != (ssize_t)n)
				die("write %s: %s", path, strerror(errno));
		}
	}
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0)
		die("stat %s: %s", path, strerror(errno));
	raw_size = (uint64_t)st.st_size / RAW_BLOCK * RAW_BLOCK;
	if (raw_size < 256 * RAW_BLOCK)
		die("%s: %" PRIu64 " bytes is too small (want at least 1 MiB)", path, raw_size);
	raw_base = mmap(NULL, raw_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (raw_base == MAP_FAILED)
		die("mmap %s: %s", path, strerror(errno));
	close(fd);
}

static void usage(void)
{
	fprintf(stderr, "usage: blkbench write|read|fill|create|raw-nt|raw-pmem|raw-btt|raw-store|raw-load"
			" [-t THREADS] [-d DURATION] [-s SIZE] [-b BSIZE] [-P] PATH\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	mode_name = argv[1];
	size_t i;
	for (i = 0; i < sizeof modes / sizeof modes[0]; i++)
		if (strcmp(modes[i].name, mode_name) == 0)
			break;
	if (i == sizeof modes / sizeof modes[0])
		usage();
	mode = modes[i].mode;
	int opt;
	optind = 2;
	while ((opt = getopt(argc, argv, "t:d:s:b:P")) != -1) {
		switch (opt) {
		case 't':
			nthreads = atoi(optarg);
			if (nthreads < 1 || nthreads > 1024)
				die("-t %s: want 1..1024", optarg);
			break;
		case 'd': duration = parse_duration(optarg); break;
		case 's': create_size = parse_size(optarg); break;
		case 'b': bsize = (size_t)parse_size(optarg); break;
		case 'P': prefault = 0; break;
		default: usage();
		}
	}
	if (optind != argc - 1)
		usage();
	path = argv[optind];
	__builtin_cpu_init();
	have_avx2 = __builtin_cpu_supports("avx2");

	int raw = mode >= M_RAW_NT;
	if (raw)
		open_raw();
	else
		open_pool();
	if (mode == M_CREATE) {
		pmemblk_close(pbp);
		return 0;
	}
	size_t unit = raw ? RAW_BLOCK : bsize;
	double pf = 0;
	if (prefault) {
		double t0 = now();
		uint64_t n = prefault_path(path);
		pf = now() - t0;
		if (n == 0)
			fprintf(stderr, "blkbench: warning: no mapping of %s found to prefault\n", path);
	}

	struct worker *ws;
	if (posix_memalign((void **)&ws, 64, sizeof *ws * nthreads) != 0)
		die("out of memory");
	memset(ws, 0, sizeof *ws * nthreads);
	for (int t = 0; t < nthreads; t++) {
		ws[t].idx = t;
		ws[t].rng = splitmix((uint64_t)t + 1) | 1;
		ws[t].lo = nblocks * t / nthreads;
		ws[t].hi = nblocks * (t + 1) / nthreads;
		if (posix_memalign((void **)&ws[t].buf, 64, unit) != 0)
			die("out of memory");
		for (size_t k = 0; k < unit; k++)
			ws[t].buf[k] = (unsigned char)(k * (t + 1) + 0x5a);
	}
	pthread_barrier_init(&start_barrier, NULL, nthreads + 1);
	for (int t = 0; t < nthreads; t++)
		if ((errno = pthread_create(&ws[t].tid, NULL, worker_main, &ws[t])) != 0)
			die("pthread_create: %s", strerror(errno));

	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	double start = now();
	pthread_barrier_wait(&start_barrier);
	if (mode != M_FILL) {
		/* sleep in short steps so that an error stops the run early */
		double end = start + duration;
		for (double t = now(); t < end && !atomic_load(&stop_flag); t = now()) {
			double left = end - t;
			if (left > 0.01)
				left = 0.01;
			struct timespec ts = {(time_t)left, (long)((left - (time_t)left) * 1e9)};
			nanosleep(&ts, NULL);
		}
		atomic_store(&stop_flag, 1);
	}
	uint64_t total = 0;
	int err = 0;
	for (int t = 0; t < nthreads; t++) {
		pthread_join(ws[t].tid, NULL);
		total += ws[t].ops;
		if (ws[t].err && !err)
			err = ws[t].err;
	}
	double el = now() - start;
	getrusage(RUSAGE_SELF, &ru1);
	if (err)
		die("%s: %s", mode_name, strerror(err));
	double ps = total / el;
	printf("op=%s threads=%d ops_per_s=%.0f mb_per_s=%.1f ns_per_op=%.0f\n", mode_name, nthreads, ps,
	       ps * unit / 1e6, el * 1e9 * nthreads / (total ? total : 1));
	fflush(stdout);
	fprintf(stderr, "blkbench: %s: %" PRIu64 " ops in %.3fs, prefault %.3fs, minor faults %ld, major %ld%s%s\n",
		mode_name, total, el, pf, ru1.ru_minflt - ru0.ru_minflt, ru1.ru_majflt - ru0.ru_majflt,
		raw ? ", copy " : "", raw ? (have_avx2 ? "avx2" : "sse2") : "");
	if (pbp)
		pmemblk_close(pbp);
	if (raw_base)
		munmap(raw_base, raw_size);
	return 0;
}
