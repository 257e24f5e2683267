/* cove-probe: what a process in a pod can learn about, and do to, every other process it
 * sees that is not one of its pod's containers (tests/escape.rs). Read-only where it can
 * be: a write probe is made so that it changes nothing if it succeeds (fchmod to the mode
 * the file already has), and a file it manages to create is removed at once.
 *
 * Usage: cove-probe MARKER SOCKET
 *   MARKER  a host file's absolute path (it must not be reachable)
 *   SOCKET  containerd's socket path on the host (it must not be reachable)
 * Prints one line per probe: "<pid> <probe> <result>", where result is "denied:<errno name>"
 * or "ok:<what was seen>" (newlines and NULs shown as '|'). Processes named "sleep" (the
 * containers' own) and the probe itself are skipped. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static void out(int pid, const char *probe, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void out(int pid, const char *probe, const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *c = buf; *c; c++)
        if (*c == '\n' || *c == ' ' || *c == '\t') *c = '|';
    printf("%d %s %s\n", pid, probe, buf);
}

static const char *en(int e) {
    switch (e) {
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EROFS: return "EROFS";
    case ESRCH: return "ESRCH";
    case EFAULT: return "EFAULT";
    case EIO: return "EIO";
    case ENOTDIR: return "ENOTDIR";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOTSOCK: return "ENOTSOCK";
    default: { static char b[32]; snprintf(b, sizeof b, "errno%d", e); return b; }
    }
}

/* A file's contents, NULs as '|', at most 3000 bytes. */
static void file(int pid, const char *probe, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { out(pid, probe, "denied:%s", en(errno)); return; }
    char buf[3001];
    ssize_t n = read(fd, buf, 3000);
    int e = errno;
    close(fd);
    if (n < 0) { out(pid, probe, "denied:%s", en(e)); return; }
    for (ssize_t i = 0; i < n; i++) if (buf[i] == 0) buf[i] = '|';
    buf[n] = 0;
    out(pid, probe, "ok:%s", buf);
}

/* A directory's entries (not . and ..), joined by ','. */
static void dir(int pid, const char *probe, const char *path, int links) {
    DIR *d = opendir(path);
    if (!d) { out(pid, probe, "denied:%s", en(errno)); return; }
    char buf[3000] = "";
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char item[600];
        if (links) {
            char p[512], t[256] = "";
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            ssize_t n = readlink(p, t, sizeof t - 1);
            if (n > 0) t[n] = 0;
            snprintf(item, sizeof item, "%s=%s,", e->d_name, t);
        } else {
            snprintf(item, sizeof item, "%s,", e->d_name);
        }
        strncat(buf, item, sizeof buf - strlen(buf) - 1);
    }
    closedir(d);
    out(pid, probe, "ok:%s", buf);
}

static void probe(int pid, const char *marker, const char *sock) {
    char p[512], t[512];
    snprintf(p, sizeof p, "/proc/%d/root", pid); dir(pid, "root", p, 0);
    snprintf(p, sizeof p, "/proc/%d/cwd", pid); dir(pid, "cwd", p, 0);
    snprintf(p, sizeof p, "/proc/%d/exe", pid);
    ssize_t n = readlink(p, t, sizeof t - 1);
    if (n < 0) out(pid, "exe", "denied:%s", en(errno));
    else { t[n] = 0; out(pid, "exe", "ok:%s", t); }
    /* Could it change the executable's inode? fchmod to its own mode changes nothing. */
    int fd = open(p, O_RDONLY);
    if (fd < 0) out(pid, "exe-chmod", "denied:%s", en(errno));
    else {
        struct stat st;
        if (fstat(fd, &st) < 0) out(pid, "exe-chmod", "denied:%s", en(errno));
        else if (fchmod(fd, st.st_mode & 07777) < 0) out(pid, "exe-chmod", "denied:%s", en(errno));
        else out(pid, "exe-chmod", "ok:mode-%o", st.st_mode & 07777);
        close(fd);
    }
    const char *files[] = {"environ", "cmdline", "mountinfo", "cgroup", "maps", "status", 0};
    for (int i = 0; files[i]; i++) {
        snprintf(p, sizeof p, "/proc/%d/%s", pid, files[i]);
        file(pid, files[i], p);
    }
    snprintf(p, sizeof p, "/proc/%d/fd", pid); dir(pid, "fd", p, 1);
    /* mem: the access check is at open. */
    snprintf(p, sizeof p, "/proc/%d/mem", pid);
    fd = open(p, O_RDONLY);
    if (fd < 0) out(pid, "mem", "denied:%s", en(errno));
    else { close(fd); out(pid, "mem", "ok:opened"); }
    /* process_vm_readv: EPERM is the access check; EFAULT means it was allowed. */
    char b[8];
    struct iovec local = {b, sizeof b}, remote = {(void *)0x1000, sizeof b};
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) < 0 && (errno == EPERM || errno == ESRCH))
        out(pid, "vm_readv", "denied:%s", en(errno));
    else
        out(pid, "vm_readv", "ok:allowed");
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) < 0) out(pid, "ptrace", "denied:%s", en(errno));
    else { ptrace(PTRACE_DETACH, pid, 0, 0); out(pid, "ptrace", "ok:seized"); }
    if (kill(pid, 0) < 0) out(pid, "signal", "denied:%s", en(errno));
    else out(pid, "signal", "ok:allowed");
    snprintf(p, sizeof p, "/proc/%d/root%s", pid, marker);
    fd = open(p, O_RDONLY);
    if (fd < 0) out(pid, "marker", "denied:%s", en(errno));
    else { n = read(fd, t, sizeof t - 1); close(fd); t[n > 0 ? n : 0] = 0; out(pid, "marker", "ok:%s", t); }
    snprintf(p, sizeof p, "/proc/%d/root/tmp/cove-probe-%d", pid, getpid());
    fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) out(pid, "create", "denied:%s", en(errno));
    else { close(fd); unlink(p); out(pid, "create", "ok:created"); }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(p, sizeof p, "/proc/%d/root%s", pid, sock);
    if (strlen(p) >= sizeof a.sun_path) {
        /* Reach it through a descriptor of its directory instead of the long path. */
        char d[512];
        snprintf(d, sizeof d, "%s", p);
        char *slash = strrchr(d, '/');
        *slash = 0;
        int dfd = open(d, O_PATH | O_DIRECTORY);
        if (dfd < 0) { out(pid, "containerd", "denied:%s", en(errno)); return; }
        snprintf(a.sun_path, sizeof a.sun_path, "/proc/self/fd/%d/%s", dfd, slash + 1);
    } else {
        snprintf(a.sun_path, sizeof a.sun_path, "%s", p);
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) out(pid, "containerd", "denied:%s", en(errno));
    else out(pid, "containerd", "ok:connected");
    close(s);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: cove-probe MARKER SOCKET\n"); return 2; }
    int self = getpid(), parent = getppid();
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 0 || pid == self || pid == parent) continue;
        char p[64], comm[64] = "";
        snprintf(p, sizeof p, "/proc/%d/comm", pid);
        int fd = open(p, O_RDONLY);
        if (fd >= 0) { ssize_t n = read(fd, comm, sizeof comm - 1); close(fd); if (n > 0) comm[n - 1] = 0; }
        if (!strcmp(comm, "sleep")) continue;
        out(pid, "comm", "ok:%s", comm);
        probe(pid, argv[1], argv[2]);
    }
    return 0;
}
