/* sysgen: issue file syscalls at a fixed rate on the current CPU, for the
 * throughput-ceiling search in bench/throughput.py.
 *
 *   sysgen MODE RATE SECONDS PATH
 *     MODE    openclose  openat+read+close of PATH (3 syscalls; repeats folded by the probes)
 *             read       read(2) of 1 byte from PATH, one fd (the aggregation-friendly case)
 *     RATE    target syscalls per second; 0 means as fast as possible
 *     SECONDS how long to run
 *
 * Pacing: the loop compares syscalls done with RATE * elapsed and issues a
 * batch of at most 64 iterations when behind, else sleeps 100 us. When the CPU
 * cannot keep up, the achieved rate falls short of the target; the caller sees
 * that in the JSON line printed on stdout at exit.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: sysgen openclose|read RATE SECONDS PATH\n");
		return 2;
	}
	const char *mode = argv[1], *path = argv[4];
	double rate = atof(argv[2]), seconds = atof(argv[3]);
	int per_iter, openclose = strcmp(mode, "openclose") == 0;
	if (!openclose && strcmp(mode, "read") != 0) {
		fprintf(stderr, "sysgen: unknown mode %s (openclose or read)\n", mode);
		return 2;
	}
	per_iter = openclose ? 3 : 1;

	char buf[64];
	int fd = -1;
	if (!openclose && (fd = open(path, O_RDONLY)) < 0) {
		perror(path);
		return 1;
	}

	unsigned long long done = 0, errors = 0;
	double start = now_s(), elapsed = 0;
	struct timespec nap = {0, 100000};
	while ((elapsed = now_s() - start) < seconds) {
		if (rate > 0 && done >= rate * elapsed) {
			nanosleep(&nap, NULL);
			continue;
		}
		for (int i = 0; i < 64; i++) {
			if (openclose) {
				int f = open(path, O_RDONLY);
				if (f < 0) {
					errors++;
					continue;
				}
				if (read(f, buf, sizeof(buf)) < 0)
					errors++;
				close(f);
			} else if (read(fd, buf, 1) != 1) {
				lseek(fd, 0, SEEK_SET); /* EOF: rewind (rare; the file is large) */
			}
			done += per_iter;
		}
	}
	printf("{\"mode\": \"%s\", \"target_rate\": %.0f, \"syscalls\": %llu, \"elapsed_s\": %.6f, "
	       "\"achieved_rate\": %.0f, \"errors\": %llu}\n",
	       mode, rate, done, elapsed, done / elapsed, errors);
	return errors ? 1 : 0;
}
