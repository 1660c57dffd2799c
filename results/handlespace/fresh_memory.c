/* What backing fresh anonymous memory costs on this machine, against writing memory already
 * backed: the part of an unreserved fill that no layout of ours can remove (the handlespace's
 * slot pages are populated with MADV_POPULATE_WRITE, as here).
 *
 *   gcc -O2 results/handlespace/fresh_memory.c -o /tmp/fresh_memory && /tmp/fresh_memory [MiB]
 *
 * Prints, for three fresh mappings of MiB (default 160, about what 1,000,000 PEs hold): the
 * populate call, then two memsets of the same bytes; then one populate with MADV_HUGEPAGE. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static char *fresh(size_t n) {
    char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv) {
    size_t n = (size_t)(argc > 1 ? atoi(argv[1]) : 160) << 20;
    for (int r = 0; r < 3; r++) {
        char *p = fresh(n);
        double t0 = now();
        madvise(p, n, MADV_POPULATE_WRITE);
        double t1 = now();
        memset(p, 1, n);
        double t2 = now();
        memset(p, 2, n);
        double t3 = now();
        printf("%zu MiB: populate %.1f ms (%.2f us a 4 KiB page), memset %.1f ms, again %.1f ms\n", n >> 20,
               (t1 - t0) * 1e3, (t1 - t0) * 1e6 / (double)(n / 4096), (t2 - t1) * 1e3, (t3 - t2) * 1e3);
        munmap(p, n);
    }
    char *p = fresh(n);
    madvise(p, n, MADV_HUGEPAGE);
    double t0 = now();
    madvise(p, n, MADV_POPULATE_WRITE);
    printf("%zu MiB with MADV_HUGEPAGE: populate %.1f ms\n", n >> 20, (now() - t0) * 1e3);
    munmap(p, n);
    return 0;
}
