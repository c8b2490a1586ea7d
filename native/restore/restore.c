/* tardigrade-restore: rebuilds a process from a raw image (docs/format.md) in a fresh PID namespace
 * (docs/native-interface.md).
 *
 * The outer process loads and checks the image and every file it refers to before anything is
 * created. The init (launcher/init.c) then creates the process with its old PID (clone3 set_tid),
 * which runs stage 1 here: fds, cwd, umask, rlimits, session; then it copies the blob (blob.c) to
 * a spot where the application has nothing, with the plan, and jumps to it (stage 2). */
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../launcher/launcher.h"
#include "blob.h"
#include "pages-direct.h"
#include "restore.h"

extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

static struct image img;
static int report_fd = -1;

struct mapfile { const char *path; struct tg_file_id id; int fd; int rw; };
static struct mapfile *mapfiles;
static size_t nmapfiles;
static int exe_fd = -1;

static void report_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void report_fail(const char *fmt, ...) {
  char m[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  if (report_fd >= 0) dprintf(report_fd, "ERR %s\n", m);
  else fprintf(stderr, "tardigrade-restore: %s\n", m);
  _exit(2);
}

/* Opens every file the image maps, once per file, and checks it is the same file. */
static int open_mapped_files(char *err, size_t errlen) {
  mapfiles = calloc(img.nvmas + 1, sizeof *mapfiles);
  if (!mapfiles) { snprintf(err, errlen, "out of memory"); return -1; }
  for (size_t i = 0; i < img.nvmas; i++) {
    struct tg_rec_vma *v = &img.vmas[i].r;
    if (v->kind != TG_VMA_FILE_PRIVATE && v->kind != TG_VMA_FILE_SHARED) continue;
    int rw = v->kind == TG_VMA_FILE_SHARED && (v->prot & PROT_WRITE);
    size_t k;
    for (k = 0; k < nmapfiles; k++) if (mapfiles[k].id.ino == v->id.ino && mapfiles[k].id.dev == v->id.dev && mapfiles[k].rw == rw) break;
    if (k < nmapfiles) continue;
    if (v->vflags & TG_VF_CONTENT) {
      /* contents in the image: written back into the same file, else restored as shared memory */
      int fd = open(img.vmas[i].path, O_RDWR | O_CLOEXEC);
      if (!tg_content_file_usable(&img, v, fd)) {
        if (fd >= 0) close(fd);
        for (size_t j = i; j < img.nvmas; j++)
          if (img.vmas[j].r.kind == TG_VMA_FILE_SHARED && img.vmas[j].r.id.ino == v->id.ino && img.vmas[j].r.id.dev == v->id.dev)
            img.vmas[j].r.kind = TG_VMA_ANON_SHARED;
        continue;
      }
      mapfiles[nmapfiles++] = (struct mapfile){img.vmas[i].path, v->id, fd, rw};
      continue;
    }
    int fd = open(img.vmas[i].path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) { snprintf(err, errlen, "cannot open %s, mapped by the application: %s", img.vmas[i].path, strerror(errno)); return -1; }
    /* same size and mtime: the same file, also on another host with the same packages (inode numbers
     * differ between hosts, so they are not compared) */
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != v->id.size ||
        (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec != v->id.mtime_ns) {
      snprintf(err, errlen,
               "%s changed since the checkpoint (mapped by the application; size or mtime differ): "
               "restore needs the same file",
               img.vmas[i].path);
      close(fd);
      return -1;
    }
    mapfiles[nmapfiles++] = (struct mapfile){img.vmas[i].path, v->id, fd, rw};
  }
  if (img.exe) {
    exe_fd = open(img.exe, O_RDONLY | O_CLOEXEC);
    if (exe_fd >= 0) {
      struct stat st;
      if (fstat(exe_fd, &st) != 0 || st.st_ino != img.exe_id.ino || st.st_dev != img.exe_id.dev) { close(exe_fd); exe_fd = -1; }
    }
  }
  return 0;
}

static int mapfile_fd(const struct tg_rec_vma *v) {
  int rw = v->kind == TG_VMA_FILE_SHARED && (v->prot & PROT_WRITE);
  for (size_t k = 0; k < nmapfiles; k++)
    if (mapfiles[k].id.ino == v->id.ino && mapfiles[k].id.dev == v->id.dev && mapfiles[k].rw == rw) return mapfiles[k].fd;
  return -1;
}

static int overlaps_app(uint64_t s, uint64_t e) {
  for (size_t i = 0; i < img.nvmas; i++)
    if (s < img.vmas[i].r.end && img.vmas[i].r.start < e) return 1;
  return 0;
}

static void *place_blob(size_t len) {
  for (uint64_t a = 0x10000000000ull; a < 0x7f0000000000ull; a += 0x1000000000ull) {
    if (overlaps_app(a, a + len)) continue;
    void *p = mmap((void *)a, len, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == (void *)a) return p;
    if (p != MAP_FAILED) munmap(p, len);
  }
  return NULL;
}

/* The restorer's own mappings, all of which go (but the blob and [vsyscall]). */
static size_t own_mappings(struct blob_range *out, size_t cap, uint64_t keep_s, uint64_t keep_e) {
  FILE *f = fopen("/proc/self/maps", "re");
  if (!f) report_fail("cannot read /proc/self/maps: %s", strerror(errno));
  char line[4096];
  size_t n = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long long s, e;
    if (sscanf(line, "%llx-%llx", &s, &e) != 2) continue;
    if (strstr(line, "[vsyscall]")) continue;
    if (s >= keep_s && e <= keep_e) continue;
    if (n < cap) out[n++] = (struct blob_range){s, e};
  }
  fclose(f);
  return n;
}

