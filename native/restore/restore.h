/* tardigrade-restore internals. */
#ifndef TG_RESTORE_H
#define TG_RESTORE_H
#include <stddef.h>
#include <stdint.h>
#include "../common/image.h"
#include "../resources/resource.h"

struct img_vma { struct tg_rec_vma r; char *path; };
struct img_file { struct tg_rec_file_state r; char *path; };

struct image {
  const char *path;
  int fd;
  struct tg_file_header hdr;
  struct tg_rec_proc proc;
  char *cwd;
  struct tg_file_id exe_id;
  char *exe;
  struct tg_rlimit rlimits[TG_NRLIMITS];
  struct tg_ksigaction sigs[64];
  struct img_vma *vmas; size_t nvmas;
  struct tg_rec_thread *threads; size_t nthreads;
  struct tg_rec_thread_attrs *thread_attrs; size_t nthread_attrs; /* THREAD_ATTRS, one per thread (none in images of earlier versions) */
  struct img_fd *fds; size_t nfds;
  struct img_pipe *pipes; size_t npipes;
  struct tg_itimer itimers[TG_NITIMERS];
  struct tg_timer *timers; size_t ntimers; /* POSIX timers (TIMERS record) */
  struct img_sockdata *socks; size_t nsocks;
  struct img_file *files; size_t nfiles;
  struct tg_lock *locks; size_t nlocks; /* LOCKS record */
  struct img_inet_repair *repairs; size_t nrepairs; /* INET_REPAIR records */
  struct tg_rec_tty tty; int has_tty; /* TTY record: its controlling terminal (resources/pty.c) */
  struct tg_rec_attrs attrs; int has_attrs; /* ATTRS record (images of earlier versions have none) */
  struct tg_rec_creds creds; int has_creds; /* CREDS record (images of earlier versions have none: restored as the restorer) */
  struct tg_rec_header next_hdr; /* the first PAGES or END record header, already read */
  uint64_t next_off, nrec, size;
};

/* image-read.c: reads and checks every record before the page data, sequentially (the image may be
 * a pipe); the blob reads the PAGES and END records straight into place. On error prints "<file>: offset N: <what>" and returns -1. */
int tg_image_load(const char *path, struct image *img);

/* attrs.c: the ATTRS record given back to this process (before its threads are made); warnings
 * on stderr for what this host cannot take (CPUs it does not have). 0, or -1 with err. */
int tg_restore_attrs(const struct image *img, char *err, size_t errlen);
/* attrs.c: the THREAD_ATTRS record of thread tid for the blob (zeroed: none), its affinity checked
 * against this host (a warning, and every CPU, when none of its CPUs is here) */
void tg_thread_attrs_for_blob(const struct image *img, uint32_t tid, struct tg_rec_thread_attrs *out);

/* creds.c: 0, or -1 with err naming the pid and uid when this restorer cannot give the process
 * its credentials back (checked before anything is created). ids_only: only a process of another
 * user, group or groups (checked over the whole tree first: the refusal names it). */
int tg_check_creds(const struct image *img, int ids_only, char *err, size_t errlen);
/* creds.c: lets the process's user into the directory of the app's agent sockets (its agent
 * listens there again as that user). 0, or -1 with err. */
int tg_creds_grant(const struct image *img, const char *sock_base, char *err, size_t errlen);
struct blob_creds;
/* creds.c: what the blob sets in every thread last (nothing when they are the restorer's own). */
void tg_creds_to_blob(const struct image *img, struct blob_creds *out);

/* fds.c: rebuilds the fd table through the resource kinds (native/resources/). */
int tg_restore_fds(struct image *img, char *err, size_t errlen);

/* --stdio-log: where the app's appended stdout/stderr go on this host */
extern const char *tg_stdio_log;
/* the pipes of a process tree, made before the tree was cloned (restore.c fills them) */
extern struct tg_shared_pipe *tg_shared_pipes;
extern size_t tg_nshared_pipes;
/* --keep-connections INO,...: TCP connections to peers outside whose traffic the daemon holds (restored whole) */
extern uint64_t *tg_keep_conns;
extern size_t tg_nkeep_conns;
/* connfreeze.c: --freeze-connections PID INO:SND:RCV...: each connection of process PID put in TCP_REPAIR
 * (it then closes without a packet when the process dies) and compared with the checkpoint's sequence
 * numbers; prints "same INO" or "moved INO WHY" per connection. Returns the exit status. */
int tg_freeze_connections(int argc, char **argv);

/* tree-fds.c: objects two processes of a tree hold (an open file description shared through fork,
 * named by --shared PID:FD,PID:FD...; a Unix socket pair split between processes), made once by
 * the init before the tree is cloned. */
int tg_tree_shared_arg(const char *arg);
int tg_tree_premake(const struct image *const *imgs, size_t nimgs, int tmp_base, char *err, size_t errlen);
int tg_tree_premade_fd(int pid, uint32_t fd); /* the init's fd for this process's fd, or -1 */
void tg_tree_close_premade(void);

/* timers.c: can this host recreate the image's POSIX timers (ids, target threads)? */
int tg_check_timers(const struct image *img, char *err, size_t errlen);
/* filecheck.c: every FILE_STATE file must be as it was at the checkpoint (files are not rolled back
 * yet); 0, or -1 with the changed files named in err. allow: report nothing, return 0. */
int tg_check_file_states(const struct image *img, int allow, char *err, size_t errlen);
/* filecheck.c: may a shared writable mapping with stored contents (TG_VF_CONTENT) be written back into
 * the file open as fd (same file, large enough)? 0 = restore it as shared memory instead. */
int tg_content_file_usable(const struct image *img, const struct tg_rec_vma *v, int fd);
#endif
