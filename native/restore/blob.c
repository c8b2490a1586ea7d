/* Stage 2 of a restore: runs from a private copy of this section, placed where the application
 * has nothing, after the restorer has torn down the rest of itself. Maps the application's memory
 * back, refills it from the image, puts the vDSO back, restores mm fields and signal handlers,
 * recreates the threads with their old TIDs and resumes each from its saved signal frame through
 * the agent's trampoline. No libc, no data outside the section, no string constants (compiled
 * with the flags in the Makefile; check-blob.sh enforces it). Failures are reported on the report
 * pipe as "ERR #<step> <errno> <hex value>" (decoded by the init, launcher/init.c). */
#include "blob.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <linux/sched.h>
#include <linux/ioctl.h>
#include <linux/userfaultfd.h>

#include "../common/sys.h"
#include "pages-direct.h"

#define BLOB __attribute__((section("tgblob"), noinline))
#define STEP_MUNMAP 1
#define STEP_VDSO 2
#define STEP_MMAP 3
#define STEP_READ 4
#define STEP_CRC 5
#define STEP_MPROTECT 6
#define STEP_MM 7
#define STEP_SIGACTION 8
#define STEP_THREAD 9
#define STEP_STREAM 10
#define STEP_TIMER 11
#define STEP_ITIMER 12
#define STEP_NAME 13
#define STEP_TRACK 17
#define STEP_LAZY 18
#define STEP_THREAD_ATTRS 19

#define PROT_R 1
#define PROT_W 2
#define MAP_FIXED_NOREPLACE_ 0x100000
#define ARCH_SET_GS_ 0x1001
#define ARCH_SET_FS_ 0x1002
#define ARCH_MAP_VDSO_64_ 0x2003
#define PR_SET_MM_ 35
#define PR_SET_MM_MAP_ 14
#define FUTEX_WAIT_PRIVATE_ 128
#define FUTEX_WAKE_PRIVATE_ 129
#define MS_ASYNC_ 1
#define MADV_POPULATE_WRITE_ 23
#define PR_SET_NAME_ 15
#define O_CLOEXEC_ 02000000
#define O_NONBLOCK_ 04000
#define UFFD_FEATURE_WP_UNPOPULATED_ (1 << 13)
#define UFFD_FEATURE_WP_ASYNC_ (1 << 15)
#define MAP_SHARED_ 0x01
#define PR_TIMER_CREATE_RESTORE_IDS_ 77 /* Linux 6.15: timer_create takes the wanted id in *created_timer_id */

BLOB static uint32_t crc32c(uint32_t crc, const void *buf, uint64_t len) {
  const unsigned char *p = buf;
  uint64_t c = (uint32_t)~crc;
  while (len && ((uintptr_t)p & 7)) { __asm__("crc32b %1, %k0" : "+r"(c) : "rm"(*p)); p++; len--; }
  while (len >= 8) { __asm__("crc32q %1, %0" : "+r"(c) : "rm"(*(const uint64_t *)p)); p += 8; len -= 8; }
  while (len--) { __asm__("crc32b %1, %k0" : "+r"(c) : "rm"(*p)); p++; }
  return ~(uint32_t)c;
}

BLOB static int read_full(int fd, void *buf, uint64_t len) {
  uint64_t got = 0;
  while (got < len) {
    long r = tg_sys3(SYS_read, fd, (char *)buf + got, len - got);
    if (r == -4 /* EINTR */) continue;
    if (r <= 0) return -1;
    got += (uint64_t)r;
  }
  return 0;
}

BLOB static int put_num(char *b, int n, uint64_t v, int base) {
  char t[24];
  int k = 0;
  do { int d = (int)(v % (uint64_t)base); t[k++] = (char)(d < 10 ? '0' + d : 'a' + d - 10); v /= (uint64_t)base; } while (v);
  while (k) b[n++] = t[--k];
  return n;
}

