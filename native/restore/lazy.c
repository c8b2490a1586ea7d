/* The lazy page server (see lazy.h): a thread of tardigrade-restore's outer process. */
#include "../common/jsonesc.h"
#include "lazy.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../common/crc32c.h"
#include "pages-direct.h"

int tg_lazy_child_fd = -1;
static int server_fd = -1;
static const char *progress_path;
static pthread_t server_thread;
static int server_started;
static int slow_ms; /* TARDIGRADE_TEST_LAZY_BLOCK_MS (tests): the background load waits that long before each block */

struct range { uint64_t start, end; };
struct ref { uint64_t addr; uint32_t block, piece; }; /* a piece of the plan, by address */

static struct {
  int uffd;
  uint32_t npacks;
  char **paths;
  int *fds;
  uint64_t nblocks;
  struct tg_dp_block *blocks;
  struct tg_dp_piece *pieces;
  struct ref *refs;
  uint64_t nrefs;
  unsigned char *loaded; /* per block */
  struct range *regs, *removed;
  uint64_t nregs, nremoved, cap_removed;
  uint64_t total, done, faults;
  unsigned char *buf;
  uint64_t t0, last_write;
} s;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void progress(const char *state, const char *error) {
  if (!progress_path) return;
  char tmp[4200], body[2048], esc[1024];
  tg_json_escape(error ? error : "", esc, sizeof esc);
  int n = snprintf(body, sizeof body, "{\"state\":\"%s\",\"loaded\":%llu,\"total\":%llu,\"faults\":%llu,\"ms\":%llu%s%s%s}\n", state,
                   (unsigned long long)s.done, (unsigned long long)s.total, (unsigned long long)s.faults,
                   (unsigned long long)(now_ms() - s.t0), error ? ",\"error\":\"" : "", error ? esc : "", error ? "\"" : "");
  snprintf(tmp, sizeof tmp, "%s.tmp", progress_path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  int ok = write(fd, body, (size_t)n) == n;
  close(fd);
  if (ok) rename(tmp, progress_path);
  s.last_write = now_ms();
}

/* The namespace's init: the outer process's child (the server runs in the outer process, outside the
 * namespace, where its thread takes no pid the application's threads need). */
static void kill_namespace(void) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  for (char *p = buf, *e; *p; p = e) {
    long pid = strtol(p, &e, 10);
    if (e == p) break;
    if (pid > 1) kill((pid_t)pid, SIGKILL); /* the init: the kernel ends every process of its namespace */
  }
}

/* A page the server cannot give: every process of the application ends (its PID namespace goes with
 * its init), with the reason in the progress file. */
