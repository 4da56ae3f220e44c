"""Seccomp profiles in the OCI ``linux.seccomp`` form: pypod's default, rkt's ``--seccomp``
syntax, and Docker/OCI JSON profile files.

Everything here is data in, data out (plain dicts the runtimes read from config.json); the
runtimes compile the filter with libseccomp. Both crun 1.8.1 and runc 1.1.5 (libseccomp 2.5.4)
skip syscall names libseccomp does not know, so a name newer than the host's libseccomp simply
falls to the default action.

**The default profile** is an allow list (deny by default, ``ERRNO(EPERM)`` for everything not
listed) written from the x86-64/i386 syscall tables, in the spirit of Docker's and Podman's
defaults but our own list:

- :data:`ALLOWED`: what ordinary programs need (files, memory, signals, processes, sockets, SysV
  and POSIX IPC, time reading, scheduling, ids), grouped by area below;
- :data:`BY_CAPABILITY`: syscalls that are allowed only when the app holds the capability the
  kernel checks for them (``mount`` with CAP_SYS_ADMIN, ``reboot`` with CAP_SYS_BOOT, ...), so
  that ``--caps-retain=CAP_SYS_TIME`` makes ``date -s`` work without editing the profile;
- three argument rules: ``clone`` only without namespace flags (unless CAP_SYS_ADMIN),
  ``clone3`` answers ``ENOSYS`` (its flags live in memory that seccomp cannot read; libcs then
  fall back to ``clone``), ``personality`` only for the harmless personas;
- :data:`DENIED`: everything else, named so that a unit test proves every syscall of the table
  is classified (keyrings, io_uring, ``modify_ldt``/``vm86``, obsolete and unimplemented calls).

Architectures: the native one plus its compat ABIs (x86-64 + x86 + x32; aarch64 + arm), so a
32-bit binary cannot walk around the filter.

**rkt's syntax** (``--seccomp mode=retain|remove[,errno=ERRNO],SYSCALL|@GROUP,...``):
``retain`` allows only the listed syscalls, plus :data:`RUNTIME_ESSENTIALS` (what ends the
app and execs it, which systemd's ``SystemCallFilter=`` that rkt used always allowed too, and
what crun's and runc's init call after loading the filter); ``remove`` allows everything but the
listed ones. Blocked calls fail with ``errno`` or, without it, kill the app with SIGSYS. Groups:
see :data:`GROUPS`.

**Profile files**: Docker's format (``names``/``name``, ``action``, ``args``, ``includes`` and
``excludes`` by capability, architecture and minimum kernel, ``archMap``) is evaluated for the
app's capabilities and this host and converted; an OCI ``linux.seccomp`` object is taken as is
after validation.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, Iterable, Mapping

from . import Stage1Error

# -- the syscall table ------------------------------------------------------------------------
#: x86-64 syscall names (Linux 6.1 uapi unistd_64.h, in number order)...
_X86_64 = """
read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction
rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select sched_yield
mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep getitimer alarm
setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg recvmsg shutdown bind
listen getsockname getpeername socketpair setsockopt getsockopt clone fork vfork execve exit
wait4 kill uname semget semop semctl shmdt msgget msgsnd msgrcv msgctl fcntl flock fsync
fdatasync truncate ftruncate getdents getcwd chdir fchdir rename mkdir rmdir creat link unlink
symlink readlink chmod fchmod chown fchown lchown umask gettimeofday getrlimit getrusage sysinfo
times ptrace getuid syslog getgid setuid setgid geteuid getegid setpgid getppid getpgrp setsid
setreuid setregid getgroups setgroups setresuid getresuid setresgid getresgid getpgid setfsuid
setfsgid getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend
sigaltstack utime mknod uselib personality ustat statfs fstatfs sysfs getpriority setpriority
sched_setparam sched_getparam sched_setscheduler sched_getscheduler sched_get_priority_max
sched_get_priority_min sched_rr_get_interval mlock munlock mlockall munlockall vhangup
modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex setrlimit chroot sync acct settimeofday
mount umount2 swapon swapoff reboot sethostname setdomainname iopl ioperm create_module
init_module delete_module get_kernel_syms query_module quotactl nfsservctl getpmsg putpmsg
afs_syscall tuxcall security gettid readahead setxattr lsetxattr fsetxattr getxattr lgetxattr
fgetxattr listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr tkill time futex
sched_setaffinity sched_getaffinity set_thread_area io_setup io_destroy io_getevents io_submit
io_cancel get_thread_area lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old
remap_file_pages getdents64 set_tid_address restart_syscall semtimedop fadvise64 timer_create
timer_settime timer_gettime timer_getoverrun timer_delete clock_settime clock_gettime
clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes vserver mbind
set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify
mq_getsetattr kexec_load waitid add_key request_key keyctl ioprio_set ioprio_get inotify_init
inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat
newfstatat unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat pselect6 ppoll
unshare set_robust_list get_robust_list splice tee sync_file_range vmsplice move_pages utimensat
epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime timerfd_gettime accept4
signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev rt_tgsigqueueinfo
perf_event_open recvmmsg fanotify_init fanotify_mark prlimit64 name_to_handle_at
open_by_handle_at clock_adjtime syncfs sendmmsg setns getcpu process_vm_readv process_vm_writev
kcmp finit_module sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create
kexec_file_load bpf execveat userfaultfd membarrier mlock2 copy_file_range preadv2 pwritev2
pkey_mprotect pkey_alloc pkey_free statx io_pgetevents rseq pidfd_send_signal io_uring_setup
io_uring_enter io_uring_register open_tree move_mount fsopen fsconfig fsmount fspick pidfd_open
clone3 close_range openat2 pidfd_getfd faccessat2 process_madvise epoll_pwait2 mount_setattr
quotactl_fd landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret
process_mrelease futex_waitv set_mempolicy_home_node
""".split()
#: ...the i386 (compat) names that x86-64 lacks...
_I386_ONLY = """
_llseek _newselect bdflush break chown32 clock_adjtime64 clock_getres_time64 clock_gettime64
clock_nanosleep_time64 clock_settime64 fadvise64_64 fchown32 fcntl64 fstat64 fstatat64 fstatfs64
ftime ftruncate64 futex_time64 getegid32 geteuid32 getgid32 getgroups32 getresgid32 getresuid32
getuid32 gtty idle io_pgetevents_time64 ipc lchown32 lock lstat64 mmap2 mpx
mq_timedreceive_time64 mq_timedsend_time64 nice oldfstat oldlstat oldolduname oldstat olduname
ppoll_time64 prof profil pselect6_time64 readdir recvmmsg_time64 rt_sigtimedwait_time64
sched_rr_get_interval_time64 semtimedop_time64 sendfile64 setfsgid32 setfsuid32 setgid32
setgroups32 setregid32 setresgid32 setresuid32 setreuid32 setuid32 sgetmask sigaction signal
sigpending sigprocmask sigreturn sigsuspend socketcall ssetmask stat64 statfs64 stime stty
timer_gettime64 timer_settime64 timerfd_gettime64 timerfd_settime64 truncate64 ugetrlimit ulimit
umount utimensat_time64 vm86 vm86old waitpid
""".split()
#: ...and the ones added since Linux 6.1 (same numbers on every architecture).
_NEWER = """
cachestat fchmodat2 map_shadow_stack futex_wake futex_wait futex_requeue statmount listmount
lsm_get_self_attr lsm_set_self_attr lsm_list_modules mseal setxattrat getxattrat listxattrat
removexattrat open_tree_attr file_getattr file_setattr uretprobe
""".split()

#: Every syscall name pypod knows (``@appc.io/all``); others are refused in user input.
KNOWN: frozenset[str] = frozenset(_X86_64 + _I386_ONLY + _NEWER)

# -- the default profile ----------------------------------------------------------------------
_ALLOWED_BY_AREA: dict[str, str] = {
    "files": """
        access faccessat faccessat2 chdir fchdir getcwd chmod fchmod fchmodat fchmodat2 chown fchown
        lchown fchownat chown32 fchown32 lchown32 close close_range creat dup dup2 dup3 fcntl fcntl64
        flock fsync fdatasync sync syncfs sync_file_range ftruncate ftruncate64 truncate truncate64
        getdents getdents64 readdir link linkat symlink symlinkat unlink unlinkat rename renameat
        renameat2 mkdir mkdirat rmdir mknod mknodat open openat openat2 read readv pread64 preadv
        preadv2 write writev pwrite64 pwritev pwritev2 lseek _llseek readlink readlinkat stat stat64
        lstat lstat64 fstat fstat64 fstatat64 newfstatat statx statfs statfs64 fstatfs fstatfs64
        oldstat oldlstat oldfstat umask utime utimes utimensat utimensat_time64 futimesat sendfile
        sendfile64 splice tee vmsplice copy_file_range fallocate fadvise64 fadvise64_64 readahead
        getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr setxattr lsetxattr fsetxattr
        removexattr lremovexattr fremovexattr getxattrat listxattrat setxattrat removexattrat
        file_getattr file_setattr cachestat statmount listmount""",
    "events and io": """
        ioctl poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64 epoll_create
        epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2 eventfd eventfd2 inotify_init
        inotify_init1 inotify_add_watch inotify_rm_watch signalfd signalfd4 timerfd_create
        timerfd_settime timerfd_gettime timerfd_settime64 timerfd_gettime64 pipe pipe2 io_setup
        io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_submit io_cancel memfd_create""",
    "processes": """
        execve execveat exit exit_group fork vfork wait4 waitid waitpid kill tkill tgkill getpid
        getppid gettid getpgid setpgid getpgrp getsid setsid getpriority setpriority nice getrusage
        times prctl arch_prctl set_tid_address set_robust_list get_robust_list rseq restart_syscall
        capget capset ptrace process_vm_readv process_vm_writev pidfd_open pidfd_send_signal
        pidfd_getfd process_madvise process_mrelease seccomp landlock_create_ruleset
        landlock_add_rule landlock_restrict_self get_thread_area set_thread_area uretprobe
        lsm_get_self_attr lsm_list_modules""",
    "scheduling": """
        sched_yield sched_setparam sched_getparam sched_setscheduler sched_getscheduler
        sched_get_priority_max sched_get_priority_min sched_rr_get_interval
        sched_rr_get_interval_time64 sched_setaffinity sched_getaffinity sched_setattr
        sched_getattr getcpu ioprio_set ioprio_get""",
    "ids": """
        getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 setuid setuid32 setgid
        setgid32 setreuid setreuid32 setregid setregid32 setresuid setresuid32 getresuid
        getresuid32 setresgid setresgid32 getresgid getresgid32 getgroups getgroups32 setgroups
        setgroups32 setfsuid setfsuid32 setfsgid setfsgid32""",
    "memory": """
        brk mmap mmap2 munmap mprotect mremap msync mincore madvise mlock mlock2 munlock mlockall
        munlockall remap_file_pages pkey_mprotect pkey_alloc pkey_free membarrier map_shadow_stack
        mseal memfd_secret""",
    "signals": """
        rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait
        rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo rt_sigsuspend sigaltstack
        sigaction signal sigpending sigprocmask sigreturn sigsuspend sgetmask ssetmask pause alarm
        getitimer setitimer""",
    "time (reading it; adjtimex changes need CAP_SYS_TIME in the kernel)": """
        time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
        clock_nanosleep clock_nanosleep_time64 nanosleep timer_create timer_settime
        timer_settime64 timer_gettime timer_gettime64 timer_getoverrun timer_delete adjtimex""",
    "futexes": "futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue",
    "system information and limits (host and domain names are per UTS namespace)": """
        uname olduname oldolduname sysinfo getrlimit ugetrlimit setrlimit prlimit64 getrandom
        sethostname setdomainname""",
    "sockets": """
        socket socketpair bind connect listen accept accept4 getsockname getpeername sendto
        recvfrom sendmsg recvmsg sendmmsg recvmmsg recvmmsg_time64 shutdown setsockopt getsockopt
        socketcall""",
    "ipc": """
        shmget shmat shmdt shmctl semget semop semctl semtimedop semtimedop_time64 msgget msgsnd
        msgrcv msgctl ipc mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive
        mq_timedreceive_time64 mq_notify mq_getsetattr""",
}
#: Allowed for every app.
ALLOWED: frozenset[str] = frozenset(n for text in _ALLOWED_BY_AREA.values() for n in text.split())

#: Allowed only to apps holding the capability (the kernel checks it for these calls anyway;
#: seccomp keeps their code unreachable for everybody else).
BY_CAPABILITY: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in {
    "CAP_SYS_ADMIN": """mount umount umount2 pivot_root setns unshare fsopen fsconfig fsmount fspick
        move_mount open_tree open_tree_attr mount_setattr swapon swapoff quotactl quotactl_fd
        fanotify_init fanotify_mark lsm_set_self_attr bpf perf_event_open""",
    "CAP_SYS_BOOT": "reboot kexec_load kexec_file_load",
    "CAP_SYS_MODULE": "init_module finit_module delete_module",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64 clock_adjtime clock_adjtime64",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYSLOG": "syslog",
    "CAP_SYS_NICE": "mbind set_mempolicy get_mempolicy set_mempolicy_home_node migrate_pages move_pages",
    "CAP_SYS_PTRACE": "kcmp userfaultfd",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_DAC_READ_SEARCH": "open_by_handle_at name_to_handle_at",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
}.items()}

#: Calls with argument rules in the default profile.
CONDITIONAL: frozenset[str] = frozenset({"clone", "clone3", "personality"})

#: Never in the default profile, whatever the capabilities (``--privileged`` drops seccomp).
DENIED: frozenset[str] = frozenset("""
    add_key keyctl request_key io_uring_setup io_uring_enter io_uring_register modify_ldt vm86
    vm86old uselib _sysctl ustat sysfs nfsservctl create_module get_kernel_syms query_module
    lookup_dcookie afs_syscall tuxcall security vserver getpmsg putpmsg epoll_ctl_old
    epoll_wait_old bdflush break ftime gtty idle lock mpx prof profil stty ulimit