__attribute__((noreturn)) BLOB static void fail(struct blob_plan *p, int step, long err, uint64_t val) {
  char b[96];
  int n = 0;
  b[n++] = 'E'; b[n++] = 'R'; b[n++] = 'R'; b[n++] = ' '; b[n++] = '#';
  n = put_num(b, n, (uint64_t)step, 10);
  b[n++] = ' ';
  n = put_num(b, n, (uint64_t)(err < 0 ? -err : err), 10);
  b[n++] = ' ';
  n = put_num(b, n, val, 16);
  b[n++] = '\n';
  tg_sys3(SYS_write, p->report_fd, b, n);
  tg_sys1(SYS_exit_group, 100 + step);
  for (;;) {}
}

#include "creds-blob.h"

/* long clone3_thread(struct clone_args *a, size_t size, void (*fn)(struct blob_thread *), struct blob_thread *t)
 * The child starts on its new stack and calls fn(t); it never returns. */
long blob_clone3(void *args, uint64_t size, void (*fn)(struct blob_thread *), struct blob_thread *t);
__asm__(".pushsection tgblob,\"ax\",@progbits\n"
        ".type blob_clone3, @function\n"
        "blob_clone3:\n"
        "  movq %rdx, %r8\n"
        "  movq %rcx, %r9\n"
        "  movl $435, %eax\n" /* SYS_clone3 */
        "  syscall\n"
        "  testq %rax, %rax\n"
        "  jnz 1f\n"
        "  movq %r9, %rdi\n"
        "  xorl %ebp, %ebp\n"
        "  callq *%r8\n"
        "  ud2\n"
        "1: ret\n"
        ".size blob_clone3, .-blob_clone3\n"
        ".popsection\n");

/* The thread's own attributes (THREAD_ATTRS): the process's were set by stage 1 and inherited; the
 * affinity was checked against this host there (cpus_len 0: run on every CPU, said as a warning). */
BLOB static void set_thread_attrs(struct blob_plan *p, struct blob_thread *t) {
  const struct tg_rec_thread_attrs *a = &t->attrs;
  long r;
  if (a->cpus_len) tg_sys3(SYS_sched_setaffinity, 0, a->cpus_len, a->cpus); /* (checked by stage 1) */
  r = tg_sys3(SYS_setpriority, 0 /* PRIO_PROCESS */, 0, a->nice);
  if (r < 0) fail(p, STEP_THREAD_ATTRS, r, t->tid);
  /* always: the thread inherited the process's policy (stage 1), its own may be another */
  int32_t prio = (int32_t)a->sched_priority;
  r = tg_sys3(SYS_sched_setscheduler, 0, (long)a->sched_policy | (a->sched_flags & 1 ? 0x40000000L /* SCHED_RESET_ON_FORK */ : 0), &prio);
  if (r < 0) fail(p, STEP_THREAD_ATTRS, r, t->tid);
  if (a->timerslack_ns) {
    r = tg_sys2(SYS_prctl, 29 /* PR_SET_TIMERSLACK */, a->timerslack_ns);
    if (r < 0) fail(p, STEP_THREAD_ATTRS, r, t->tid);
  }
}

__attribute__((noreturn)) BLOB static void finish_thread(struct blob_thread *t) {
  struct blob_plan *p = (struct blob_plan *)t->plan;
  struct tg_restart_info *ri = (struct tg_restart_info *)p->restart_info_addr;
  tg_sys2(SYS_arch_prctl, ARCH_SET_FS_, t->fs);
  if (t->gs) tg_sys2(SYS_arch_prctl, ARCH_SET_GS_, t->gs);
  tg_sys1(SYS_set_tid_address, t->ctid);
  if (t->robust_head) tg_sys2(SYS_set_robust_list, t->robust_head, t->robust_len);
  /* glibc's rseq area: if registration fails, glibc falls back to syscalls for what it needs */
  if (t->rseq_addr) tg_sys4(SYS_rseq, t->rseq_addr, t->rseq_len, 0, t->rseq_sig);
  for (int s = 1; s <= 64; s++)
    if (t->sigpending & (1ull << (s - 1))) tg_sys3(SYS_tgkill, p->pid, t->tid, s);
  if (t->comm[0]) {
    long r = tg_sys2(SYS_prctl, PR_SET_NAME_, t->comm);
    if (r < 0) fail(p, STEP_NAME, r, t->tid);
  }
  if (t->attrs.tid) set_thread_attrs(p, t);
  if (!t->is_main) thread_creds(p);
  while (!__atomic_load_n(&p->go, __ATOMIC_SEQ_CST)) tg_sys4(SYS_futex, &p->go, FUTEX_WAIT_PRIVATE_, 0, 0);
  void (*tramp)(uint64_t, volatile int32_t *) = (void (*)(uint64_t, volatile int32_t *))p->trampoline_addr;
  tramp(t->uc, &ri->pending);
  for (;;) {}
}