static void __attribute__((noreturn)) give_up(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void give_up(const char *fmt, ...) {
  char m[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  kill_namespace();
  progress("failed", m);
  fprintf(stderr, "tardigrade-restore: lazy restore: %s\n", m);
  pthread_exit(NULL);
}

/* The application's memory is gone (it ended): nothing more to load. */
static void __attribute__((noreturn)) gone(void) {
  progress("stopped", "the application ended before its memory was all loaded");
  close(s.uffd);
  pthread_exit(NULL);
}

static int removed(uint64_t a) {
  for (uint64_t i = 0; i < s.nremoved; i++)
    if (a >= s.removed[i].start && a < s.removed[i].end) return 1;
  return 0;
}

/* Copies `n` pages from `src` to `dst`, page by page where some are there already (EEXIST: placed
 * eagerly, or the application freed the range and wrote it since: MADV_DONTNEED, EVENT_REMOVE). */
static void copy_pages(uint64_t dst, const unsigned char *src, uint64_t n, uint64_t block) {
  uint64_t i = 0;
  while (i < n) {
    uint64_t a = dst + i * 4096;
    if (removed(a)) { i++; s.done++; continue; }
    struct uffdio_copy c = {.dst = a, .src = (uint64_t)(src + i * 4096), .len = 4096, .mode = 0, .copy = 0};
    if (ioctl(s.uffd, UFFDIO_COPY, &c) == 0 || errno == EEXIST || errno == ENOENT /* unmapped since */) { i++; s.done++; continue; }
    if (errno == ESRCH) gone();
    if (errno == EAGAIN) continue; /* the mappings changed under the copy: again */
    give_up("placing block %llu of the restore plan at 0x%llx failed: %s", (unsigned long long)block, (unsigned long long)a, strerror(errno));
  }
}

static void load_block(uint64_t i) {
  if (s.loaded[i]) return;
  const struct tg_dp_block *b = &s.blocks[i];
  uint64_t len = (uint64_t)b->npages * 4096, want = TG_DP_BLOCK_HEADER + len, got = 0;
  int fd = s.fds[b->pack];
  while (got < want) {
    ssize_t r = pread(fd, s.buf + got, want - got, (off_t)(b->offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      give_up("reading block %llu (offset %llu) of the store's pack file %s failed: %s", (unsigned long long)i, (unsigned long long)b->offset,
              s.paths[b->pack], r < 0 ? strerror(errno) : "the file ends early");
    got += (uint64_t)r;
  }
  uint32_t hdr[4];
  memcpy(hdr, s.buf, sizeof hdr);
  if (hdr[0] != TG_DP_RAW_MAGIC || hdr[1] != b->npages || hdr[2] != len || tg_crc32c(0, s.buf + TG_DP_BLOCK_HEADER, len) != hdr[3])
    give_up("block %llu (offset %llu) of the store's pack file %s is damaged (bad header or CRC mismatch); `tardigrade verify` lists what it affects",
            (unsigned long long)i, (unsigned long long)b->offset, s.paths[b->pack]);
  for (uint32_t k = 0; k < b->npieces; k++) {
    const struct tg_dp_piece *pc = &s.pieces[b->first_piece + k];
    copy_pages(pc->addr, s.buf + TG_DP_BLOCK_HEADER + (uint64_t)pc->index * 4096, pc->count, i);
  }
  s.loaded[i] = 1;
}

/* The plan piece holding page `a`, as an index into refs, or -1. */
static long find(uint64_t a) {
  uint64_t lo = 0, hi = s.nrefs;
  while (lo < hi) {
    uint64_t mid = (lo + hi) / 2;
    const struct ref *r = &s.refs[mid];
    uint64_t end = r->addr + (uint64_t)s.pieces[r->piece].count * 4096;
    if (end <= a) lo = mid + 1;
    else hi = mid;
  }
  if (lo < s.nrefs && s.refs[lo].addr <= a) return (long)lo;
  return -1;
}

static void serve(const struct uffd_msg *m) {
  switch (m->event) {
  case UFFD_EVENT_PAGEFAULT: {
    uint64_t a = m->arg.pagefault.address & ~4095ull;
    s.faults++;
    long r = find(a);
    if (r >= 0 && !removed(a)) load_block(s.refs[r].block);
    else {
      struct uffdio_zeropage z = {.range = {a, 4096}, .mode = 0};
      if (ioctl(s.uffd, UFFDIO_ZEROPAGE, &z) != 0) {
        if (errno == ESRCH) gone();
        if (errno != EEXIST && errno != ENOENT && errno != EAGAIN)
          give_up("placing a zero page at 0x%llx failed: %s", (unsigned long long)a, strerror(errno));
      }
    }
    /* the page is there now (or was): wake whoever waits for it */
    struct uffdio_range w = {a, 4096};
    ioctl(s.uffd, UFFDIO_WAKE, &w);
    break;
  }
  case UFFD_EVENT_REMOVE: {
    /* MADV_DONTNEED/REMOVE: the application dropped these pages; they read as zeros from now on */
    if (s.nremoved == s.cap_removed) {
      uint64_t cap = s.cap_removed ? s.cap_removed * 2 : 64;
      struct range *n = realloc(s.removed, cap * sizeof *n);
      if (!n) give_up("out of memory");
      s.removed = n;
      s.cap_removed = cap;
    }
    s.removed[s.nremoved++] = (struct range){m->arg.remove.start, m->arg.remove.end};
    break;
  }
  case UFFD_EVENT_FORK:
    close((int)m->arg.fork.ufd);
    give_up("the application forked while its memory was still being loaded (restore --lazy does not follow a child yet); restore it without --lazy");
  case UFFD_EVENT_REMAP:
    give_up("the application moved memory (mremap 0x%llx -> 0x%llx) while it was still being loaded (restore --lazy does not follow it yet); restore it without --lazy",
            (unsigned long long)m->arg.remap.from, (unsigned long long)m->arg.remap.to);
  default:
    break;
  }
}

static int cmp_ref(const void *a, const void *b) {
  uint64_t x = ((const struct ref *)a)->addr, y = ((const struct ref *)b)->addr;
  return x < y ? -1 : x > y;
}

/* The uffd and the registered ranges from the restored process (blob.c, send_uffd). */
static int receive(void) {
  uint64_t n = 0;
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {&n, sizeof n};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  ssize_t r;
  while ((r = recvmsg(server_fd, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {}
  if (r != (ssize_t)sizeof n) return -1; /* the restore failed before: nothing to serve */
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
  memcpy(&s.uffd, CMSG_DATA(c), sizeof(int));
  if (n > (1u << 20)) return -1;
  s.regs = calloc(n + 1, sizeof *s.regs);
  if (!s.regs) return -1;
  size_t want = n * sizeof *s.regs, got = 0;
  while (got < want) {
    r = read(server_fd, (char *)s.regs + got, want - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  s.nregs = n;
  return 0;
}

static void *server_main(void *arg) {
  (void)arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* the init's signals are the init's main thread's */
  s.t0 = now_ms();
  if (receive() != 0) {
    close(server_fd);
    return NULL;
  }
  close(server_fd);
  /* poll() reports an error on a blocking userfaultfd */
  int fl = fcntl(s.uffd, F_GETFL);
  if (fl < 0 || fcntl(s.uffd, F_SETFL, fl | O_NONBLOCK) != 0) give_up("fcntl on the userfaultfd: %s", strerror(errno));
  s.fds = calloc(s.npacks + 1, sizeof *s.fds);
  s.loaded = calloc(s.nblocks + 1, 1);
  s.buf = malloc(TG_DP_BLOCK_HEADER + 256 * 4096);
  if (!s.fds || !s.loaded || !s.buf) give_up("out of memory");
  for (uint32_t i = 0; i < s.npacks; i++) {
    s.fds[i] = open(s.paths[i], O_RDONLY | O_CLOEXEC);
    if (s.fds[i] < 0) give_up("cannot open the store's pack file %s: %s", s.paths[i], strerror(errno));
  }
  progress("loading", NULL);
  uint64_t next = 0;
  for (;;) {
    while (next < s.nblocks && s.loaded[next]) next++;
    struct pollfd pf = {s.uffd, POLLIN, 0};
    int pr = poll(&pf, 1, next < s.nblocks ? slow_ms : 100);
    if (pr < 0 && errno != EINTR) give_up("poll on the userfaultfd: %s", strerror(errno));
    if (pr > 0) {
      struct uffd_msg m[16];
      ssize_t r = read(s.uffd, m, sizeof m);
      if (r < 0 && errno != EAGAIN && errno != EINTR) give_up("reading the userfaultfd: %s", strerror(errno));
      for (ssize_t k = 0; r > 0 && k < r / (ssize_t)sizeof *m; k++) serve(&m[k]);
      if (pf.revents & (POLLERR | POLLHUP)) give_up("the userfaultfd reports an error (poll 0x%x)", (unsigned)pf.revents);
      continue;
    }
    if (next < s.nblocks) {
      load_block(next);
      if (now_ms() - s.last_write >= 100) progress("loading", NULL);
      continue;
    }
    /* everything is in: the mappings go back to normal (a page never stored is a zero page) */
    int left = 0;
    for (uint64_t i = 0; i < s.nregs; i++) {
      struct uffdio_range rg = {s.regs[i].start, s.regs[i].end - s.regs[i].start};
      if (ioctl(s.uffd, UFFDIO_UNREGISTER, &rg) != 0 && errno != ENOMEM && errno != EINVAL) left = 1;
    }
    progress("done", NULL);
    if (!left) break;
    /* some could not be unregistered (moved or replaced since): zero pages for them, for ever */
    for (;;) {
      struct pollfd pf2 = {s.uffd, POLLIN, 0};
      if (poll(&pf2, 1, -1) < 0 && errno != EINTR) break;
      if (pf2.revents & (POLLERR | POLLHUP)) break;
      struct uffd_msg m[16];
      ssize_t r = read(s.uffd, m, sizeof m);
      for (ssize_t k = 0; r > 0 && k < r / (ssize_t)sizeof *m; k++) serve(&m[k]);
    }
    break;
  }
  close(s.uffd);
  for (uint32_t i = 0; i < s.npacks; i++) close(s.fds[i]);
  return NULL;
}

int tg_lazy_in_init(void) {
  if (tg_lazy_child_fd < 0) return 0;
  return prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
}

int tg_lazy_prepare(int base, char *err, size_t errlen) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    snprintf(err, errlen, "socketpair: %s", strerror(errno));
    return -1;
  }
  int hi = fcntl(sv[1], F_DUPFD_CLOEXEC, base);
  if (hi < 0) {
    snprintf(err, errlen, "fcntl(F_DUPFD): %s", strerror(errno));
    close(sv[0]);
    close(sv[1]);
    return -1;
  }
  close(sv[1]);
  server_fd = sv[0];
  tg_lazy_child_fd = hi;
  return hi;
}

int tg_lazy_start(const char *path, char *err, size_t errlen) {
  progress_path = path;
  const char *slow = getenv("TARDIGRADE_TEST_LAZY_BLOCK_MS");
  slow_ms = slow ? atoi(slow) : 0;
  if (tg_direct_plan(0, &s.npacks, &s.paths, &s.nblocks, &s.blocks, &s.pieces) != 0) {
    snprintf(err, errlen, "restore --lazy needs a restore plan (--direct)");
    return -1;
  }
  for (uint64_t i = 0; i < s.nblocks; i++) {
    s.nrefs += s.blocks[i].npieces;
    for (uint32_t k = 0; k < s.blocks[i].npieces; k++) s.total += s.pieces[s.blocks[i].first_piece + k].count;
  }
  s.refs = calloc(s.nrefs + 1, sizeof *s.refs);
  if (!s.refs) { snprintf(err, errlen, "out of memory"); return -1; }
  uint64_t n = 0;
  for (uint64_t i = 0; i < s.nblocks; i++)
    for (uint32_t k = 0; k < s.blocks[i].npieces; k++) s.refs[n++] = (struct ref){s.pieces[s.blocks[i].first_piece + k].addr, (uint32_t)i, s.blocks[i].first_piece + k};
  qsort(s.refs, s.nrefs, sizeof *s.refs, cmp_ref);
  int r = pthread_create(&server_thread, NULL, server_main, NULL);
  if (r != 0) { snprintf(err, errlen, "pthread_create: %s", strerror(r)); return -1; }
  server_started = 1;
  return 0;
}

void tg_lazy_finish(void) {
  if (!server_started) return;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 5;
  pthread_timedjoin_np(server_thread, NULL, &until); /* (timed out: the server's last word stays) */
}
