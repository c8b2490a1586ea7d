/* tg_resume_trampoline(ucontext *uc, int *pending): the last code a restored thread runs before it
 * is back in the application. Called by the restorer blob with the thread's registers set up (fs,
 * rseq, ...). Counts the thread out of the blob (the manager unmaps the blob when the count reaches
 * zero), then resumes the thread from its signal frame: rt_sigreturn takes the frame at rsp - 8, so
 * rsp = &uc. */
	.text
	.globl tg_resume_trampoline
	.hidden tg_resume_trampoline
	.type tg_resume_trampoline, @function
tg_resume_trampoline:
	lock decl (%rsi)
	movq %rdi, %rsp
	movl $15, %eax
	syscall
	ud2
	.size tg_resume_trampoline, .-tg_resume_trampoline
	.section .note.GNU-stack,"",@progbits

/* long tg_clone_on_stack(void *stack_top, void (*fn)(void)): fork-like clone (no flags, exit
 * signal 0, so the application's wait() never sees the child) whose child runs fn on its own stack;
 * returns the child's PID (or -errno) in the parent. */
	.text
	.globl tg_clone_on_stack
	.hidden tg_clone_on_stack
	.type tg_clone_on_stack, @function
tg_clone_on_stack:
	movq %rsi, %r9
	movq %rdi, %rsi
	xorl %edi, %edi
	xorl %edx, %edx
	xorl %r10d, %r10d
	xorl %r8d, %r8d
	movl $56, %eax
	syscall
	testq %rax, %rax
	jnz 1f
	xorl %ebp, %ebp
	callq *%r9
	ud2
1:	ret
	.size tg_clone_on_stack, .-tg_clone_on_stack
	.section .note.GNU-stack,"",@progbits