/* POSIX timers with their old ids (PR_TIMER_CREATE_RESTORE_IDS), then armed with the time they had
 * left at the checkpoint; interval timers likewise. Runs once every thread exists (a timer may
 * signal one thread) and before any of them runs application code; all signals are blocked until
 * each thread's saved mask comes back, so a timer that fires now leaves its signal pending. */
BLOB static void restore_timers(struct blob_plan *p) {
  long r;
  if (p->ntimers) {
    r = tg_sys5(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS_, 1, 0, 0, 0);
    if (r < 0) fail(p, STEP_TIMER, r, 0);
  }
  for (uint64_t i = 0; i < p->ntimers; i++) {
    struct tg_timer *t = &p->timers[i];
    /* the kernel's struct sigevent: value, signo, notify, then the target TID in a 48-byte union */
    struct { uint64_t value; int32_t signo, notify, tid, pad[11]; } sev;
    uint64_t *w = (uint64_t *)&sev;
    for (uint64_t k = 0; k < sizeof sev / 8; k++) w[k] = 0;
    sev.value = t->sigval;
    sev.signo = (int32_t)t->signo;
    sev.notify = (int32_t)t->notify;
    sev.tid = (int32_t)t->tid;
    int32_t id = t->id;
    r = tg_sys3(SYS_timer_create, t->clock, &sev, &id);
    if (r < 0) fail(p, STEP_TIMER, r, (uint64_t)(uint32_t)t->id);
    if (id != t->id) fail(p, STEP_TIMER, 0, (uint64_t)(uint32_t)t->id);
  }
  if (p->ntimers) {
    r = tg_sys5(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS_, 0, 0, 0, 0);
    if (r < 0) fail(p, STEP_TIMER, r, 0);
  }
  for (uint64_t i = 0; i < p->ntimers; i++) {
    struct tg_timer *t = &p->timers[i];
    if (!t->value_ns) continue;
    int64_t its[4] = {(int64_t)(t->interval_ns / 1000000000ull), (int64_t)(t->interval_ns % 1000000000ull),
                      (int64_t)(t->value_ns / 1000000000ull), (int64_t)(t->value_ns % 1000000000ull)};
    r = tg_sys4(SYS_timer_settime, t->id, 0, its, 0);
    if (r < 0) fail(p, STEP_TIMER, r, (uint64_t)(uint32_t)t->id);
  }
  for (int k = 0; k < TG_NITIMERS; k++) {
    struct tg_itimer *it = &p->itimers[k];
    if (!it->value_ns) continue;
    int64_t itv[4] = {(int64_t)(it->interval_ns / 1000000000ull), (int64_t)(it->interval_ns % 1000000000ull / 1000),
                      (int64_t)(it->value_ns / 1000000000ull), (int64_t)(it->value_ns % 1000000000ull / 1000)};
    if (itv[2] == 0 && itv[3] == 0) itv[3] = 1;
    r = tg_sys3(SYS_setitimer, k, itv, 0);
    if (r < 0) fail(p, STEP_ITIMER, r, (uint64_t)k);
  }
}

/* Dirty-page tracking on the restored memory (docs/engine.md, "Checkpoints after a restore"): every
 * private mapping the application can write is registered with a fresh userfaultfd in write-protect
 * async mode and protected, now that its pages are in and before anything else writes to it (the
 * threads do not exist yet). The agent adopts the uffd (track.c): the image restored is its base.
 * Anything that fails leaves the mapping unregistered, which the agent's scan reports (EPERM) and
 * captures whole; a mapping registered but not protected would be a silently wrong incremental,
 * so that ends the restore. */
