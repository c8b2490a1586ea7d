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
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/sysvshm.h"
#include "../agent/files-deleted.h"
#include "../launcher/launcher.h"
#include "blob.h"
#include "lazy.h"
#include "pages-direct.h"
#include "restore.h"
#include "tree-zombie.h"

extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

static struct image img; /* the image of the process being restored (each process of a tree has its own) */
static int report_fd = -1;

struct mapfile { const char *path; struct tg_file_id id; int fd; int rw; };
static struct mapfile *mapfiles;
static size_t nmapfiles;
static int exe_fd = -1;

/* A process tree: one image per live process (the first is the app's main process, whose agent
 * listens at --sock; every other one at --sock.PID), and the zombies not yet reaped. */
#define MAX_PROCS 1024
struct proc_plan { struct image img; struct mapfile *mapfiles; size_t nmapfiles; int exe_fd; };
static struct proc_plan *plans;
static size_t nplans;
struct node { int pid, ppid, pgid, sid, plan, status; }; /* plan -1: a zombie with its wait status */
static struct node nodes[MAX_PROCS];
static size_t nnodes;
static int go_rd = -1;
/* Shared memory objects mapped by two or more processes of a tree (VMA kind anon shared, by the
 * object's dev and inode): one memfd each, made before the tree is cloned, mapped by each. */
struct shm_obj { uint64_t dev, ino, size; int nplans, last_plan, fd;
                 int sysv, shmid; struct tg_sysv_shm seg; /* sysv: made again as a System V segment (TG_VF_SYSV), attached by shmat */
                 const char *held; }; /* a deleted file some process also holds open (FD kind 20): its staging name */
static struct shm_obj *shm_objs;
static size_t nshm_objs;

static struct shm_obj *shm_of(const struct tg_rec_vma *v) {
  if (v->kind != TG_VMA_ANON_SHARED || v->id.ino == 0) return NULL;
  for (size_t i = 0; i < nshm_objs; i++) if (shm_objs[i].dev == v->id.dev && shm_objs[i].ino == v->id.ino) return &shm_objs[i];
  return NULL;
}
/* files-deleted.c asks: the shared memory object a deleted file held open is (FD ids carry st_dev,
 * mapping ids the maps' major << 32 | minor) */
static int deleted_shared_fd(const struct tg_file_id *id) {
  uint64_t dev = ((uint64_t)major((dev_t)id->dev) << 32) | minor((dev_t)id->dev);
  for (size_t i = 0; i < nshm_objs; i++)
    if (shm_objs[i].dev == dev && shm_objs[i].ino == id->ino && shm_objs[i].held && !shm_objs[i].sysv) return shm_objs[i].fd;
  return -1;
}

/* A deleted file held open and mapped shared comes back as a deleted file again (not a memfd: the
 * next checkpoint takes it as it took the original): the file the rollback wrote under its staging
 * name, with the contents it had at the cut (the mappings' pages are filled over them), opened and
 * its name removed. Its fd in o->fd (above `floor`). */
static int open_held_file(struct shm_obj *o, int floor, char *err, size_t errlen) {
  int fd = open(o->held, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "deleted file held open and mapped shared: cannot open its contents at %s: %s", o->held,
             fd < 0 ? strerror(errno) : "not a regular file");
    if (fd >= 0) close(fd);
    return -1;
  }
  if ((uint64_t)st.st_size < o->size && ftruncate(fd, (off_t)o->size) != 0) {
    snprintf(err, errlen, "deleted file held open and mapped shared: cannot extend %s to %llu bytes: %s", o->held, (unsigned long long)o->size, strerror(errno));
    close(fd);
    return -1;
  }
  if (unlink(o->held) != 0 && errno != ENOENT) {
    snprintf(err, errlen, "deleted file held open and mapped shared: cannot remove its staging name %s: %s", o->held, strerror(errno));
    close(fd);
    return -1;
  }
  o->fd = fcntl(fd, F_DUPFD_CLOEXEC, floor);
  close(fd);
  if (o->fd < 0) { snprintf(err, errlen, "fcntl: %s", strerror(errno)); return -1; }
  return 0;
}

