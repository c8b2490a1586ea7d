/* Lazy restore (restore --lazy, issue 16; docs/engine.md "Lazy restore"): the pages of the restore plan
 * (stored raw blocks, pages-direct.h) are not read before the application runs. The blob registers the
 * anonymous private mappings they go to with a userfaultfd in missing mode, places everything else (the
 * image's PAGES records, blocks that go to other mappings) and hands the userfaultfd to the page server,
 * a thread of tardigrade-restore's outer process (outside the PID namespace: a thread of the init would
 * take a pid there that an application thread may need), over a socket pair the restored process inherits. The server
 * answers each fault with UFFDIO_COPY of the block holding the page (UFFDIO_ZEROPAGE for a page no block
 * holds), prefetches every other block in the background, then unregisters the mappings. A block it
 * cannot read or check kills every process of the application (the init's namespace) with the reason
 * in the progress file: no thread is ever left waiting for a page.
 *
 * Progress file (JSON, replaced atomically): {"state":"loading|done|failed","loaded":PAGES,"total":PAGES,
 * "faults":N,"ms":MS,"error":"..."}. */
#ifndef TG_LAZY_H
#define TG_LAZY_H
#include <stddef.h>

/* In the outer process, before the namespace exists: the socket pair. Returns the end the restored
 * process keeps (moved above `base`), or -1 with the reason in err. */
int tg_lazy_prepare(int base, char *err, size_t errlen);
/* In the outer process, then: starts the server thread (plan 0), which waits for the uffd. */
int tg_lazy_start(const char *progress_path, char *err, size_t errlen);
/* In the init (the outer process's child), before the application exists: the init (so the whole
 * namespace) is killed if the outer process, hence the server, dies. Without the server, the
 * kernel would fill the missing pages with zeros. 0, or -1 (errno). No-op without --lazy. */
int tg_lazy_in_init(void);
/* In the outer process once the init has ended: gives the server (at most 5 s) to notice that the
 * application is gone and say so in the progress file, before the process exits. */
void tg_lazy_finish(void);
/* The end of the socket pair the restored process keeps (-1 without --lazy). */
extern int tg_lazy_child_fd;
#endif