""".split())

#: What a retain-set always allows: the calls that exec the app and end it (as systemd's
#: SystemCallFilter=, which rkt used, always allowed them)...
EXEC_ESSENTIALS: frozenset[str] = frozenset(
    "execve execveat exit exit_group rt_sigreturn sigreturn restart_syscall".split())
#: ...and what the runtimes' own init still calls after loading the filter: unlike systemd, which
#: loaded it right before exec, crun and runc load it before dropping capabilities, closing fds,
#: checking the cwd and (runc's Go init) scheduling goroutines. Found by running both runtimes with
#: retain sets and adding what each refused ("error closing exec fds: open /proc/self/fd",
#: "prctl drop bounding", "failed to verify if current working directory is safe", ...).
RUNTIME_ESSENTIALS: frozenset[str] = EXEC_ESSENTIALS | frozenset("""
    open openat openat2 close close_range read write fcntl fstat fstatfs statfs newfstatat stat lstat
    statx getdents64 readlinkat lseek ioctl dup dup2 dup3 pipe2 getcwd chdir fchdir umask access
    faccessat faccessat2 capget capset prctl setgroups setresuid setresgid setuid setgid setsid brk
    mmap munmap mprotect madvise futex nanosleep sched_yield sched_getaffinity getpid getppid gettid
    tgkill kill rt_sigaction rt_sigprocmask sigaltstack set_robust_list rseq arch_prctl clone wait4
    waitid poll ppoll pselect6 epoll_create1 epoll_ctl epoll_pwait getrlimit prlimit64 getuid geteuid
    getgid getegid""".split())

#: clone(2) flags that create namespaces: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER |
#: NEWPID | NEWNET.
CLONE_NAMESPACE_FLAGS = 0x7E020000
#: personality(2) values the default profile allows: PER_LINUX, PER_LINUX32, UNAME26 (alone and
#: with PER_LINUX32), and 0xffffffff (query the current persona).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

EPERM, ENOSYS = _errno.EPERM, _errno.ENOSYS

# -- groups (rkt's --seccomp syntax) ----------------------------------------------------------
_MOUNT = frozenset("""chroot fsconfig fsmount fsopen fspick mount mount_setattr move_mount open_tree
    open_tree_attr pivot_root umount umount2""".split())
_CLOCK = frozenset("""adjtimex clock_adjtime clock_adjtime64 clock_settime clock_settime64
    settimeofday stime""".split())
_RAW_IO = frozenset("ioperm iopl".split())
_MODULE = BY_CAPABILITY["CAP_SYS_MODULE"]
_REBOOT = BY_CAPABILITY["CAP_SYS_BOOT"]
_SWAP = frozenset("swapon swapoff".split())
_OBSOLETE = frozenset("""_sysctl afs_syscall bdflush break create_module ftime get_kernel_syms getpmsg
    gtty idle lock lookup_dcookie mpx nfsservctl prof profil putpmsg query_module security sgetmask
    ssetmask stty sysfs tuxcall ulimit uselib ustat vserver epoll_ctl_old epoll_wait_old vm86
    vm86old""".split())
_NETWORK_IO = frozenset("""accept accept4 bind connect getpeername getsockname getsockopt listen
    recvfrom recvmmsg recvmmsg_time64 recvmsg sendmmsg sendmsg sendto setsockopt shutdown socket
    socketcall socketpair""".split())
_PROCESS = frozenset("""arch_prctl capget clone clone3 execveat fork getrusage kill pidfd_getfd
    pidfd_open pidfd_send_signal prctl rt_sigqueueinfo rt_tgsigqueueinfo setns tgkill times tkill
    unshare vfork wait4 waitid waitpid""".split())
_PRIVILEGED = (_MOUNT | _CLOCK | _RAW_IO | _MODULE | _REBOOT | _SWAP | frozenset("""acct bpf capset
    fanotify_init fanotify_mark nfsservctl open_by_handle_at quotactl quotactl_fd setdomainname
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 sethostname setresgid setresgid32
    setresuid setresuid32 setreuid setreuid32 setuid setuid32 vhangup perf_event_open
    kexec_load""".split()))
_SYSTEMD_DEFAULT = frozenset("""brk clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 execve exit exit_group futex futex_time64
    get_robust_list get_thread_area getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups
    getgroups32 getpgid getpgrp getpid getppid getrandom getresgid getresgid32 getresuid
    getresuid32 getrlimit getsid gettid gettimeofday getuid getuid32 membarrier mmap mmap2
    munmap nanosleep pause prlimit64 restart_syscall rseq rt_sigreturn sched_getaffinity
    sched_yield set_robust_list set_thread_area set_tid_address sigreturn time ugetrlimit""".split())

#: The default profile's allow list without its conditions (for the whitelist groups).
DEFAULT_NAMES: frozenset[str] = ALLOWED | CONDITIONAL
#: What the default profile denies to an app with the default capabilities.
DEFAULT_DENIED: frozenset[str] = KNOWN - ALLOWED - CONDITIONAL - BY_CAPABILITY["CAP_SYS_CHROOT"]

#: ``@group`` names. The default-whitelist groups stand for the default profile itself
#: (including its clone/personality argument rules and the capability-dependent calls); the
#: default-blacklist groups for what it denies by default.
GROUPS: dict[str, frozenset[str]] = {
    "@appc.io/all": KNOWN,
    "@appc.io/empty": frozenset(),
    "@rkt/default-whitelist": DEFAULT_NAMES,
    "@docker/default-whitelist": DEFAULT_NAMES,
    "@rkt/default-blacklist": DEFAULT_DENIED,
    "@docker/default-blacklist": DEFAULT_DENIED,
    "@systemd/clock": _CLOCK,
    "@systemd/default-whitelist": _SYSTEMD_DEFAULT,
    "@systemd/module": _MODULE,
    "@systemd/mount": _MOUNT,
    "@systemd/network-io": _NETWORK_IO,
    "@systemd/obsolete": _OBSOLETE,
    "@systemd/privileged": _PRIVILEGED,
    "@systemd/process": _PROCESS,
    "@systemd/raw-io": _RAW_IO,
    "@systemd/reboot": _REBOOT,
    "@systemd/swap": _SWAP,
}
_DEFAULT_GROUPS = ("@rkt/default-whitelist", "@docker/default-whitelist")

ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY")
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
             "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
ARCHES = ("SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
          "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
          "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
          "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC",
          "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64")

#: uname -m → (the native seccomp architecture, its compat ABIs), and Docker's/Go's arch names.
_MACHINES = {
    "x86_64": (("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"), ("amd64", "x86_64", "x32", "x86")),
    "aarch64": (("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"), ("arm64", "aarch64", "arm")),
    "i686": (("SCMP_ARCH_X86",), ("386", "x86")),
    "armv7l": (("SCMP_ARCH_ARM",), ("arm",)),
    "ppc64le": (("SCMP_ARCH_PPC64LE",), ("ppc64le",)),
    "s390x": (("SCMP_ARCH_S390X", "SCMP_ARCH_S390"), ("s390x", "s390")),
    "riscv64": (("SCMP_ARCH_RISCV64",), ("riscv64",)),
}


def architectures(machine: str | None = None) -> list[str]:
    """The seccomp architectures a filter must cover on ``machine`` (default: this host)."""
    m = machine or os.uname().machine
    if m not in _MACHINES:
        raise Stage1Error(f"no seccomp architecture known for machine {m!r}")
    return list(_MACHINES[m][0])


def errno_number(name: str | int) -> int:
    """``EPERM``/``ENOSYS``/... (or a number) → its value; unknown names are refused."""
    if isinstance(name, int) and not isinstance(name, bool):
        value = name
    elif isinstance(name, str) and name.isdigit():
        value = int(name)
    elif isinstance(name, str) and hasattr(_errno, name.upper()) and name.upper().startswith("E"):
        value = getattr(_errno, name.upper())
    else:
        raise Stage1Error(f"unknown errno {name!r} (expected a name such as EPERM or ENOSYS)")
    if not 0 < value < 4096:
        raise Stage1Error(f"errno {name!r} out of range")
    return value


def _caps(capabilities: Iterable[str]) -> set[str]:
    return {c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper() for c in capabilities}


def _default_rules(caps: set[str], skip: frozenset[str] = frozenset()) -> list[dict]:
    allowed = set(ALLOWED)
    for cap, names in BY_CAPABILITY.items():
        if cap in caps:
            allowed |= names
    rules: list[dict] = [{"names": sorted(allowed - skip), "action": "SCMP_ACT_ALLOW"}]
    if "personality" not in skip:
        rules += [{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                   "args": [{"index": 0, "value": v, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
                  for v in PERSONALITIES]
    if "CAP_SYS_ADMIN" in caps:  # may create namespaces: clone and clone3 unrestricted
        rules.append({"names": sorted({"clone", "clone3"} - skip), "action": "SCMP_ACT_ALLOW"})
    else:
        if "clone" not in skip:
            rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                                    "op": "SCMP_CMP_MASKED_EQ"}]})
        if "clone3" not in skip:
            rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    return [r for r in rules if r["names"]]


def default_profile(capabilities: Iterable[str], *, machine: str | None = None) -> dict:
    """pypod's default profile for an app holding ``capabilities`` (OCI ``linux.seccomp``)."""
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": EPERM,
            "architectures": architectures(machine), "syscalls": _default_rules(_caps(capabilities))}