static const char *sock_base = "";
static char own_sock[108];
static int own_plan; /* which image this process is (0: the main process) */
static const char *lazy_progress; /* restore --lazy: the page server's progress file (lazy.h) */

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

/* Paths the files' rollback made anew (--recreated-list: NUL-separated): a shared writable mapping
 * of one has the checkpoint's file there, under a new inode. */
static char *recreated;
static size_t recreated_len;

static int was_recreated(const char *path) {
  for (size_t o = 0; o < recreated_len;) {
    size_t n = strnlen(recreated + o, recreated_len - o);
    if (n == strlen(path) && memcmp(recreated + o, path, n) == 0) return 1;
    o += n + 1;
  }
  return 0;
}

static void load_recreated(const char *file) {
  FILE *f = fopen(file, "re");
  if (!f) tg_die("cannot read %s: %s", file, strerror(errno));
  size_t cap = 1 << 16;
  recreated = malloc(cap);
  for (size_t n; recreated && (n = fread(recreated + recreated_len, 1, cap - recreated_len, f)) > 0;) {
    recreated_len += n;
    if (recreated_len == cap) recreated = realloc(recreated, cap *= 2);
  }
  if (!recreated || ferror(f)) tg_die("cannot read %s", file);
  fclose(f);
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
      struct stat rst;
      /* (made anew by the rollback with the checkpoint's contents: the file, under a new inode) */
      int anew = fd >= 0 && tg_files_rolled_back && was_recreated(img.vmas[i].path) && fstat(fd, &rst) == 0 && S_ISREG(rst.st_mode) &&
                 (uint64_t)rst.st_size >= (v->id.size < v->pgoff + (v->end - v->start) ? v->id.size : v->pgoff + (v->end - v->start));
      if (!anew && !tg_content_file_usable(&img, v, fd)) {
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
  go_rd = move_high(go_rd, floor);
  int lazy_sock = lazy_progress && own_plan == 0 ? move_high(tg_lazy_child_fd, floor) : -1;
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
  if (tg_restore_attrs(&img, err, sizeof err) != 0) report_fail("%s", err);

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
  size_t locks_off = off;
  off += img.nlocks * sizeof(struct tg_lock);
  size_t direct_off = off = (off + 63) & ~63ul;
  off += tg_direct_blob_size((size_t)own_plan);
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
    bv->shmid = -1;
    switch (v->kind) {
    case TG_VMA_ANON_PRIVATE: bv->mflags = MAP_PRIVATE | MAP_ANONYMOUS | ((v->vflags & TG_VF_GROWSDOWN) ? MAP_GROWSDOWN : 0); break;
    case TG_VMA_ANON_SHARED: {
      const struct shm_obj *o = shm_of(v);
      if (o && o->sysv) bv->shmid = o->shmid; /* a System V segment again */
      else if (o && o->fd >= 0) { bv->mflags = MAP_SHARED; bv->fd = o->fd; bv->pgoff = v->pgoff; } /* one object for the tree */
      else bv->mflags = MAP_SHARED | MAP_ANONYMOUS;
      break;
    }
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
    tg_thread_attrs_for_blob(&img, t->tid, &bt->attrs);
  }
  p->timers = (struct tg_timer *)(b + timers_off);
  if (img.ntimers) memcpy(p->timers, img.timers, img.ntimers * sizeof *img.timers);
  p->ntimers = img.ntimers;
  /* POSIX locks again once the blob closed the restorer's fds: closing any fd of a file drops
   * the process's POSIX locks on it (a file it also maps, or one the tree shares) */
  p->locks = (struct tg_lock *)(b + locks_off);
  p->nlocks = 0;
  for (size_t i = 0; i < img.nlocks; i++) if (img.locks[i].kind == TG_LOCK_POSIX) p->locks[p->nlocks++] = img.locks[i];
  memcpy(p->itimers, img.itimers, sizeof p->itimers);
  /* this process's restore plan (each image may have one: the Nth --direct is the Nth --image's) */
  p->direct = (uint64_t)tg_direct_to_blob((size_t)own_plan, b + direct_off, b, floor, &p->direct_fn, err, sizeof err);
  if (tg_direct_blob_size((size_t)own_plan) && !p->direct) report_fail("%s", err);
  p->lazy_sock = lazy_sock;
  p->lazy_uffd = -1;
  if (p->direct && lazy_sock >= 0) ((struct tg_dp_blob *)p->direct)->lazy = 1;
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
  snprintf(p->sock_path, sizeof p->sock_path, "%s", own_sock);
  snprintf(p->sock_base, sizeof p->sock_base, "%s", sock_base);
  p->go_fd = go_rd;
  p->track = img.proc.flags & TG_PROC_TRACK_UFFD;
  tg_creds_to_blob(&img, &p->creds);
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

static struct node *node_of(int pid) {
  for (size_t i = 0; i < nnodes; i++) if (nodes[i].pid == pid) return &nodes[i];
  return NULL;
}

static pid_t spawn(struct node *n);

/* In the new process n (made by its parent, the init, or a session helper): its session and
 * group, its children (in pid order), then a zombie ends with its status and a live process
 * becomes its image. */
static void __attribute__((noreturn)) become(struct node *n) {
  if (n->sid == n->pid) {
    if (setsid() < 0) report_fail("process %d: setsid: %s", n->pid, strerror(errno));
  } else if (getsid(0) != n->sid) {
    report_fail("process %d: cannot be put back in session %d (its parent is in session %d)", n->pid, n->sid, (int)getsid(0));
  }
  if (n->pgid == n->pid) {
    if (getpgid(0) != n->pid && setpgid(0, 0) != 0) report_fail("process %d: setpgid: %s", n->pid, strerror(errno));
  } else if (getpgid(0) != n->pgid && setpgid(0, n->pgid) != 0) {
    report_fail("process %d: cannot join process group %d: %s", n->pid, n->pgid, strerror(errno));
  }
  /* its controlling terminal, before its children are made (they inherit it), and the terminal's
   * foreground group once that group exists (resources/pty.c) */
  if (n->plan >= 0 && plans[n->plan].img.has_tty) {
    char err[512];
    if (tg_pty_ctty(&plans[n->plan].img.tty, n->pid, n->pgid, err, sizeof err) != 0) report_fail("process %d: %s", n->pid, err);
  }
  for (size_t i = 0; i < nnodes; i++)
    if (nodes[i].ppid == n->pid && spawn(&nodes[i]) < 0) report_fail("cannot create process %d: %s", nodes[i].pid, strerror(errno));
  if (n->plan < 0) {
    /* a zombie: ends as it ended, as the user it was (tree-zombie.c), and waits for its parent's wait() */
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    char zerr[256];
    if (tg_zombie_take_creds(n->pid, zerr, sizeof zerr) != 0) report_fail("process %d (a zombie): %s", n->pid, zerr);
    close(report_fd);
    if (WIFSIGNALED(n->status)) {
      signal(WTERMSIG(n->status), SIG_DFL);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, NULL);
      raise(WTERMSIG(n->status));
    }
    _exit(WIFEXITED(n->status) ? WEXITSTATUS(n->status) : 0);
  }
  struct proc_plan *pl = &plans[n->plan];
  own_plan = n->plan;
  img = pl->img;
  mapfiles = pl->mapfiles;
  nmapfiles = pl->nmapfiles;
  exe_fd = pl->exe_fd;
  if (n->plan == 0) snprintf(own_sock, sizeof own_sock, "%s", sock_base);
  else snprintf(own_sock, sizeof own_sock, "%s.%d", sock_base, n->pid);
  stage1();
}

/* A child with pid `want` in this namespace (clone3 set_tid): 0 in the child, its pid, or -1 (errno). */
static pid_t clone_with_pid(int want) {
  pid_t tid = (pid_t)want;
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.exit_signal = SIGCHLD;
  a.set_tid = (uint64_t)&tid;
  a.set_tid_size = 1;
  return (pid_t)syscall(SYS_clone3, &a, sizeof a);
}

/* clone3 with the old pid; in the child, become n. The child's pid, or -1 (errno). */
static pid_t spawn(struct node *n) {
  pid_t r = clone_with_pid(n->pid);
  if (r == 0) become(n);
  return r;
}

/* Pipes of the tree (an end in two processes, or an end whose other end no process holds any
 * more), made once here and refilled: every process takes its ends from them. */
static int make_shared_pipes(int base, char *err, size_t errlen) {
  size_t cap = 0;
  for (size_t k = 0; k < nplans; k++) cap += plans[k].img.nfds;
  tg_shared_pipes = calloc(cap ? cap : 1, sizeof *tg_shared_pipes);
  if (!tg_shared_pipes) { snprintf(err, errlen, "out of memory"); return -1; }
  for (size_t k = 0; k < nplans; k++) {
    const struct image *im = &plans[k].img;
    for (size_t i = 0; i < im->nfds; i++) {
      const struct tg_rec_fd *r = &im->fds[i].r;
      if (r->kind != TG_FD_PIPE_R && r->kind != TG_FD_PIPE_W) continue;
      int done = 0, elsewhere = 0, other_end_here = 0;
      for (size_t j = 0; j < tg_nshared_pipes; j++) if (tg_shared_pipes[j].ino == r->aux) done = 1;
      if (done) continue;
      for (size_t q = 0; q < nplans; q++)
        for (size_t f = 0; f < plans[q].img.nfds; f++) {
          const struct tg_rec_fd *o = &plans[q].img.fds[f].r;
          if ((o->kind != TG_FD_PIPE_R && o->kind != TG_FD_PIPE_W) || o->aux != r->aux) continue;
          if (q != k) elsewhere = 1;
          else if (o->kind != r->kind) other_end_here = 1;
        }
      if (!elsewhere && other_end_here) continue; /* both ends in one process only: made there, as for one process */
      const char *data = NULL;
      size_t len = 0;
      for (size_t q = 0; q < nplans && !data; q++)
        for (size_t d = 0; d < plans[q].img.npipes; d++)
          if (plans[q].img.pipes[d].ino == r->aux) { data = plans[q].img.pipes[d].data; len = plans[q].img.pipes[d].len; break; }
      if (tg_pipe_make_shared(&tg_shared_pipes[tg_nshared_pipes], r->aux, r->id.size, data ? data : "", len, base, err, errlen) != 0) return -1;
      tg_nshared_pipes++;
    }
  }
  return 0;
}

static int start_restore(struct tg_launch *l, int *report) {
  int pfd[2], gfd[2];
  if (pipe2(pfd, O_CLOEXEC) != 0 || pipe2(gfd, O_CLOEXEC) != 0) return -1;
  report_fd = pfd[1];
  go_rd = gfd[0];
  l->go_fd = gfd[1];
  l->expect_ok = (int)nplans;
  if (tg_lazy_in_init() != 0) return -1;
  /* above every fd any process of the tree has: no process closes or reuses them before it took its ends */
  int base = 3;
  for (size_t k = 0; k < nplans; k++)
    for (size_t i = 0; i < plans[k].img.nfds; i++) if ((int)plans[k].img.fds[i].r.fd >= base) base = (int)plans[k].img.fds[i].r.fd + 1;
  char err[1024];
  if (make_shared_pipes(base + 256, err, sizeof err) != 0) {
    fprintf(stderr, "tardigrade-restore: %s\n", err);
    return -1;
  }
  /* the tree's shared memory objects first: a shared description premade below may be a deleted
   * file that is one of them (files-deleted.c opens the object then) */
  for (size_t i = 0; i < nshm_objs; i++) {
    struct shm_obj *o = &shm_objs[i];
    if (o->sysv) {
      o->shmid = tg_sysv_shm_make(&o->seg, err, sizeof err);
      if (o->shmid < 0) { fprintf(stderr, "tardigrade-restore: %s\n", err); return -1; }
      if (o->shmid != o->seg.id) fprintf(stderr, "tardigrade-restore: System V shared memory segment key 0x%08x is id %d now (was %d: taken)\n", (unsigned)o->seg.key, o->shmid, o->seg.id);
      continue;
    }
    if (o->nplans < 2 && !o->held) continue; /* one process: an anonymous shared mapping, as ever */
    if (o->held) {
      if (open_held_file(o, base + 256, err, sizeof err) != 0) {
        fprintf(stderr, "tardigrade-restore: %s\n", err);
        return -1;
      }
      continue;
    }
    int fd = memfd_create("tardigrade-shared", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)o->size) != 0) {
      fprintf(stderr, "tardigrade-restore: shared memory of %llu bytes: %s\n", (unsigned long long)o->size, strerror(errno));
      return -1;
    }
    o->fd = fcntl(fd, F_DUPFD_CLOEXEC, base + 256);
    close(fd);
    if (o->fd < 0) { fprintf(stderr, "tardigrade-restore: fcntl: %s\n", strerror(errno)); return -1; }
  }
  {
    const struct image **imgs = calloc(nplans, sizeof *imgs);
    if (!imgs) return -1;
    for (size_t k = 0; k < nplans; k++) imgs[k] = &plans[k].img;
    int r = tg_tree_premake(imgs, nplans, base + 256, err, sizeof err);
    /* the app's ptys, at their indexes (resources/pty.c) */
    for (size_t k = 0; k < nplans && r == 0; k++)
      r = tg_pty_note(imgs[k]->fds, imgs[k]->nfds, imgs[k]->has_tty ? &imgs[k]->tty : NULL, err, sizeof err);
    if (r == 0) r = tg_pty_premake(base + 256, err, sizeof err);
    free(imgs);
    if (r != 0) {
      fprintf(stderr, "tardigrade-restore: %s\n", err);
      return -1;
    }
  }
  pid_t root = -1;
  for (size_t i = 0; i < nnodes; i++) {
    struct node *n = &nodes[i];
    if (n->ppid != 1 || (n->sid != 1 && n->sid != n->pid && !node_of(n->sid))) continue;
    pid_t r = spawn(n);
    if (r < 0) { fprintf(stderr, "tardigrade-restore: cannot create process %d: %s\n", n->pid, strerror(errno)); return -1; }
    if (n->plan == 0) root = r;
  }
  /* orphans of a session whose leader is gone: a helper takes the leader's pid, makes the session,
   * creates them and exits (they are re-parented to this init, as they were) */
  for (size_t i = 0; i < nnodes; i++) {
    struct node *n = &nodes[i];
    if (n->ppid != 1 || n->sid == 1 || n->sid == n->pid || node_of(n->sid)) continue;
    int first = 1;
    for (size_t j = 0; j < i; j++)
      if (nodes[j].ppid == 1 && nodes[j].sid == n->sid) first = 0;
    if (!first) continue;
    struct node helper = {n->sid, 1, n->sid, n->sid, -2, 0};
    pid_t r = clone_with_pid(helper.pid);
    if (r < 0) { fprintf(stderr, "tardigrade-restore: cannot create the leader %d of session %d: %s\n", helper.pid, helper.sid, strerror(errno)); return -1; }
    if (r == 0) {
      if (setsid() < 0) report_fail("session helper %d: setsid: %s", helper.pid, strerror(errno));
      for (size_t j = i; j < nnodes; j++)
        if (nodes[j].ppid == 1 && nodes[j].sid == helper.sid && spawn(&nodes[j]) < 0)
          report_fail("cannot create process %d: %s", nodes[j].pid, strerror(errno));
      _exit(0);
    }
    while (waitpid((pid_t)r, NULL, 0) < 0 && errno == EINTR) {}
    /* the main process among them (a daemonizing app's daemon, init.c): same pid, now our child */
    for (size_t j = i; j < nnodes; j++)
      if (nodes[j].plan == 0 && nodes[j].ppid == 1 && nodes[j].sid == helper.sid) root = nodes[j].pid;
  }
  if (tg_lazy_child_fd >= 0) close(tg_lazy_child_fd); /* (the init's copy) */
  for (size_t j = 0; j < tg_nshared_pipes; j++) { close(tg_shared_pipes[j].r); close(tg_shared_pipes[j].w); }
  tg_tree_close_premade();
  tg_pty_close_premade();
  /* the namespace's next pid after the highest restored one, as in the run it comes from: else
   * the app's first fork after the restore takes pid 2, whose agent then thinks itself the app's
   * first process (TARDIGRADE_AGENT_PID=2 in the inherited environment) and takes over the main
   * agent socket path (a tmux pane's shell forking `sleep` did: the next checkpoint failed) */
  int top = 1;
  for (size_t j = 0; j < nnodes; j++) if (nodes[j].pid > top) top = nodes[j].pid;
  char last[16];
  int ln = snprintf(last, sizeof last, "%d", top);
  int lfd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
  if (lfd < 0 || write(lfd, last, (size_t)ln) != ln)
    fprintf(stderr, "tardigrade-restore: warning: cannot set the namespace's last pid to %d (%s): new processes may take low pids\n", top, strerror(errno));
  if (lfd >= 0) close(lfd);
  for (size_t j = 0; j < nshm_objs; j++) if (shm_objs[j].fd >= 0) close(shm_objs[j].fd);
  close(pfd[1]);
  close(gfd[0]);
  report_fd = go_rd = -1;
  *report = pfd[0];
  return (int)root;
}