static int move_high(int fd, int floor) {
  if (fd < 0) return fd;
  int h = fcntl(fd, F_DUPFD_CLOEXEC, floor);
  if (h < 0) report_fail("fcntl(F_DUPFD): %s", strerror(errno));
  close(fd);
  return h;
}

#define BLOB_STACK (64 * 1024)
#define THREAD_STACK 16384

static void __attribute__((noreturn)) stage1(void) {
  char err[1024];
  /* glibc registered rseq for this thread in memory that is about to go away */
  if (&__rseq_size && &__rseq_offset && __rseq_size > 0)
    syscall(SYS_rseq, (char *)__builtin_thread_pointer() + __rseq_offset, 32, 1 /* RSEQ_FLAG_UNREGISTER */, 0x53053053);

  int floor = 3;
  for (size_t i = 0; i < img.nfds; i++) if ((int)img.fds[i].r.fd >= floor) floor = (int)img.fds[i].r.fd + 1;
  img.fd = move_high(img.fd, floor);
  report_fd = move_high(report_fd, floor);
  exe_fd = move_high(exe_fd, floor);
  for (size_t k = 0; k < nmapfiles; k++) mapfiles[k].fd = move_high(mapfiles[k].fd, floor);
  close_range(0, (unsigned)floor - 1, 0);
  if (tg_restore_fds(&img, err, sizeof err) != 0) report_fail("%s", err);
  if (img.cwd && chdir(img.cwd) != 0) report_fail("cannot enter the working directory %s: %s", img.cwd, strerror(errno));
  umask((mode_t)img.proc.umask);
  for (int i = 0; i < TG_NRLIMITS; i++) {
    struct rlimit r = {img.rlimits[i].cur, img.rlimits[i].max};
    prlimit(0, (enum __rlimit_resource)i, &r, NULL); /* raising a hard limit needs CAP_SYS_RESOURCE: keep ours then */
  }
  if ((pid_t)img.proc.sid == getpid()) setsid();
  else if ((pid_t)img.proc.pgid == getpid()) setpgid(0, 0);

  /* the blob: code, plan, arrays, thread stacks, its own stack */
  size_t code = (size_t)(__stop_tgblob - __start_tgblob);
  size_t off = (code + 63) & ~63ul;
  size_t plan_off = off;
  off += (sizeof(struct blob_plan) + 63) & ~63ul;
  size_t unmap_cap = 4096, unmap_off = off;
  off += unmap_cap * sizeof(struct blob_range);
  size_t vmas_off = off;
  off += img.nvmas * sizeof(struct blob_vma);
  size_t thr_off = off;
  off += img.nthreads * sizeof(struct blob_thread);
  size_t timers_off = off;
  off += img.ntimers * sizeof(struct tg_timer);
  size_t direct_off = off = (off + 63) & ~63ul;
  off += tg_direct_blob_size();
  off = (off + 4095) & ~4095ul;
  size_t stacks_off = off;
  off += img.nthreads * THREAD_STACK + BLOB_STACK;
  size_t len = (off + 4095) & ~4095ul;
  char *b = place_blob(len);
  if (!b) report_fail("no free address range for the restorer (%zu bytes) outside the application's memory", len);
  memcpy(b, __start_tgblob, code);
  struct blob_plan *p = (struct blob_plan *)(b + plan_off);
  memset(p, 0, sizeof *p);
  p->blob_addr = (uint64_t)b;
  p->blob_len = len;
  p->img_fd = img.fd;
  p->report_fd = report_fd;
  p->fd_floor = floor;
  p->pid = (int32_t)img.proc.pid;
  p->unmap = (struct blob_range *)(b + unmap_off);
  p->vmas = (struct blob_vma *)(b + vmas_off);
  p->threads = (struct blob_thread *)(b + thr_off);
  for (size_t i = 0; i < img.nvmas; i++) {
    struct tg_rec_vma *v = &img.vmas[i].r;
    if (v->kind == TG_VMA_VDSO || v->kind == TG_VMA_VSYSCALL) continue;
    struct blob_vma *bv = &p->vmas[p->nvmas++];
    bv->start = v->start;
    bv->end = v->end;
    bv->prot = v->prot;
    bv->pgoff = 0;
    bv->fd = -1;
    switch (v->kind) {
    case TG_VMA_ANON_PRIVATE: bv->mflags = MAP_PRIVATE | MAP_ANONYMOUS | ((v->vflags & TG_VF_GROWSDOWN) ? MAP_GROWSDOWN : 0); break;
    case TG_VMA_ANON_SHARED: bv->mflags = MAP_SHARED | MAP_ANONYMOUS; break;
    case TG_VMA_FILE_PRIVATE: bv->mflags = MAP_PRIVATE; bv->fd = mapfile_fd(v); bv->pgoff = v->pgoff; break;
    case TG_VMA_FILE_SHARED: bv->mflags = MAP_SHARED; bv->fd = mapfile_fd(v); bv->pgoff = v->pgoff; break;
    default: report_fail("mapping %llx: unknown kind %u", (unsigned long long)v->start, v->kind);
    }
    if ((v->kind == TG_VMA_FILE_PRIVATE || v->kind == TG_VMA_FILE_SHARED) && bv->fd < 0)
      report_fail("mapping %llx: file %s was not opened", (unsigned long long)v->start, img.vmas[i].path);
    /* every mapping but a shared file one may receive pages: mapped writable, then protected; a
     * shared file mapping with its contents in the image is zeroed up to the file's end, then filled */
    bv->fill = v->kind != TG_VMA_FILE_SHARED || (v->vflags & TG_VF_CONTENT);
    bv->zero_len = 0;
    if (v->kind == TG_VMA_FILE_SHARED && (v->vflags & TG_VF_CONTENT) && v->id.size > v->pgoff) {
      uint64_t n = (v->id.size - v->pgoff + 4095) & ~4095ull;
      bv->zero_len = n < v->end - v->start ? n : v->end - v->start;
    }
  }
  p->next_hdr = img.next_hdr;
  p->next_off = img.next_off;
  p->nrec = img.nrec;
  for (size_t i = 0; i < img.nthreads; i++) {
    struct tg_rec_thread *t = &img.threads[i];
    struct blob_thread *bt = &p->threads[p->nthreads++];
    memset(bt, 0, sizeof *bt);
    bt->tid = t->tid;
    bt->is_main = t->tid == img.proc.pid;
    bt->uc = t->uc_addr;
    bt->fs = t->fs_base;
    bt->gs = t->gs_base;
    bt->ctid = t->clear_child_tid;
    bt->robust_head = t->robust_head;
    bt->robust_len = t->robust_len;
    bt->rseq_addr = t->rseq_addr;
    bt->rseq_len = t->rseq_len;
    bt->rseq_sig = t->rseq_sig;
    bt->sigpending = t->sigpending;
    bt->stack_top = (uint64_t)(b + stacks_off + (i + 1) * THREAD_STACK);
    memcpy(bt->comm, t->comm, sizeof bt->comm - 1);
  }
  p->timers = (struct tg_timer *)(b + timers_off);
  if (img.ntimers) memcpy(p->timers, img.timers, img.ntimers * sizeof *img.timers);
  p->ntimers = img.ntimers;
  memcpy(p->itimers, img.itimers, sizeof p->itimers);
  p->direct = (uint64_t)tg_direct_to_blob(b + direct_off, b, floor, &p->direct_fn, err, sizeof err);
  if (tg_direct_blob_size() && !p->direct) report_fail("%s", err);
  memcpy(p->sigs, img.sigs, sizeof p->sigs);
  p->vvar_addr = img.proc.vvar_addr;
  p->vdso_addr = img.proc.vdso_addr;
  const uint64_t *mm = img.proc.mm;
  p->mm = (struct blob_mm_map){mm[MM_START_CODE], mm[MM_END_CODE], mm[MM_START_DATA], mm[MM_END_DATA], mm[MM_START_BRK],
                               mm[MM_BRK], mm[MM_START_STACK], mm[MM_ARG_START], mm[MM_ARG_END], mm[MM_ENV_START],
                               mm[MM_ENV_END], 0, img.proc.auxv_len, (uint32_t)exe_fd};
  memcpy(p->auxv, img.proc.auxv, sizeof p->auxv);
  p->shared_sigpending = img.proc.shared_sigpending;
  p->restart_info_addr = img.proc.restart_info_addr;
  p->trampoline_addr = img.proc.trampoline_addr;
  snprintf(p->sock_path, sizeof p->sock_path, "%s", getenv("TG_RESTORE_SOCK") ? getenv("TG_RESTORE_SOCK") : "");
  int has_main = 0;
  for (size_t i = 0; i < p->nthreads; i++) has_main |= p->threads[i].is_main;
  if (!has_main) report_fail("the image has no thread with TID %u (the main thread); cannot restore", img.proc.pid);

  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  /* last, so that nothing maps anything after the list is taken */
  p->nunmap = own_mappings(p->unmap, unmap_cap, (uint64_t)b, (uint64_t)b + len);
  void (*entry)(struct blob_plan *) = (void (*)(struct blob_plan *))(b + ((char *)tg_blob_main - __start_tgblob));
  uint64_t stack_top = (uint64_t)(b + len);
  __asm__ volatile("movq %0, %%rsp\n\txorl %%ebp, %%ebp\n\tcallq *%1\n\tud2" : : "r"(stack_top), "r"(entry), "D"(p) : "memory");
  __builtin_unreachable();
}