# -- rkt's --seccomp syntax -------------------------------------------------------------------
def parse_rkt(text: str) -> dict:
    """``mode=retain|remove[,errno=ERRNO],SYSCALL|@GROUP,...`` → ``{"mode", "errno"?, "set"}``
    (the manifest isolator form). Names and groups are checked; order is kept."""
    mode = errno_name = None
    items: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == "mode":
            mode = value.strip().lower()
        elif sep and key.strip().lower() == "errno":
            errno_name = value.strip().upper()
        elif sep:
            raise Stage1Error(f"unknown option {key!r} (expected mode=, errno= and syscall names)")
        else:
            items.append(part)
    if mode is None:
        raise Stage1Error("missing mode=retain or mode=remove")
    out: dict[str, Any] = {"mode": mode, "set": items}
    if errno_name is not None:
        out["errno"] = errno_name
    check_set(out)
    return out


def check_set(iso: Mapping[str, Any]) -> None:
    """Validate a retain/remove isolator (``{"mode", "errno"?, "set"}``)."""
    if iso.get("mode") not in ("retain", "remove"):
        raise Stage1Error(f"mode must be retain or remove, not {iso.get('mode')!r}")
    if iso.get("errno") is not None:
        errno_number(iso["errno"])
    items = iso.get("set")
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise Stage1Error("set must be a list of syscall names and @groups")
    if not items:
        raise Stage1Error("the syscall set is empty (use @appc.io/empty to mean nothing)")
    for item in items:
        if item.startswith("@"):
            if item not in GROUPS:
                raise Stage1Error(f"unknown syscall group {item!r} (known: {', '.join(sorted(GROUPS))})")
        elif item not in KNOWN:
            raise Stage1Error(f"unknown syscall {item!r}")


