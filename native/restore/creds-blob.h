/* Part of the blob (included by blob.c, same section and rules): every thread sets its own
 * credentials (the kernel keeps them per thread; a raw set*id call changes the calling thread
 * only), after everything that needs privilege and before the process reports OK. Order: bounding
 * set (needs CAP_SETPCAP), groups and gids (need CAP_SETGID), SECBIT_KEEP_CAPS so that the uid
 * change keeps the permitted set, uids, then the capability sets with CAP_SETPCAP still effective
 * for the final securebits, ambient raised, the sets lowered to the checkpoint's. The uid change
 * resets the dumpable flag: the main thread sets the checkpoint's again once all threads are done.
 * On a failure the value reported is the uid. */
#define STEP_CREDS 20
#define PR_SET_DUMPABLE_ 4
#define PR_CAPBSET_DROP_ 24
#define PR_SET_SECUREBITS_ 28
#define PR_CAP_AMBIENT_ 47
#define PR_CAP_AMBIENT_RAISE_ 2
#define SECBIT_KEEP_CAPS_ (1 << 4)
#define LINUX_CAPABILITY_VERSION_3_ 0x20080522
#define EINVAL_ 22

struct blob_cap_header { uint32_t version; int32_t pid; };
struct blob_cap_data { uint32_t effective, permitted, inheritable; };

BLOB static long blob_capset(uint64_t eff, uint64_t prm, uint64_t inh) {
  struct blob_cap_header h = {LINUX_CAPABILITY_VERSION_3_, 0};
  struct blob_cap_data d[2] = {{(uint32_t)eff, (uint32_t)prm, (uint32_t)inh}, {(uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32)}};
  return tg_sys2(SYS_capset, &h, d);
}

BLOB static void apply_creds(struct blob_plan *p) {
  const struct tg_rec_creds *c = &p->creds.c;
  long r;
  uint64_t val = c->uid[1];
  for (int cap = 0; cap < 64; cap++)
    if (!((c->cap_bnd >> cap) & 1)) {
      r = tg_sys2(SYS_prctl, PR_CAPBSET_DROP_, cap);
      if (r == -EINVAL_) break; /* past the kernel's last capability */
      if (r < 0) fail(p, STEP_CREDS, r, val);
    }
  if ((r = tg_sys2(SYS_setgroups, c->ngroups, c->groups)) < 0) fail(p, STEP_CREDS, r, val);
  if ((r = tg_sys3(SYS_setresgid, c->gid[0], c->gid[1], c->gid[2])) < 0) fail(p, STEP_CREDS, r, val);
  tg_sys1(SYS_setfsgid, c->gid[3]); /* (returns the previous one, never an error) */
  if ((r = tg_sys2(SYS_prctl, PR_SET_SECUREBITS_, SECBIT_KEEP_CAPS_)) < 0) fail(p, STEP_CREDS, r, val);
  if ((r = tg_sys3(SYS_setresuid, c->uid[0], c->uid[1], c->uid[2])) < 0) fail(p, STEP_CREDS, r, val);
  tg_sys1(SYS_setfsuid, c->uid[3]);
  /* the permitted set kept through the uid change is the restorer's full one */
  struct blob_cap_header h = {LINUX_CAPABILITY_VERSION_3_, 0};
  struct blob_cap_data d[2];
  if ((r = tg_sys2(SYS_capget, &h, d)) < 0) fail(p, STEP_CREDS, r, val);
  uint64_t prm = (uint64_t)d[0].permitted | ((uint64_t)d[1].permitted << 32);
  if ((r = blob_capset(prm, prm, c->cap_inh)) < 0) fail(p, STEP_CREDS, r, val);
  if ((r = tg_sys2(SYS_prctl, PR_SET_SECUREBITS_, c->securebits)) < 0) fail(p, STEP_CREDS, r, val);
  for (int cap = 0; cap < 64; cap++)
    if ((c->cap_amb >> cap) & 1) {
      r = tg_sys5(SYS_prctl, PR_CAP_AMBIENT_, PR_CAP_AMBIENT_RAISE_, cap, 0, 0);
      if (r < 0) fail(p, STEP_CREDS, r, val);
    }
  if ((r = blob_capset(c->cap_eff, c->cap_prm, c->cap_inh)) < 0) fail(p, STEP_CREDS, r, val);
}

/* A thread other than the main one: waits for the main thread's word, sets its own, counts. */
BLOB static void thread_creds(struct blob_plan *p) {
  if (!p->creds.set) return;
  while (!__atomic_load_n(&p->creds.go, __ATOMIC_SEQ_CST)) tg_sys4(SYS_futex, &p->creds.go, FUTEX_WAIT_PRIVATE_, 0, 0);
  apply_creds(p);
  __atomic_fetch_add(&p->creds.done, 1, __ATOMIC_SEQ_CST);
  tg_sys3(SYS_futex, &p->creds.done, FUTEX_WAKE_PRIVATE_, 1);
}

/* The main thread, once every thread exists: its own, then every other thread's, then dumpable. */
BLOB static void process_creds(struct blob_plan *p) {
  if (!p->creds.set) return;
  apply_creds(p);
  __atomic_store_n(&p->creds.go, 1, __ATOMIC_SEQ_CST);
  tg_sys3(SYS_futex, &p->creds.go, FUTEX_WAKE_PRIVATE_, 1 << 30);
  int32_t others = (int32_t)p->nthreads - 1, d;
  while ((d = __atomic_load_n(&p->creds.done, __ATOMIC_SEQ_CST)) < others) tg_sys4(SYS_futex, &p->creds.done, FUTEX_WAIT_PRIVATE_, d, 0);
  if (p->creds.dumpable >= 0) {
    long r = tg_sys2(SYS_prctl, PR_SET_DUMPABLE_, p->creds.dumpable);
    if (r < 0) fail(p, STEP_CREDS, r, p->creds.c.uid[1]);
  }
}