BLOB static void arm_tracking(struct blob_plan *p, struct tg_restart_info *ri) {
  ri->track_uffd = -1;
  ri->track_regions = 0;
  long fd = tg_sys1(SYS_userfaultfd, O_CLOEXEC_ | O_NONBLOCK_);
  if (fd < 0) return; /* no userfaultfd here: the next checkpoint is full */
  struct uffdio_api api;
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_WP_ASYNC_ | UFFD_FEATURE_WP_UNPOPULATED_;
  api.ioctls = 0;
  if (tg_sys3(SYS_ioctl, fd, UFFDIO_API, &api) < 0) { tg_sys1(SYS_close, fd); return; }
  uint32_t n = 0;
  for (uint64_t i = 0; i < p->nvmas; i++) {
    struct blob_vma *v = &p->vmas[i];
    if ((v->mflags & MAP_SHARED_) || v->prot == 0) continue; /* as the agent's trackable() */
    struct uffdio_register reg;
    reg.range.start = v->start;
    reg.range.len = v->end - v->start;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    reg.ioctls = 0;
    if (tg_sys3(SYS_ioctl, fd, UFFDIO_REGISTER, &reg) < 0) continue;
    struct uffdio_writeprotect wp;
    wp.range.start = v->start;
    wp.range.len = v->end - v->start;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    long r = tg_sys3(SYS_ioctl, fd, UFFDIO_WRITEPROTECT, &wp);
    if (r < 0) {
      struct uffdio_range un;
      un.start = v->start;
      un.len = v->end - v->start;
      long u = tg_sys3(SYS_ioctl, fd, UFFDIO_UNREGISTER, &un);
      if (u < 0) fail(p, STEP_TRACK, u, v->start);
      continue;
    }
    n++;
  }
  ri->track_regions = n;
  ri->track_uffd = (int32_t)fd;
}

/* restore --lazy: the uffd (SCM_RIGHTS) and the registered ranges to the page server (lazy.c). */
BLOB static void send_uffd(struct blob_plan *p) {
  uint64_t *buf = (uint64_t *)((struct tg_dp_blob *)p->direct)->scratch;
  uint64_t n = 0;
  for (uint64_t i = 0; i < p->nvmas && 2 * n + 3 < (256 * 4096) / 8; i++)
    if (p->vmas[i].opened & 2) {
      buf[1 + 2 * n] = p->vmas[i].start;
      buf[2 + 2 * n] = p->vmas[i].end;
      n++;
    }
  buf[0] = n;
  struct { uint64_t len; int32_t level, type; int32_t fd, pad; } cm;
  cm.len = 20; /* CMSG_LEN(sizeof(int)) */
  cm.level = 1; /* SOL_SOCKET */
  cm.type = 1;  /* SCM_RIGHTS */
  cm.fd = p->lazy_uffd;
  cm.pad = 0;
  struct { uint64_t base, len; } iov;
  iov.base = (uint64_t)buf;
  iov.len = 8;
  struct { uint64_t name; uint32_t namelen, pad0; uint64_t iov, iovlen, control, controllen; uint32_t flags, pad1; } mh;
  mh.name = 0;
  mh.namelen = 0;
  mh.pad0 = 0;
  mh.iov = (uint64_t)&iov;
  mh.iovlen = 1;
  mh.control = (uint64_t)&cm;
  mh.controllen = 24; /* CMSG_SPACE(sizeof(int)) */
  mh.flags = 0;
  mh.pad1 = 0;
  long r;
  while ((r = tg_sys3(SYS_sendmsg, p->lazy_sock, &mh, 0)) == -4) {}
  if (r != 8) fail(p, STEP_LAZY, r, 0);
  const char *rest = (const char *)(buf + 1);
  uint64_t left = n * 16;
  while (left) {
    r = tg_sys3(SYS_write, p->lazy_sock, rest, left);
    if (r == -4) continue;
    if (r <= 0) fail(p, STEP_LAZY, r, left);
    rest += r;
    left -= (uint64_t)r;
  }
  tg_sys1(SYS_close, p->lazy_sock);
  tg_sys1(SYS_close, p->lazy_uffd);
  p->lazy_sock = p->lazy_uffd = -1;
}

