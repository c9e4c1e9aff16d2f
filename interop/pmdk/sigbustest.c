//go:build ignore

// The Go tool skips this file (it is not cgo); the tests compile it with gcc.

/*
 * sigbustest: a program with its own SIGBUS handler, installed before it
 * loads a libpmemblk with dlopen:
 *
 *   sigbustest LIBRARY DIR
 *
 * creates a pool in DIR, truncates the file under the library's mapping
 * and reads a block, then truncates a mapping of its own and touches it.
 * With nvblk's library the read fails with EIO (the Go runtime installed
 * its handler over the program's when the library was loaded, and handles
 * faults in Go code) and the program's own fault still reaches the
 * program's handler (the runtime forwards faults outside Go code to the
 * handler it found), which prints "own handler" and exits with 7. PMDK's
 * library dies of the first fault in the program's handler instead.
 *
 * Output: "handler after load: own|other", "read RET ERRNO-NAME", then
 * the handler's line. Build: gcc -o sigbustest sigbustest.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void
own_handler(int sig, siginfo_t *si, void *ctx)
{
	(void)sig;
	(void)si;
	(void)ctx;
	static const char line[] = "own handler\n";
	ssize_t w = write(1, line, sizeof(line) - 1);
	(void)w;
	_exit(7);
}

static void *
sym(void *lib, const char *name)
{
	void *p = dlsym(lib, name);
	if (p == NULL) {
		fprintf(stderr, "dlsym %s: %s\n", name, dlerror());
		exit(2);
	}
	return p;
}

int
main(int argc, char *argv[])
{
	if (argc != 3) {
		fprintf(stderr, "usage: sigbustest LIBRARY DIR\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	struct sigaction sa, cur;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = own_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) != 0)
		return 2;

	void *lib = dlopen(argv[1], RTLD_NOW);
	if (lib == NULL) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 2;
	}
	void *(*create)(const char *, size_t, size_t, mode_t) = sym(lib, "pmemblk_create");
	size_t (*nblock)(void *) = sym(lib, "pmemblk_nblock");
	int (*wr)(void *, const void *, long long) = sym(lib, "pmemblk_write");
	int (*rd)(void *, void *, long long) = sym(lib, "pmemblk_read");
	const char *(*errormsg)(void) = sym(lib, "pmemblk_errormsg");

	sigaction(SIGBUS, NULL, &cur);
	printf("handler after load: %s\n", cur.sa_sigaction == own_handler ? "own" : "other");

	char pool[4096], own[4096];
	snprintf(pool, sizeof(pool), "%s/pool", argv[2]);
	snprintf(own, sizeof(own), "%s/own", argv[2]);
	void *pbp = create(pool, 4096, (size_t)32 << 20, 0644);
	if (pbp == NULL) {
		fprintf(stderr, "pmemblk_create: %s\n", errormsg());
		return 2;
	}
	static char buf[4096] = {1};
	long long last = (long long)nblock(pbp) - 1;
	if (wr(pbp, buf, last) != 0 || truncate(pool, 16384) != 0)
		return 2;
	errno = 0;
	int r = rd(pbp, buf, last);
	printf("read %d %s\n", r, r < 0 ? strerrorname_np(errno) : "-");
	if (r < 0)
		fprintf(stderr, "read: %s\n", errormsg());

	int fd = open(own, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, 8192) != 0)
		return 2;
	volatile char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED || ftruncate(fd, 0) != 0)
		return 2;
	m[4096] = 1; /* SIGBUS in the program's own code */
	printf("no fault\n");
	return 0;
}
