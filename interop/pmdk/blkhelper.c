//go:build ignore

// The Go tool skips this file (it is not cgo); the tests compile it with gcc.

/*
 * blkhelper: drives Debian's libpmemblk (PMDK 1.12) for nvblk's interop
 * tests. Built by the tests: gcc -O2 -o blkhelper blkhelper.c -lpmemblk
 *
 *   blkhelper create POOL BSIZE SIZE       pmemblk_create; prints "nblock N"
 *   blkhelper info POOL                    prints "bsize B nblock N"
 *   blkhelper write POOL SEED BLOCK...     writes pattern(SEED, BLOCK) to each
 *   blkhelper read POOL FIRST COUNT MODE   MODE: raw (bytes to stdout), hex or
 *                                          sha256 (one line per block:
 *                                          "BLOCK DIGEST" or "BLOCK error EIO")
 *   blkhelper zero POOL BLOCK...           pmemblk_set_zero
 *   blkhelper error POOL BLOCK...          pmemblk_set_error
 *   blkhelper check POOL BSIZE             prints pmemblk_check's result
 *
 * The pattern is xorshift64 seeded from SEED and BLOCK; pattern_test.go
 * computes the same bytes. Exit status: 0 ok, 2 usage, 3 a libpmemblk call
 * failed (its message on stderr).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpmemblk.h>

static void
die(const char *what)
{
	fprintf(stderr, "blkhelper: %s: %s (%s)\n", what, strerror(errno),
		pmemblk_errormsg());
	exit(3);
}

static void
usage(void)
{
	fprintf(stderr, "usage: blkhelper create|info|write|read|zero|error|check POOL ...\n");
	exit(2);
}

static long long
num(const char *s)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 0);
	if (errno || *end || end == s)
		usage();
	return v;
}

static void
pattern(uint8_t *buf, size_t n, uint64_t seed, uint64_t blk)
{
	uint64_t x = (seed * 0x9E3779B97F4A7C15ULL) ^
		((blk + 1) * 0xBF58476D1CE4E5B9ULL);
	x |= 1;
	for (size_t i = 0; i < n; i++) {
		if (i % 8 == 0) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
		}
		buf[i] = (uint8_t)(x >> (8 * (i % 8)));
	}
}

/* SHA-256 (FIPS 180-4), enough for one-shot digests of a block. */
static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b,
	0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
	0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7,
	0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
	0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152,
	0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
	0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
	0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
	0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
	0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void
sha256_block(uint32_t h[8], const uint8_t p[64])
{
	uint32_t w[64];
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
			(uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^
			(w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^
			(w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
	uint32_t e = h[4], f = h[5], g = h[6], hh = h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) +
			((e & f) ^ (~e & g)) + K[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) +
			((a & b) ^ (a & c) ^ (b & c));
		hh = g;
		g = f;
		f = e;
		e = d + t1;
		d = c;
		c = b;
		b = a;
		a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d;
	h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void
sha256_hex(const uint8_t *buf, size_t n, char out[65])
{
	uint32_t h[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	size_t i = 0;
	for (; i + 64 <= n; i += 64)
		sha256_block(h, buf + i);
	uint8_t tail[128];
	size_t rest = n - i;
	memset(tail, 0, sizeof(tail));
	memcpy(tail, buf + i, rest);
	tail[rest] = 0x80;
	size_t tlen = rest + 9 <= 64 ? 64 : 128;
	uint64_t bits = (uint64_t)n * 8;
	for (int k = 0; k < 8; k++)
		tail[tlen - 1 - k] = (uint8_t)(bits >> (8 * k));
	for (size_t k = 0; k < tlen; k += 64)
		sha256_block(h, tail + k);
	for (int k = 0; k < 8; k++)
		sprintf(out + 8 * k, "%08x", h[k]);
}

static PMEMblkpool *
open_pool(const char *path)
{
	PMEMblkpool *pbp = pmemblk_open(path, 0);
	if (pbp == NULL)
		die("pmemblk_open");
	return pbp;
}

int
main(int argc, char *argv[])
{
	if (argc < 3)
		usage();
	const char *cmd = argv[1];
	const char *path = argv[2];

	if (strcmp(cmd, "create") == 0) {
		if (argc != 5)
			usage();
		PMEMblkpool *pbp = pmemblk_create(path, (size_t)num(argv[3]),
			(size_t)num(argv[4]), 0644);
		if (pbp == NULL)
			die("pmemblk_create");
		printf("nblock %zu\n", pmemblk_nblock(pbp));
		pmemblk_close(pbp);
		return 0;
	}
	if (strcmp(cmd, "check") == 0) {
		if (argc != 4)
			usage();
		printf("%d\n", pmemblk_check(path, (size_t)num(argv[3])));
		return 0;
	}

	PMEMblkpool *pbp = open_pool(path);
	size_t bsize = pmemblk_bsize(pbp);
	uint8_t *buf = malloc(bsize);
	if (buf == NULL)
		die("malloc");

	if (strcmp(cmd, "info") == 0) {
		printf("bsize %zu nblock %zu\n", bsize, pmemblk_nblock(pbp));
	} else if (strcmp(cmd, "write") == 0) {
		if (argc < 5)
			usage();
		uint64_t seed = (uint64_t)num(argv[3]);
		for (int i = 4; i < argc; i++) {
			long long blk = num(argv[i]);
			pattern(buf, bsize, seed, (uint64_t)blk);
			if (pmemblk_write(pbp, buf, blk) < 0)
				die("pmemblk_write");
		}
	} else if (strcmp(cmd, "zero") == 0 || strcmp(cmd, "error") == 0) {
		int zero = cmd[0] == 'z';
		for (int i = 3; i < argc; i++) {
			long long blk = num(argv[i]);
			int ret = zero ? pmemblk_set_zero(pbp, blk) :
				pmemblk_set_error(pbp, blk);
			if (ret < 0)
				die(zero ? "pmemblk_set_zero" : "pmemblk_set_error");
		}
	} else if (strcmp(cmd, "read") == 0) {
		if (argc != 6)
			usage();
		long long first = num(argv[3]), count = num(argv[4]);
		const char *mode = argv[5];
		int raw = strcmp(mode, "raw") == 0;
		int hex = strcmp(mode, "hex") == 0;
		if (!raw && !hex && strcmp(mode, "sha256") != 0)
			usage();
		for (long long b = first; b < first + count; b++) {
			if (pmemblk_read(pbp, buf, b) < 0) {
				if (raw)
					die("pmemblk_read");
				printf("%lld error %s\n", b,
					errno == EIO ? "EIO" : strerror(errno));
				continue;
			}
			if (raw) {
				if (fwrite(buf, 1, bsize, stdout) != bsize)
					die("write stdout");
			} else if (hex) {
				printf("%lld ", b);
				for (size_t k = 0; k < bsize; k++)
					printf("%02x", buf[k]);
				printf("\n");
			} else {
				char digest[65];
				sha256_hex(buf, bsize, digest);
				printf("%lld %s\n", b, digest);
			}
		}
	} else {
		usage();
	}
	free(buf);
	pmemblk_close(pbp);
	if (fflush(stdout) != 0)
		die("flush stdout");
	return 0;
}
