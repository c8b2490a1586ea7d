/* The plan handed from the restorer (stage 1, ordinary C) to the blob (stage 2), which runs after
 * everything of the restorer but the blob's own mapping is gone. All pointers point into the blob
 * mapping. */
#ifndef TG_BLOB_H
#define TG_BLOB_H
#include <stdint.h>
#include "../common/image.h"

struct blob_range { uint64_t start, end; };
struct blob_vma { uint64_t start, end, pgoff; uint32_t prot, mflags; int32_t fd; uint32_t fill, opened; uint64_t zero_len; /* bytes zeroed before the fill */ int32_t shmid; /* >= 0: a System V segment, attached with shmat */ uint32_t pad; };
struct blob_thread {
  uint32_t tid, is_main;
  uint64_t uc, fs, gs, ctid, robust_head, robust_len, rseq_addr;
  uint32_t rseq_len, rseq_sig;
  uint64_t sigpending, stack_top;
  uint64_t plan; /* struct blob_plan * */
  char comm[16];  /* thread name, NUL terminated (empty: leave it) */
  struct tg_rec_thread_attrs attrs; /* its own nice, scheduling, timer slack, affinity (tid 0: none in the image) */
};

/* struct prctl_mm_map from linux/prctl.h, spelled out (the header is not in the blob's reach) */
struct blob_mm_map {
  uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack, arg_start, arg_end,
      env_start, env_end;
  uint64_t auxv;
  uint32_t auxv_size, exe_fd;
};

/* credentials set in every thread last (creds-blob.h); set 0: leave the restorer's */
struct blob_creds {
  uint32_t set;
  int32_t dumpable;          /* the ATTRS record's, set again after the ids changed (that resets it), or -1 */
  struct tg_rec_creds c;
  volatile int32_t go, done; /* the main thread's word to the others; how many of them have set theirs */
};

struct blob_plan {
  uint64_t blob_addr, blob_len;
  int32_t img_fd, report_fd, fd_floor, pid;
  uint64_t nunmap, nvmas, nthreads;
  struct blob_range *unmap;
  struct blob_vma *vmas;
  struct blob_thread *threads;
  struct tg_ksigaction sigs[64];
  uint64_t vvar_addr, vdso_addr;
  struct blob_mm_map mm;
  uint8_t auxv[512];
  uint64_t shared_sigpending;
  uint64_t restart_info_addr, trampoline_addr;
  char sock_path[108];
  char sock_base[108];
  int32_t go_fd;             /* a process tree: read one byte from it before the app runs (every process restored) */
  int32_t pad_;
  struct tg_rec_header next_hdr; /* first PAGES/END header, read by stage 1 */
  uint64_t next_off, nrec;      /* its offset in the image; records before it */
  volatile int32_t go;
  int32_t verbose;
  uint64_t ntimers;          /* POSIX timers, recreated with their ids once every thread exists */
  struct tg_timer *timers;
  struct tg_itimer itimers[TG_NITIMERS];
  uint64_t nlocks;           /* POSIX locks, taken again after the restorer's fds are closed */
  struct tg_lock *locks;
  uint64_t direct, direct_fn; /* pages read straight from pack files (pages-direct.h): plan, reader; 0: none */
  uint32_t track;            /* TG_PROC_TRACK_UFFD: arm write-protect tracking on the restored memory */
  int32_t lazy_sock;         /* restore --lazy: the page server's socket (lazy.h), or -1 */
  int32_t lazy_uffd;         /* set by tg_direct_read in lazy mode: mappings registered (blob_vma.opened & 2), or -1 */
  int32_t pad3_;
  struct blob_creds creds;
};

/* entry point, in section tgblob */
void tg_blob_main(struct blob_plan *p);
extern char __start_tgblob[], __stop_tgblob[];
#endif