static void usage(void) {
  fprintf(stderr, "usage: tardigrade-restore --image FILE|- [--image FILE]... [--zombie PID:PPID:PGID:SID:STATUS[:UIDS:GIDS[:GROUPS]]]... [--shared PID:FD,PID:FD...]... --status FILE --sock PATH --pidfile FILE [--stdio-log FILE] [--allow-file-changes] [--allow-closed-tcp] [--files-rolled-back [--recreated-list FILE]] [--direct PLAN]... [--keep-connections INO,...] [--lazy PROGRESS_FILE] [--verbose]\n"
                  "       tardigrade-restore --check-files --image FILE|- [--image FILE]... [--stdio-log FILE] [--allow-file-changes]\n"
                  "       tardigrade-restore --freeze-connections PID INO:SND_SEQ:RCV_SEQ...\n");
  exit(2);
}

int main(int argc, char **argv) {
  struct tg_launch l;
  memset(&l, 0, sizeof l);
  l.go_fd = -1;
  int allow_changes = 0, check_only = 0;
  const char *paths[MAX_PROCS];
  size_t npaths = 0;
  static const char *direct[MAX_PROCS]; /* restore plans, in the order of the images */
  size_t ndirect = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--verbose") == 0) { l.verbose = 1; continue; }
    if (strcmp(argv[i], "--allow-file-changes") == 0) { allow_changes = 1; continue; }
    if (strcmp(argv[i], "--allow-closed-tcp") == 0) { tg_res_tcp_closed = 1; continue; } /* resources/inet.c */
    if (strcmp(argv[i], "--files-rolled-back") == 0) { tg_files_rolled_back = allow_changes = 1; continue; }
    if (strcmp(argv[i], "--check-files") == 0) { check_only = 1; continue; }
    if (strcmp(argv[i], "--freeze-connections") == 0) return tg_freeze_connections(argc - i - 1, argv + i + 1);
    if (i + 1 >= argc) usage();
    if (strcmp(argv[i], "--recreated-list") == 0) {
      load_recreated(argv[++i]);
    } else if (strcmp(argv[i], "--image") == 0) {
      if (npaths == MAX_PROCS) tg_die("more than %d processes", MAX_PROCS);
      paths[npaths++] = argv[++i];
    } else if (strcmp(argv[i], "--zombie") == 0) {
      struct node z = {0, 0, 0, 0, -1, 0};
      int end = 0;
      if (nnodes >= MAX_PROCS || sscanf(argv[++i], "%d:%d:%d:%d:%d%n", &z.pid, &z.ppid, &z.pgid, &z.sid, &z.status, &end) != 5 || z.pid < 2 ||
          (argv[i][end] != 0 && (argv[i][end] != ':' || tg_zombie_note_creds(z.pid, argv[i] + end + 1) != 0)))
        tg_die("--zombie wants PID:PPID:PGID:SID:STATUS[:UIDS:GIDS[:GROUPS]] (the wait status; uids and gids real,effective,saved,fs), got '%s'", argv[i]);
      nodes[nnodes++] = z;
    }
    else if (strcmp(argv[i], "--shared") == 0) {
      if (tg_tree_shared_arg(argv[++i]) != 0) tg_die("--shared wants PID:FD,PID:FD[,...] (fds sharing one open file description), got '%s'", argv[i]);
    }
    else if (strcmp(argv[i], "--status") == 0) l.status_path = argv[++i];
    else if (strcmp(argv[i], "--sock") == 0) l.sock = argv[++i];
    else if (strcmp(argv[i], "--pidfile") == 0) l.pidfile = argv[++i];
    else if (strcmp(argv[i], "--stdio-log") == 0) tg_stdio_log = argv[++i];
    else if (strcmp(argv[i], "--lazy") == 0) lazy_progress = argv[++i];
    else if (strcmp(argv[i], "--direct") == 0) {
      if (ndirect == MAX_PROCS) tg_die("more than %d --direct", MAX_PROCS);
      direct[ndirect++] = argv[++i];
    }
    else if (strcmp(argv[i], "--keep-connections") == 0) {
      const char *s = argv[++i];
      for (const char *q = s; *q; q++) tg_nkeep_conns += *q == ',';
      tg_keep_conns = calloc(tg_nkeep_conns + 1, sizeof *tg_keep_conns);
      if (!tg_keep_conns) tg_die("out of memory");
      tg_nkeep_conns = 0;
      for (char *e; *s; s = *e ? e + 1 : e) {
        tg_keep_conns[tg_nkeep_conns++] = strtoull(s, &e, 10);
        if (e == s || (*e && *e != ',')) tg_die("--keep-connections wants socket inodes separated by commas, got '%s'", argv[i]);
      }
    }
    else usage();
  }
  if (!npaths || (!check_only && (!l.status_path || !l.sock || !l.pidfile))) usage();
  if (l.sock && strlen(l.sock) + 12 >= 108) tg_die("--sock path is too long (max 95 bytes)");
  launch = &l;
  l.image = paths[0];
  plans = calloc(npaths, sizeof *plans);
  if (!plans) tg_die("out of memory");
  for (size_t k = 0; k < npaths; k++)
    if (tg_image_load(paths[k], &plans[k].img) != 0) return 2;
  nplans = npaths;
  if (lazy_progress && (npaths != 1 || ndirect != 1))
    tg_die("--lazy restores one process with a restore plan (--direct); a process tree, or an image without a plan, is restored eagerly");
  /* the restore plans (pages read straight from the store's packs), one per image that has one */
  for (size_t k = 0; k < ndirect; k++)
    if (tg_direct_load(k, direct[k]) != 0) return 2;
  char err[4096];
  /* before anything is created: a refused restore starts nothing (exit status 3) */
  for (size_t k = 0; k < nplans; k++)
    if (tg_check_file_states(&plans[k].img, allow_changes, err, sizeof err) != 0) {
      fprintf(stderr, "tardigrade-restore: FILES-CHANGED %s\n", err);
      return 3;
    }
  if (check_only) return 0;
  for (size_t k = 0; k < nplans; k++)
    if (tg_check_creds(&plans[k].img, 1, err, sizeof err) != 0) {
      fprintf(stderr, "tardigrade-restore: %s\n", err);
      return 2;
    }
  for (size_t k = 0; k < nplans; k++) {
    img = plans[k].img;
    mapfiles = NULL;
    nmapfiles = 0;
    exe_fd = -1;
    if (tg_check_timers(&img, err, sizeof err) != 0 || tg_check_creds(&img, 0, err, sizeof err) != 0 ||
        tg_creds_grant(&img, l.sock, err, sizeof err) != 0 || open_mapped_files(err, sizeof err) != 0) {
      fprintf(stderr, "tardigrade-restore: %s\n", err);
      return 2;
    }
    plans[k] = (struct proc_plan){img, mapfiles, nmapfiles, exe_fd};
    const struct tg_rec_proc *pr = &img.proc;
    if (nnodes >= MAX_PROCS) tg_die("more than %d processes", MAX_PROCS);
    if (node_of((int)pr->pid)) tg_die("two processes with pid %u in the images", pr->pid);
    /* the main process is the init's child (it was launched so); the others keep their parents */
    nodes[nnodes++] = (struct node){(int)pr->pid, k == 0 ? 1 : (int)pr->ppid, (int)pr->pgid, (int)pr->sid, (int)k, 0};
  }
  /* shared memory objects of the tree */
  size_t nv = 0;
  for (size_t k = 0; k < nplans; k++) nv += plans[k].img.nvmas;
  shm_objs = calloc(nv ? nv : 1, sizeof *shm_objs);
  if (!shm_objs) tg_die("out of memory");
  for (size_t k = 0; k < nplans; k++)
    for (size_t i = 0; i < plans[k].img.nvmas; i++) {
      const struct tg_rec_vma *v = &plans[k].img.vmas[i].r;
      if (v->kind != TG_VMA_ANON_SHARED || v->id.ino == 0) continue;
      struct shm_obj *o = shm_of(v);
      if (!o) {
        o = &shm_objs[nshm_objs++];
        *o = (struct shm_obj){v->id.dev, v->id.ino, 0, 0, -1, -1, 0, -1, {0}, NULL};
        if (v->vflags & TG_VF_SYSV)
          o->sysv = 1, o->seg = (struct tg_sysv_shm){(int32_t)v->reserved, (int32_t)v->id.ino, v->id.mode, (uint32_t)(v->id.mtime_ns >> 32), (uint32_t)v->id.mtime_ns, v->id.size};
      }
      /* shmat maps a segment whole: one mapped in part (or split) stays plain shared memory */
      if (o->sysv && (!(v->vflags & TG_VF_SYSV) || v->pgoff != 0 || v->end - v->start != ((o->seg.size + 4095) & ~4095ull))) o->sysv = 0;
      if (o->last_plan != (int)k) { o->nplans++; o->last_plan = (int)k; }
      if (v->pgoff + (v->end - v->start) > o->size) o->size = v->pgoff + (v->end - v->start);
    }
  /* a deleted file held open (FD kind 20) that is also one of these objects: fd and mappings are
   * restored as one object again (files-deleted.c opens the object) */
  tg_deleted_shared_fd = deleted_shared_fd;
  for (size_t k = 0; k < nplans; k++)
    for (size_t i = 0; i < plans[k].img.nfds; i++) {
      const struct tg_rec_fd *r = &plans[k].img.fds[i].r;
      if (r->kind != TG_FD_FILE_DELETED || r->extra_len == 0) continue;
      uint64_t dev = ((uint64_t)major((dev_t)r->id.dev) << 32) | minor((dev_t)r->id.dev);
      for (size_t j = 0; j < nshm_objs; j++)
        if (shm_objs[j].dev == dev && shm_objs[j].ino == r->id.ino && !shm_objs[j].sysv && !shm_objs[j].held) shm_objs[j].held = plans[k].img.fds[i].extra;
    }
  /* every parent must be in the tree (or be the init) */
  for (size_t i = 0; i < nnodes; i++)
    if (nodes[i].ppid != 1 && !node_of(nodes[i].ppid)) {
      fprintf(stderr, "tardigrade-restore: process %d has parent %d, which is in no image\n", nodes[i].pid, nodes[i].ppid);
      return 2;
    }
  /* children are made in pid order */
  for (size_t i = 1; i < nnodes; i++)
    for (size_t j = i; j > 0 && nodes[j - 1].pid > nodes[j].pid; j--) {
      struct node t = nodes[j];
      nodes[j] = nodes[j - 1];
      nodes[j - 1] = t;
    }
  sock_base = l.sock;
  l.app_clock_ns = plans[0].img.proc.monotonic_ns; /* the main process's view (the cut's instant) */
  if (lazy_progress) {
    /* above every fd of the image, as the tree's shared pipes */
    int base = 3;
    for (size_t i = 0; i < plans[0].img.nfds; i++) if ((int)plans[0].img.fds[i].r.fd >= base) base = (int)plans[0].img.fds[i].r.fd + 1;
    if (tg_lazy_prepare(base + 256, err, sizeof err) < 0 || tg_lazy_start(lazy_progress, err, sizeof err) != 0) {
      fprintf(stderr, "tardigrade-restore: lazy restore: %s\n", err);
      return 2;
    }
  }
  int rc = tg_launch_main(&l, start_restore);
  tg_lazy_finish();
  return rc;
}
