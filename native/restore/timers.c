/* Checks, before anything is created, that the image's POSIX timers can be recreated here: the
 * kernel must take the wanted timer ids (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.15), and every
 * thread a timer signals must be in the image. The blob (blob.c, restore_timers) recreates them. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

#include "restore.h"

#define PR_TIMER_CREATE_RESTORE_IDS_ 77
#define PR_TIMER_CREATE_RESTORE_IDS_GET_ 2
#define SIGEV_THREAD_ID_ 4

int tg_check_timers(const struct image *img, char *err, size_t errlen) {
  if (!img->ntimers) return 0;
  if (prctl(PR_TIMER_CREATE_RESTORE_IDS_, PR_TIMER_CREATE_RESTORE_IDS_GET_, 0, 0, 0) < 0) {
    snprintf(err, errlen,
             "the image has %zu POSIX timer(s) (first: id %d), and this kernel cannot recreate a timer with a given id "
             "(prctl PR_TIMER_CREATE_RESTORE_IDS: %s; needs Linux 6.15 or later); restore on a newer kernel",
             img->ntimers, img->timers[0].id, strerror(errno));
    return -1;
  }
  for (size_t i = 0; i < img->ntimers; i++) {
    const struct tg_timer *t = &img->timers[i];
    if (t->id < 0) { snprintf(err, errlen, "timer record %zu has a negative id %d; the image is damaged", i, t->id); return -1; }
    for (size_t j = 0; j < i; j++)
      if (img->timers[j].id == t->id) { snprintf(err, errlen, "timer id %d appears twice; the image is damaged", t->id); return -1; }
    if (!(t->notify & SIGEV_THREAD_ID_)) continue;
    size_t k;
    for (k = 0; k < img->nthreads; k++) if (img->threads[k].tid == t->tid) break;
    if (k == img->nthreads) {
      snprintf(err, errlen, "timer %d signals thread %u, which is not in the image; the image is damaged", t->id, t->tid);
      return -1;
    }
  }
  return 0;
}
