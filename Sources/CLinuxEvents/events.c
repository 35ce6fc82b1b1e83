#include "CLinuxEvents.h"

#include <errno.h>
#include <malloc.h>
#include <sys/epoll.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>

int ule_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int ule_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event ev = {.events = events, .data = {.u64 = token}};
    return epoll_ctl(epfd, op, fd, &ev);
}

int ule_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int64_t timeout_ns) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n;
    if (timeout_ns < 0) {
        n = epoll_wait(epfd, evs, max, -1);
    } else {
        // Sub-millisecond waits (the tap's 200 µs journal batching) need epoll_pwait2
        // (Linux 5.11); older kernels round up to epoll_wait's milliseconds.
        struct timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
        n = epoll_pwait2(epfd, evs, max, &ts, NULL);
        if (n < 0 && errno == ENOSYS) n = epoll_wait(epfd, evs, max, (int)((timeout_ns + 999999) / 1000000));
    }
    for (int i = 0; i < n; i++) {
        tokens[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

int ule_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int ule_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

int ule_tune_malloc(int arena_max, int top_pad, int mmap_threshold, int trim_threshold) {
    if (!mallopt(M_ARENA_MAX, arena_max)) return 1;
    if (!mallopt(M_TOP_PAD, top_pad)) return 2;
    if (!mallopt(M_MMAP_THRESHOLD, mmap_threshold)) return 3;
    if (!mallopt(M_TRIM_THRESHOLD, trim_threshold)) return 4;
    return 0;
}
