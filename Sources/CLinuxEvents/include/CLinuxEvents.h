#ifndef CLINUXEVENTS_H
#define CLINUXEVENTS_H

// epoll, eventfd, prctl and mallopt, which Swift's Glibc module does not export or cannot call. The wrappers take and return
// plain integers because `struct epoll_event` is packed on x86-64, a layout Swift code should
// not have to reason about.

#include <stdint.h>

int ule_epoll_create(void);
int ule_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
/// timeout_ns < 0 waits until an event.
int ule_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max, int64_t timeout_ns);
int ule_eventfd(void);
/// Names the calling thread for the kernel (prctl PR_SET_NAME, truncated to 15 bytes):
/// prctl is variadic, so Swift cannot call it.
int ule_set_thread_name(const char *name);
/// mallopt(M_ARENA_MAX, M_TOP_PAD, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) in that order: 0 when
/// glibc took all four, else the 1-based position of the first it refused.
int ule_tune_malloc(int arena_max, int top_pad, int mmap_threshold, int trim_threshold);

enum {
    ULE_EPOLLIN = 0x001,
    ULE_EPOLLOUT = 0x004,
    ULE_EPOLLERR = 0x008,
    ULE_EPOLLHUP = 0x010,
    ULE_EPOLLRDHUP = 0x2000,
    ULE_CTL_ADD = 1,
    ULE_CTL_DEL = 2,
    ULE_CTL_MOD = 3,
};

#endif