def expand(items: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for item in items:
        out |= GROUPS[item] if item.startswith("@") else {item}
    return out


def from_rkt(iso: Mapping[str, Any], capabilities: Iterable[str], *, machine: str | None = None) -> dict:
    """An OCI profile from a retain/remove isolator, for an app holding ``capabilities``."""
    check_set(iso)
    items = list(iso["set"])
    blocked: dict[str, Any] = ({"action": "SCMP_ACT_ERRNO", "errnoRet": errno_number(iso["errno"])}
                               if iso.get("errno") is not None else {"action": "SCMP_ACT_KILL_PROCESS"})
    arches = architectures(machine)
    if iso["mode"] == "remove":
        names = sorted(expand(items))
        rules = [{"names": names, **blocked}] if names else []
        return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": arches, "syscalls": rules}
    default_group = any(i in _DEFAULT_GROUPS for i in items)
    plain = expand(i for i in items if i not in _DEFAULT_GROUPS) | RUNTIME_ESSENTIALS
    rules = _default_rules(_caps(capabilities), skip=frozenset(plain)) if default_group else []
    rules.insert(0, {"names": sorted(plain), "action": "SCMP_ACT_ALLOW"})
    profile = {"defaultAction": blocked["action"], "architectures": arches, "syscalls": rules}
    if "errnoRet" in blocked:
        profile["defaultErrnoRet"] = blocked["errnoRet"]
    return profile


# -- profile files ----------------------------------------------------------------------------
_DOCKER_RULE_KEYS = {"name", "comment", "includes", "excludes"}


def is_docker_format(profile: Mapping[str, Any]) -> bool:
    """Docker's profile format (as opposed to OCI's ``linux.seccomp``)."""
    if "archMap" in profile:
        return True
    return any(isinstance(r, Mapping) and _DOCKER_RULE_KEYS & set(r) for r in profile.get("syscalls") or ())


def _kernel_at_least(wanted: str, release: str) -> bool:
    def nums(text: str) -> tuple[int, ...]:
        out = []
        for piece in text.split("-")[0].split(".")[:3]:
            digits = "".join(ch for ch in piece if ch.isdigit())
            out.append(int(digits or 0))
        return tuple(out)
    return nums(release) >= nums(wanted)


def _applies(rule: Mapping[str, Any], caps: set[str], arch_names: tuple[str, ...], release: str) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not _caps(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and not set(inc["arches"]) & set(arch_names):
        return False
    if inc.get("minKernel") and not _kernel_at_least(str(inc["minKernel"]), release):
        return False
    if exc.get("caps") and _caps(exc["caps"]) & caps:
        return False
    if exc.get("arches") and set(exc["arches"]) & set(arch_names):
        return False
    if exc.get("minKernel") and _kernel_at_least(str(exc["minKernel"]), release):
        return False
    return True


def convert(profile: Mapping[str, Any], capabilities: Iterable[str], *, machine: str | None = None,
            kernel_release: str | None = None) -> dict:
    """A profile file's content → OCI ``linux.seccomp`` for an app holding ``capabilities``.

    Docker's format is evaluated here (includes/excludes against the capabilities, this host's
    architecture and kernel; ``archMap`` narrowed to this host's architecture and its compat
    ABIs; ``name`` → ``names``; comments dropped). An OCI profile is returned as is. Both are
    validated (:func:`validate`)."""
    if not isinstance(profile, Mapping):
        raise Stage1Error("a seccomp profile must be a JSON object")
    if not is_docker_format(profile):
        validate(profile)
        return dict(profile)
    m = machine or os.uname().machine
    release = kernel_release or os.uname().release
    native = architectures(m)
    arch_names = _MACHINES.get(m, ((), (m,)))[1]
    caps = _caps(capabilities)
    out: dict[str, Any] = {k: v for k, v in profile.items()
                           if k in ("defaultAction", "defaultErrnoRet", "flags", "listenerPath",
                                    "listenerMetadata")}
    if profile.get("archMap"):
        arches: list[str] = []
        for entry in profile["archMap"]:
            if entry.get("architecture") == native[0]:
                arches = [entry["architecture"], *entry.get("subArchitectures", [])]
        out["architectures"] = arches or native
    elif profile.get("architectures"):
        out["architectures"] = list(profile["architectures"])
    rules = []
    for rule in profile.get("syscalls") or ():
        if not isinstance(rule, Mapping):
            raise Stage1Error("each syscalls entry must be an object")
        if not _applies(rule, caps, arch_names, release):
            continue
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        r = {"names": names, "action": rule.get("action")}
        for key in ("errnoRet", "args"):
            if rule.get(key) is not None:
                r[key] = rule[key]
        rules.append(r)
    out["syscalls"] = rules
    validate(out)
    return out


def validate(profile: Mapping[str, Any]) -> None:
    """Check an OCI ``linux.seccomp`` object (actions, architectures, rules, argument operators)."""
    if profile.get("defaultAction") not in ACTIONS:
        raise Stage1Error(f"defaultAction must be one of {', '.join(ACTIONS)}")
    for arch in profile.get("architectures") or ():
        if arch not in ARCHES:
            raise Stage1Error(f"unknown seccomp architecture {arch!r}")
    if "defaultErrnoRet" in profile:
        _uint(profile["defaultErrnoRet"], "defaultErrnoRet")
    for i, rule in enumerate(profile.get("syscalls") or ()):
        where = f"syscalls[{i}]"
        if not isinstance(rule, Mapping):
            raise Stage1Error(f"{where}: must be an object")
        names = rule.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise Stage1Error(f"{where}: names must be a non-empty list of syscall names")
        if rule.get("action") not in ACTIONS:
            raise Stage1Error(f"{where}: action must be one of {', '.join(ACTIONS)}")
        if "errnoRet" in rule:
            _uint(rule["errnoRet"], f"{where}.errnoRet")
        for j, arg in enumerate(rule.get("args") or ()):
            if not isinstance(arg, Mapping) or arg.get("op") not in OPERATORS:
                raise Stage1Error(f"{where}.args[{j}]: op must be one of {', '.join(OPERATORS)}")
            _uint(arg.get("index"), f"{where}.args[{j}].index", 5)
            _uint(arg.get("value", 0), f"{where}.args[{j}].value", (1 << 64) - 1)
            _uint(arg.get("valueTwo", 0), f"{where}.args[{j}].valueTwo", (1 << 64) - 1)


def _uint(value: Any, where: str, hi: int = (1 << 32) - 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise Stage1Error(f"{where}: expected an integer in [0, {hi}]")


def summary(profile: Mapping[str, Any] | None) -> str:
    """One line for logs and docs: default action and rule count."""
    if profile is None:
        return "unconfined"
    n = sum(len(r.get("names", ())) for r in profile.get("syscalls", ()))
    return f"default {profile.get('defaultAction')}, {n} syscall names in {len(profile.get('syscalls', ()))} rules"


__all__ = ["KNOWN", "ALLOWED", "BY_CAPABILITY", "DENIED", "GROUPS", "default_profile", "parse_rkt",
           "from_rkt", "convert", "validate", "is_docker_format", "errno_number", "architectures"]
