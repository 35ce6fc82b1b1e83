#include "CLinuxEvents.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

int ule_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int ule_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event ev = {.events = events, .data = {.u64 = token}};
    return epoll_ctl(epfd, op, fd, &ev);
}

int ule_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        tokens[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

int ule_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