static struct tg_launch *launch;

static int start_restore(struct tg_launch *l, int *report) {
  (void)l;
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) != 0) return -1;
  pid_t want = (pid_t)img.proc.pid;
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.exit_signal = SIGCHLD;
  a.set_tid = (uint64_t)&want;
  a.set_tid_size = 1;
  long r = syscall(SYS_clone3, &a, sizeof a);
  if (r < 0) {
    fprintf(stderr, "tardigrade-restore: cannot create process %d: %s\n", want, strerror(errno));
    return -1;
  }
  if (r == 0) {
    close(pfd[0]);
    report_fd = pfd[1];
    stage1();
  }
  close(pfd[1]);
  *report = pfd[0];
  return (int)r;
}

static void usage(void) {
  fprintf(stderr, "usage: tardigrade-restore --image FILE|- --status FILE --sock PATH --pidfile FILE [--stdio-log FILE] [--allow-file-changes] [--direct PLAN] [--verbose]\n"
                  "       tardigrade-restore --check-files --image FILE|- [--stdio-log FILE] [--allow-file-changes]\n");
  exit(2);
}

int main(int argc, char **argv) {
  struct tg_launch l;
  memset(&l, 0, sizeof l);
  int allow_changes = 0, check_only = 0;
  const char *direct = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--verbose") == 0) { l.verbose = 1; continue; }
    if (strcmp(argv[i], "--allow-file-changes") == 0) { allow_changes = 1; continue; }
    if (strcmp(argv[i], "--check-files") == 0) { check_only = 1; continue; }
    if (i + 1 >= argc) usage();
    if (strcmp(argv[i], "--image") == 0) l.image = argv[++i];
    else if (strcmp(argv[i], "--status") == 0) l.status_path = argv[++i];
    else if (strcmp(argv[i], "--sock") == 0) l.sock = argv[++i];
    else if (strcmp(argv[i], "--pidfile") == 0) l.pidfile = argv[++i];
    else if (strcmp(argv[i], "--stdio-log") == 0) tg_stdio_log = argv[++i];
    else if (strcmp(argv[i], "--direct") == 0) direct = argv[++i];
    else usage();
  }
  if (!l.image || (!check_only && (!l.status_path || !l.sock || !l.pidfile))) usage();
  if (l.sock && strlen(l.sock) >= 108) tg_die("--sock path is too long (max 107 bytes)");
  launch = &l;
  if (tg_image_load(l.image, &img) != 0) return 2;
  if (direct && tg_direct_load(direct) != 0) return 2;
  char err[4096];
  /* before anything is created: a refused restore starts nothing (exit status 3) */
  if (tg_check_file_states(&img, allow_changes, err, sizeof err) != 0) {
    fprintf(stderr, "tardigrade-restore: FILES-CHANGED %s\n", err);
    return 3;
  }
  if (check_only) return 0;
  if (tg_check_timers(&img, err, sizeof err) != 0 || open_mapped_files(err, sizeof err) != 0) {
    fprintf(stderr, "tardigrade-restore: %s\n", err);
    return 2;
  }
  setenv("TG_RESTORE_SOCK", l.sock, 1);
  return tg_launch_main(&l, start_restore);
}
