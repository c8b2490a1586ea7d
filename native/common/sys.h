/* Raw system calls for code that must not touch libc state: the agent's snapshot child and signal
 * handler, and the restorer blob. Each returns the kernel's value (-errno on failure). */
#ifndef TG_SYS_H
#define TG_SYS_H
#include <stdint.h>
#include <sys/syscall.h>

#define TG_INLINE static inline __attribute__((always_inline))

TG_INLINE long tg_sys6(long n, long a, long b, long c, long d, long e, long f) {
  long r;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall" : "=a"(r) : "0"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return r;
}
#define tg_sys0(n) tg_sys6((n), 0, 0, 0, 0, 0, 0)
#define tg_sys1(n, a) tg_sys6((n), (long)(a), 0, 0, 0, 0, 0)
#define tg_sys2(n, a, b) tg_sys6((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define tg_sys3(n, a, b, c) tg_sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define tg_sys4(n, a, b, c, d) tg_sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define tg_sys5(n, a, b, c, d, e) tg_sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)
#define tg_sys6l(n, a, b, c, d, e, f) tg_sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

#endif
