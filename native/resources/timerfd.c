/* timerfd (FD kind 25): clock, time left, interval, pending expirations and settime flags, made
 * again on restore with the time it had left (the time between checkpoint and restore does not
 * count, as for POSIX timers; the restored app's monotonic clocks go on from the checkpoint) and
 * its unread expirations (TFD_IOC_SET_TICKS). An absolute timer on the wall clock keeps its
 * wall-clock deadline (and TFD_TIMER_CANCEL_ON_SET).
 *
 * The kernel counts an interval timer's expirations lazily: fdinfo's `ticks` says 1 however many
 * intervals went by, until a read or timerfd_gettime forwards the timer. So the capture calls
 * timerfd_gettime first (it forwards, and gives the time left), then reads fdinfo again. */
#include "resource.h"
#include "../common/readfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* linux/timerfd.h's, which cannot be included beside sys/timerfd.h (both define the TFD_ flags) */
#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif
#define NS 1000000000ull

static uint64_t ts_ns(const struct timespec *t) { return (uint64_t)t->tv_sec * NS + (uint64_t)t->tv_nsec; }
static struct timespec ns_ts(uint64_t ns) { return (struct timespec){(time_t)(ns / NS), (long)(ns % NS)}; }
static int realtime(uint32_t c) { return c == CLOCK_REALTIME || c == CLOCK_REALTIME_ALARM; }

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  if (strcmp(p->target, "anon_inode:[timerfd]") != 0) return 1;
  struct itimerspec it;
  if (syscall(SYS_timerfd_gettime, p->fd, &it) != 0) {
    snprintf(err, errlen, "fd %d (timerfd) cannot be checkpointed: timerfd_gettime: %s", p->fd, strerror(errno));
    return -1;
  }
  /* fdinfo again, now that the expirations are counted (static: capture runs parked, no malloc) */
  static char info[1024];
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", p->fd);
  long n = tg_read_file(path, info, sizeof info);
  if (n <= 0) {
    snprintf(err, errlen, "fd %d (timerfd) cannot be checkpointed: %s: %s", p->fd, path, n < 0 ? strerror((int)-n) : "empty");
    return -1;
  }
  const char *clk = tg_res_field(info, "clockid:"), *ticks = tg_res_field(info, "ticks:"),
             *fl = tg_res_field(info, "settime flags:");
  if (!clk || !ticks || !fl || extra_cap < sizeof(struct tg_timerfd)) {
    snprintf(err, errlen, "fd %d (timerfd) cannot be checkpointed: its fdinfo shows no %s", p->fd,
             !clk ? "clockid" : !ticks ? "ticks" : "settime flags");
    return -1;
  }
  struct tg_timerfd t = {(uint32_t)strtoul(clk, NULL, 10), (uint32_t)strtoul(fl, NULL, 8) & 3,
                         strtoull(ticks, NULL, 10), ts_ns(&it.it_value), ts_ns(&it.it_interval)};
  if (t.value_ns && (t.flags & TFD_TIMER_ABSTIME) && realtime(t.clockid)) {
    struct timespec now;
    if (syscall(SYS_clock_gettime, CLOCK_REALTIME, &now) != 0) {
      snprintf(err, errlen, "fd %d (timerfd): clock_gettime: %s", p->fd, strerror(errno));
      return -1;
    }
    t.value_ns += ts_ns(&now);
  } else {
    t.flags &= ~(uint32_t)(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET);
  }
  memcpy(extra, &t, sizeof t);
  rec->kind = TG_FD_TIMERFD;
  rec->extra_len = sizeof t;
  return 0;
}

static int owns(uint32_t k) { return k == TG_FD_TIMERFD; }

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  const struct tg_rec_fd *r = &f->r;
  struct tg_timerfd t;
  if (r->extra_len != sizeof t) {
    snprintf(err, errlen, "fd %u (timerfd): its record holds %u bytes, not %zu", r->fd, r->extra_len, sizeof t);
    return -1;
  }
  memcpy(&t, f->extra, sizeof t);
  int fd = timerfd_create((int)t.clockid, TFD_CLOEXEC | ((r->open_flags & O_NONBLOCK) ? TFD_NONBLOCK : 0));
  if (fd < 0) { snprintf(err, errlen, "fd %u: timerfd_create(clock %u): %s", r->fd, t.clockid, strerror(errno)); return -1; }
  if (t.value_ns) {
    struct itimerspec it = {ns_ts(t.interval_ns), ns_ts(t.value_ns)};
    int flags = (int)(t.flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET));
    if (!(flags & TFD_TIMER_ABSTIME)) flags = 0;
    if (timerfd_settime(fd, flags, &it, NULL) != 0) {
      snprintf(err, errlen, "fd %u: timerfd_settime: %s", r->fd, strerror(errno));
      close(fd);
      return -1;
    }
  }
  if (t.ticks) {
    uint64_t ticks = t.ticks;
    if (ioctl(fd, TFD_IOC_SET_TICKS, &ticks) != 0) {
      snprintf(err, errlen, "fd %u (timerfd): cannot give back its %llu unread expiration(s): TFD_IOC_SET_TICKS: %s (a kernel without CONFIG_CHECKPOINT_RESTORE)",
               r->fd, (unsigned long long)ticks, strerror(errno));
      close(fd);
      return -1;
    }
  }
  rc->tmp[i] = tg_res_high(fd, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

const struct tg_fd_ops tg_fd_timerfd = {.name = "timerfd", .describe = describe, .owns = owns, .open = open_one};