BLOB void tg_blob_main(struct blob_plan *p) {
  long r;
  for (uint64_t i = 0; i < p->nunmap; i++) {
    r = tg_sys2(SYS_munmap, p->unmap[i].start, p->unmap[i].end - p->unmap[i].start);
    if (r < 0) fail(p, STEP_MUNMAP, r, p->unmap[i].start);
  }
  if (p->vvar_addr) {
    r = tg_sys2(SYS_arch_prctl, ARCH_MAP_VDSO_64_, p->vvar_addr);
    if (r < 0) fail(p, STEP_VDSO, r, p->vvar_addr);
    r = tg_sys3(SYS_msync, p->vdso_addr, 4096, MS_ASYNC_);
    if (r < 0) fail(p, STEP_VDSO, r, p->vdso_addr);
  }
  for (uint64_t i = 0; i < p->nvmas; i++) {
    struct blob_vma *v = &p->vmas[i];
    if (v->shmid >= 0) {
      /* a System V segment: attached read-write where it was (fails on any mapping there, as
       * MAP_FIXED_NOREPLACE does), then given its protection; the refill below opens it again */
      r = tg_sys3(SYS_shmat, v->shmid, v->start, 0);
      if (r != (long)v->start) fail(p, STEP_MMAP, r, v->start);
      if ((v->prot & (PROT_R | PROT_W)) != (PROT_R | PROT_W) || (v->prot & ~(uint32_t)(PROT_R | PROT_W))) {
        r = tg_sys3(SYS_mprotect, v->start, v->end - v->start, v->prot);
        if (r < 0) fail(p, STEP_MPROTECT, r, v->start);
      }
      continue;
    }
    r = tg_sys6l(SYS_mmap, v->start, v->end - v->start, v->prot, v->mflags | MAP_FIXED_NOREPLACE_, v->fd, v->pgoff);
    if (r != (long)v->start) fail(p, STEP_MMAP, r, v->start);
    /* a file's shared mapping whose contents the image holds: zeros first (zero pages are not stored) */
    for (volatile uint64_t *z = (volatile uint64_t *)v->start; (uint64_t)z < v->start + v->zero_len; z++) *z = 0;
  }
  if (p->direct_fn) ((void (*)(struct blob_plan *))p->direct_fn)(p); /* stored blocks first (pages-direct-blob.c) */
  /* page data, read straight into place record by record (the image may be a stream) */
  struct tg_rec_header h = p->next_hdr;
  uint64_t off = p->next_off, nrec = p->nrec;
  int populate = 1;
  for (int first = 1;; first = 0) {
    if (!first) {
      if (read_full(p->img_fd, &h, sizeof h) != 0) fail(p, STEP_STREAM, 0, off);
      if (crc32c(0, &h, 28) != h.header_crc) fail(p, STEP_STREAM, 0, off);
    }
    if (h.type == TG_REC_END) {
      struct tg_rec_end e;
      if (h.payload_len != sizeof e || read_full(p->img_fd, &e, sizeof e) != 0) fail(p, STEP_STREAM, 0, off);
      if (crc32c(0, &e, sizeof e) != h.payload_crc) fail(p, STEP_CRC, 0, off);
      if (e.record_count != nrec || e.file_size != off + sizeof h + sizeof e) fail(p, STEP_STREAM, 0, off);
      break;
    }
    uint64_t ph[2];
    if (h.type != TG_REC_PAGES || h.payload_len < sizeof ph || read_full(p->img_fd, ph, sizeof ph) != 0) fail(p, STEP_STREAM, 0, off);
    uint64_t len = ph[1] * TG_PAGE;
    if (ph[1] == 0 || ph[1] > TG_PAGES_PER_RECORD || (ph[0] & (TG_PAGE - 1)) || h.payload_len != sizeof ph + len)
      fail(p, STEP_STREAM, 0, off);
    /* the pages must lie inside one mapping we are filling: never write anywhere else */
    uint64_t lo = 0, hi = p->nvmas;
    while (lo < hi) {
      uint64_t mid = (lo + hi) / 2;
      if (p->vmas[mid].end <= ph[0]) lo = mid + 1;
      else hi = mid;
    }
    if (lo >= p->nvmas || p->vmas[lo].start > ph[0] || p->vmas[lo].end < ph[0] + len || !p->vmas[lo].fill)
      fail(p, STEP_STREAM, 0, off);
    struct blob_vma *v = &p->vmas[lo];
    if (!v->opened && (v->prot & (PROT_R | PROT_W)) != (PROT_R | PROT_W)) {
      /* made writable for the refill only; protected again below */
      r = tg_sys3(SYS_mprotect, v->start, v->end - v->start, v->prot | PROT_R | PROT_W);
      if (r < 0) fail(p, STEP_MPROTECT, r, v->start);
      v->opened = 1;
    }
    if (p->lazy_uffd >= 0 && (v->opened & 2)) {
      /* restore --lazy: this mapping is registered for missing pages: placed with UFFDIO_COPY */
      unsigned char *sc = ((struct tg_dp_blob *)p->direct)->scratch;
      if (read_full(p->img_fd, sc, len) != 0) fail(p, STEP_READ, 0, off);
      uint32_t c = crc32c(0, ph, sizeof ph);
      c = crc32c(c, sc, len);
      if (c != h.payload_crc) fail(p, STEP_CRC, 0, off);
      for (uint64_t done = 0; done < len;) {
        struct uffdio_copy uc;
        uc.dst = ph[0] + done;
        uc.src = (uint64_t)sc + done;
        uc.len = len - done;
        uc.mode = 0;
        uc.copy = 0;
        r = tg_sys3(SYS_ioctl, p->lazy_uffd, UFFDIO_COPY, &uc);
        if (uc.copy > 0) done += (uint64_t)uc.copy;
        else if (r < 0 && r != -11) fail(p, STEP_READ, r, ph[0] + done);
        else if (r == 0) fail(p, STEP_READ, 5, ph[0] + done);
      }
      off += sizeof h + sizeof ph + len;
      nrec++;
      continue;
    }
    /* fault the record's pages in with one call (MADV_POPULATE_WRITE, Linux 5.14+) rather than one
     * fault per page inside read(): ~15-30% faster here. EINVAL: an older kernel, read faults them. */
    if (populate) {
      r = tg_sys3(SYS_madvise, ph[0], len, MADV_POPULATE_WRITE_);
      if (r == -22) populate = 0;
      else if (r < 0) fail(p, STEP_READ, r, ph[0]);
    }
    if (read_full(p->img_fd, (void *)ph[0], len) != 0) fail(p, STEP_READ, 0, off);
    uint32_t c = crc32c(0, ph, sizeof ph);
    c = crc32c(c, (const void *)ph[0], len);
    if (c != h.payload_crc) fail(p, STEP_CRC, 0, off);
    off += sizeof h + sizeof ph + len;
    nrec++;
  }
  for (uint64_t i = 0; i < p->nvmas; i++) {
    struct blob_vma *v = &p->vmas[i];
    if (!v->opened) continue;
    r = tg_sys3(SYS_mprotect, v->start, v->end - v->start, v->prot);
    if (r < 0) fail(p, STEP_MPROTECT, r, v->start);
  }
  if (p->lazy_uffd >= 0) {
    /* restore --lazy: from here on the page server answers the faults (the blob's own too) */
    send_uffd(p);
    p->track = 0; /* (a lazy restore's first checkpoint is full: docs/engine.md) */
  }
  if (p->track) arm_tracking(p, (struct tg_restart_info *)p->restart_info_addr);
  p->mm.auxv = (uint64_t)p->auxv;
  r = tg_sys5(SYS_prctl, PR_SET_MM_, PR_SET_MM_MAP_, &p->mm, sizeof p->mm, 0);
  if (r < 0 && (int32_t)p->mm.exe_fd >= 0) {
    p->mm.exe_fd = (uint32_t)-1; /* keep going without /proc/PID/exe pointing at the app */
    r = tg_sys5(SYS_prctl, PR_SET_MM_, PR_SET_MM_MAP_, &p->mm, sizeof p->mm, 0);
  }
  if (r < 0) fail(p, STEP_MM, r, p->mm.start_brk);
  for (int s = 1; s <= 64; s++) {
    if (s == 9 || s == 19) continue;
    r = tg_sys4(SYS_rt_sigaction, s, &p->sigs[s - 1], 0, 8);
    if (r < 0) fail(p, STEP_SIGACTION, r, (uint64_t)s);
  }
  struct tg_restart_info *ri = (struct tg_restart_info *)p->restart_info_addr;
  ri->restored++;
  ri->pending = (int32_t)p->nthreads;
  ri->blob_addr = p->blob_addr;
  ri->blob_len = p->blob_len;
  for (int i = 0; i < 108; i++) ri->sock_path[i] = p->sock_path[i];
  for (int i = 0; i < 108; i++) ri->sock_base[i] = p->sock_base[i];
  struct blob_thread *main_thread = 0;
  for (uint64_t i = 0; i < p->nthreads; i++) {
    struct blob_thread *t = &p->threads[i];
    t->plan = (uint64_t)p;
    if (t->is_main) { main_thread = t; continue; }
    struct clone_args a;
    uint64_t *aw = (uint64_t *)&a;
    for (uint64_t k = 0; k < sizeof a / 8; k++) aw[k] = 0;
    int32_t tid = (int32_t)t->tid;
    a.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    a.stack = t->stack_top - 16384;
    a.stack_size = 16384;
    a.set_tid = (uint64_t)&tid;
    a.set_tid_size = 1;
    r = blob_clone3(&a, sizeof a, finish_thread, t);
    if (r != tid) fail(p, STEP_THREAD, r, (uint64_t)t->tid);
  }
  if (!main_thread) fail(p, STEP_THREAD, 3, 0);
  restore_timers(p);
  for (int s = 1; s <= 64; s++)
    if (p->shared_sigpending & (1ull << (s - 1))) tg_sys2(SYS_kill, p->pid, s);
  process_creds(p); /* last: everything above may need privilege */
  volatile char ok[3];
  ok[0] = 'O'; ok[1] = 'K'; ok[2] = '\n';
  tg_sys3(SYS_write, p->report_fd, (const char *)ok, 3);
  if (p->go_fd >= 0) {
    /* the init says go once every process of the tree is restored: none runs before */
    volatile char c[1];
    long g;
    while ((g = tg_sys3(SYS_read, p->go_fd, (char *)c, 1)) == -4 /* EINTR */) {}
    if (g != 1) tg_sys1(SYS_exit_group, 107); /* the init gave up on the restore */
  }
  {
    /* the restorer's fds go; the tracking uffd stays (the agent adopts it) */
    int32_t keep = p->track ? ((struct tg_restart_info *)p->restart_info_addr)->track_uffd : -1;
    if (keep >= p->fd_floor) {
      if (keep > p->fd_floor) tg_sys3(SYS_close_range, p->fd_floor, (uint64_t)keep - 1, 0);
      tg_sys3(SYS_close_range, (uint64_t)keep + 1, ~0U, 0);
    } else {
      tg_sys3(SYS_close_range, p->fd_floor, ~0U, 0);
    }
  }
  /* closing those may have dropped POSIX locks stage 1 took back (a process's POSIX locks on a
   * file go with its first close of any fd of it): taken again, as the same owner, before the
   * application runs. Stage 1 found them free a moment ago; should another process have taken
   * one since, the process ends rather than run without it. */
  for (uint64_t i = 0; i < p->nlocks; i++) {
    const struct tg_lock *k = &p->locks[i];
    struct { int16_t type, whence; int64_t start, len; int32_t pid, pad; } fl = {
        k->type == TG_LOCK_WRITE ? 1 /* F_WRLCK */ : 0 /* F_RDLCK */, 0, (int64_t)k->start, k->end == ~0ULL ? 0 : (int64_t)(k->end - k->start + 1), 0, 0};
    if (tg_sys3(SYS_fcntl, k->fd, 6 /* F_SETLK */, &fl) != 0) tg_sys1(SYS_exit_group, 109);
  }
  __atomic_store_n(&p->go, 1, __ATOMIC_SEQ_CST);
  tg_sys3(SYS_futex, &p->go, FUTEX_WAKE_PRIVATE_, 1 << 30);
  finish_thread(main_thread);
}
