/*
 * The thin path, compiled: what a runtime execs as /opt/cni/bin/<plugin> in the bundle.
 *
 * It speaks the client side of cni/handoff.py's protocol (the protocol, its
 * bounds and its messages are documented there; this file follows that one
 * step by step). A frozen CPython costs 25-30 ms to start before it can even
 * connect; this costs ~1 ms, so a pod's ADD through underlayd pays the warm
 * worker's work and little else.
 *
 * VERSION it answers itself: the bundle's static answer, built in.
 * Whenever any other invocation is not handed off, it execs the bundle's own
 * executable (beside this one: .underlay/underlay) as `underlay NAME ARGS...`
 * with the same environment, which runs the plugin in-process as it always did:
 *   - no CNI_COMMAND, --help/-h, UNDERLAY_AGENT=0: straight away;
 *   - no agent (no socket, refused, stale, not a socket), a listener that is
 *     not root's, the agent refused us, or it answered "F": with
 *     UNDERLAY_HANDOFF_STATUS=<why> (the operation log's debug line);
 *   - the agent is busy past the bound, or its worker died without an answer:
 *     with UNDERLAY_HANDOFF_ERROR=<message>, which the plugin answers as CNI
 *     error 11 in the config's cniVersion (only Python knows how to read it).
 * Once stdin has been read it is handed to the bundle in a memfd.
 *
 * Before it answers, hands off or runs anything, VERSION included, it checks
 * that the bundle is beside the file it runs from (its real path: the plugin
 * names are links to it). A copy without the bundle (a `cp` of dist/bin's
 * files skips the hidden .underlay/) answers every verb with a CNI error saying
 * how to install, so a runtime's VERSION check fails as its ADD would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "handoff_version.h"   /* VERSION_OUTPUT, written by build/underlay.spec: the bundle's answer */

#define DEFAULT_SOCKET "/run/underlay/underlay.sock"
#define DEFAULT_TIMEOUT 5.0
#define QUEUE_LIMIT 60.0
#define PROTOCOL "underlay/1"

extern char **environ;

static char **args;             /* our argv, passed on */
static int arg_count;           /* its length (argc) */
static const char *called;      /* the name we were called by: the plugin (prefixed or not) */
static char bundle[PATH_MAX + sizeof "_internal"];   /* the bundle's executable, beside our real path */
static char *input;             /* stdin, once read */
static size_t input_size;
static int input_read;

static double now(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The value of the first "cniVersion" key in text (a runtime's config has it first: libcni sorts its
 * keys), into out; NULL when there is none that looks like a version. */
static const char *cni_version_in(const char *text, size_t size, char *out, size_t room)
{
    const char *key = "\"cniVersion\"";
    const char *at = memmem(text, size, key, strlen(key));
    if (!at) {
        return NULL;
    }
    const char *end = text + size;
    at += strlen(key);
    at += strspn(at, " \t\r\n");   /* text is NUL-terminated */
    if (at >= end || *at++ != ':') {
        return NULL;
    }
    at += strspn(at, " \t\r\n");
    size_t len = at < end && *at == '"' ? strspn(++at, "0123456789.") : 0;
    if (len == 0 || len >= room || at + len >= end || at[len] != '"') {
        return NULL;
    }
    memcpy(out, at, len);
    out[len] = '\0';
    return out;
}

/* The cniVersion an error answers in: the config's when we support it, else our current one. */
static const char *error_version(void)
{
    static char version[16], quoted[20];
    static char config[1 << 16];
    size_t size = 0;
    if (input_read) {
        size = input_size < sizeof config - 1 ? input_size : sizeof config - 1;
        memcpy(config, input, size);
    } else if (!isatty(0)) {   /* a runtime's config; a person at a terminal typed none */
        ssize_t n;
        while (size < sizeof config - 1 && ((n = read(0, config + size, sizeof config - 1 - size)) > 0
                                            || (n < 0 && errno == EINTR))) {
            size += n > 0 ? n : 0;
        }
    }
    config[size] = '\0';
    if (cni_version_in(config, size, version, sizeof version)) {
        snprintf(quoted, sizeof quoted, "\"%s\"", version);
        if (strstr(strstr(VERSION_OUTPUT, "supportedVersions"), quoted)) {
            return version;
        }
    }
    return cni_version_in(VERSION_OUTPUT, strlen(VERSION_OUTPUT), version, sizeof version);
}

static void put_json_string(const char *text)
{
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') {
            printf("\\%c", *c);
        } else if (*c < 0x20) {
            printf("\\u%04x", *c);
        } else {
            putchar(*c);
        }
    }
    putchar('"');
}

/* The bundle is not where we run it from: a CNI error (code 5) for every verb, VERSION included. */
static void broken_install(const char *fmt, ...)
{
    char what[2 * PATH_MAX], msg[sizeof what + 300], details[PATH_MAX + 400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "%s: incomplete install: %s", called, what);
    /* where the runtime found us (it execs a path) */
    const char *slash = strrchr(args[0], '/');
    char dir[PATH_MAX] = "/opt/cni/bin";
    if (slash) {
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - args[0]), args[0]);
    }
    snprintf(details, sizeof details, "the plugins run the bundle in dist/bin's hidden directory .underlay/, "
             "which `cp dist/bin/*` skips: install with `make install` (build/install.sh), or copy the "
             "directory with its hidden entries: cp -a dist/bin/. %s/", dir);
    printf("{\"cniVersion\": \"%s\", \"code\": 5, \"msg\": ", error_version());
    put_json_string(msg);
    printf(", \"details\": ");
    put_json_string(details);
    printf("}\n");
    exit(1);
}

/* Where the bundle's executable must be: beside the file we run from, whichever link we were called
 * by (.underlay/handoff in dist/bin, .underlay-<id>/handoff once installed). Exits when it is not there. */
static void find_bundle(void)
{
    if (bundle[0]) {
        return;   /* found already */
    }
    ssize_t n = readlink("/proc/self/exe", bundle, PATH_MAX);
    if (n > 0) {
        bundle[n] = '\0';
    } else if (!strchr(args[0], '/') || !realpath(args[0], bundle)) {
        /* no /proc (a bare chroot), and no path we were called by */
        broken_install("cannot tell where %s is (no /proc/self/exe)", args[0]);
    }
    char ours[sizeof bundle];
    snprintf(ours, sizeof ours, "%s", bundle);
    char *slash = strrchr(bundle, '/');
    strcpy(slash ? slash + 1 : bundle, "_internal");   /* its libraries: what a `cp` of the files leaves out */
    struct stat st;
    if (stat(bundle, &st) < 0 || !S_ISDIR(st.st_mode)) {
        broken_install("no bundle beside %s: %s/ is missing", ours, bundle);
    }
    strcpy(slash ? slash + 1 : bundle, "underlay");
    if (access(bundle, X_OK) < 0) {
        broken_install("no bundle beside %s: %s: %s", ours, bundle, strerror(errno));
    }
}

/* Run the plugin in-process: exec the bundle's executable beside this one. */
static void run_in_process(const char *variable, const char *fmt, ...)
{
    find_bundle();
    if (variable) {
        char text[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof text, fmt, ap);
        va_end(ap);
        setenv(variable, text, 1);
    }
    if (input_read) {   /* the plugin reads its stdin where it would have */
        int fd = memfd_create("cni-stdin", 0);
        size_t done = 0;
        while (fd >= 0 && done < input_size) {
            ssize_t n = write(fd, input + done, input_size - done);
            if (n < 0) {
                close(fd);
                fd = -1;
            } else {
                done += n;
            }
        }
        if (fd < 0 || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
            printf("{\"code\": 11, \"msg\": \"underlay: cannot pass stdin on: %s\"}\n", strerror(errno));
            exit(1);
        }
        close(fd);
    }
    /* `underlay PLUGIN ARGS...` (build/entry.py): argv[0] must be the bundle's own path, which
     * its bootloader reads when there is no /proc */
    char **argv = calloc(arg_count + 2, sizeof *argv);
    if (argv) {
        argv[0] = bundle;
        argv[1] = (char *)called;
        memcpy(argv + 2, args + 1, arg_count * sizeof *argv);   /* with the final NULL */
        execv(bundle, argv);
    }
    broken_install("cannot run %s: %s", bundle, strerror(errno));
}

static void read_stdin(void)
{
    size_t room = 1 << 16;
    input = malloc(room);
    for (;;) {
        if (input == NULL) {
            run_in_process("UNDERLAY_HANDOFF_STATUS", "out of memory reading stdin");
        }
        ssize_t n = read(0, input + input_size, room - input_size);
        if (n == 0 || (n < 0 && errno != EINTR)) {
            break;      /* a closed or absent stdin reads as empty, as in Python */
        }
        if (n > 0 && (input_size += n) == room) {
            input = realloc(input, room *= 2);
        }
    }
    input_read = 1;
}

static double timeout_of(void)
{
    const char *text = getenv("UNDERLAY_AGENT_TIMEOUT");
    char *end;
    double value = text && *text ? strtod(text, &end) : DEFAULT_TIMEOUT;
    if (text && *text && *end != '\0') {
        return DEFAULT_TIMEOUT;
    }
    return value > 0 && value < 3600 ? value : DEFAULT_TIMEOUT;
}

static void busy(const char *path, const char *fmt, double timeout)
{
    char why[256];
    snprintf(why, sizeof why, fmt, timeout, QUEUE_LIMIT);
    run_in_process("UNDERLAY_HANDOFF_ERROR", "underlayd at %s did not start the request (%s); nothing was done "
                   "(UNDERLAY_AGENT_TIMEOUT sets the bound)", path, why);
}

/* The worker's first answer (at most `size` bytes), or -1 with errno (ETIMEDOUT: the agent is silent). */
static ssize_t wait_for_worker(int sock, const char *path, double timeout, char *answer, size_t size)
{
    double started = now(CLOCK_MONOTONIC);
    for (;;) {
        struct pollfd p = {.fd = sock, .events = POLLIN};
        double wait = timeout < 1.0 ? timeout : 1.0;
        int ready = poll(&p, 1, (int)(wait * 1000));
        if (ready > 0) {
            return recv(sock, answer, size, 0);
        }
        if (ready < 0 && errno != EINTR) {
            return -1;
        }
        struct stat st;
        double silent = stat(path, &st) == 0
                        ? now(CLOCK_REALTIME) - (st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9)
                        : 1e300;   /* the socket is gone: the agent stopped */
        if (silent > timeout || now(CLOCK_MONOTONIC) - started > QUEUE_LIMIT) {
            errno = ETIMEDOUT;
            return -1;
        }
    }
}

/* UNDERLAY_TRACE_PHASES=/absolute/file (tests/bench/breakdown.py): one JSON line of this client's
 * CLOCK_MONOTONIC marks appended there at the end (cni/agent/phases.py, the worker's); unset, a mark
 * is one test of a NULL pointer. */
static const char *trace_path;
static const char *trace_names[8];
static double trace_times[8];
static int trace_count;

static void trace_mark(const char *name)
{
    if (trace_path && trace_count < 8) {
        trace_names[trace_count] = name;
        trace_times[trace_count++] = now(CLOCK_MONOTONIC);
    }
}

static void trace_write(void)
{
    if (!trace_path) {
        return;
    }
    int fd = open(trace_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        return;
    }
    char line[1024];
    int at = snprintf(line, sizeof line, "{\"who\": \"client\", \"pid\": %d, \"marks\": [", (int)getpid());
    for (int i = 0; i < trace_count; i++) {
        at += snprintf(line + at, sizeof line - at, "%s[\"%s\", %.9f]", i ? ", " : "", trace_names[i], trace_times[i]);
    }
    at += snprintf(line + at, sizeof line - at, "]}\n");
    if (write(fd, line, at) < 0) {
        /* a trace is best effort */
    }
    close(fd);
}

/* Append a NUL-terminated field to the payload. */
static void put(char **buf, size_t *len, size_t *room, const void *data, size_t size)
{
    while (*len + size + 1 > *room) {
        *buf = realloc(*buf, *room *= 2);
        if (*buf == NULL) {
            run_in_process("UNDERLAY_HANDOFF_STATUS", "out of memory building the request");
        }
    }
    memcpy(*buf + *len, data, size);
    *len += size;
    (*buf)[(*len)++] = '\0';
}

static void put_text(char **buf, size_t *len, size_t *room, const char *fmt, long value)
{
    char text[32];
    put(buf, len, room, text, snprintf(text, sizeof text, fmt, value));
}

/* argv, environment, umask, stdin: the request's payload, after its 8-byte length. */
static char *request_payload(const char *plugin, size_t *size)
{
    size_t len = 8, room = 1 << 16;
    char *buf = malloc(room);
    if (buf == NULL) {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "out of memory building the request");
    }
    mode_t mask = umask(0);
    umask(mask);
    long env_count = 0;
    while (environ[env_count]) {
        env_count++;
    }
    put(&buf, &len, &room, PROTOCOL, strlen(PROTOCOL));
    put(&buf, &len, &room, plugin, strlen(plugin));
    put_text(&buf, &len, &room, "%lo", (long)mask);
    put_text(&buf, &len, &room, "%ld", (long)arg_count);
    for (int i = 0; i < arg_count; i++) {
        put(&buf, &len, &room, args[i], strlen(args[i]));
    }
    put_text(&buf, &len, &room, "%ld", env_count);
    for (long i = 0; i < env_count; i++) {
        put(&buf, &len, &room, environ[i], strlen(environ[i]));
    }
    put(&buf, &len, &room, input, input_size);
    len--;   /* stdin follows the last field's NUL, unterminated */
    uint64_t body = len - 8;
    for (int i = 7; i >= 0; i--, body >>= 8) {
        buf[i] = (char)(body & 0xff);
    }
    *size = len;
    return buf;
}

/* The fds the request carries: stdout, stderr, netns, mount ns, root, cwd; 0, or -1 with errno
 * (those opened are closed). */
static int request_fds(int fds[6])
{
    fds[0] = 1;
    fds[1] = 2;
    fds[2] = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    fds[3] = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    fds[4] = open("/", O_RDONLY | O_CLOEXEC | O_DIRECTORY);
    fds[5] = open(".", O_RDONLY | O_CLOEXEC | O_DIRECTORY);
    if (fds[2] >= 0 && fds[3] >= 0 && fds[4] >= 0 && fds[5] >= 0) {
        return 0;
    }
    int saved = errno;
    for (int i = 2; i < 6; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    errno = saved;
    return -1;
}

/* The request with its fds (request_fds); 0, or -1 with errno. */
static int send_request(int sock, const char *buf, size_t size, const int fds[6])
{
    union {
        char space[CMSG_SPACE(6 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = size};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control.space, .msg_controllen = sizeof control.space};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(6 * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, 6 * sizeof(int));
    ssize_t sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (sent >= 0 && (size_t)sent < size) {
        ssize_t more = send(sock, buf + sent, size - sent, MSG_NOSIGNAL);
        sent = more < 0 ? more : sent + more;
    }
    return sent < 0 ? -1 : 0;
}

/* Bytes as Python's repr would show them, near enough for a debug line. */
static const char *printable(const char *data, size_t size)
{
    static char text[200];
    size_t at = 0;
    for (size_t i = 0; i < size && at < sizeof text - 5; i++) {
        unsigned char c = data[i];
        at += snprintf(text + at, sizeof text - at, c >= 32 && c < 127 && c != '\\' ? "%c" : "\\x%02x", c);
    }
    text[at] = '\0';
    return text;
}

int main(int argc, char **argv)
{
    trace_path = getenv("UNDERLAY_TRACE_PHASES");
    if (trace_path && trace_path[0] != '/') {
        trace_path = NULL;
    }
    trace_mark("main");
    args = argv;
    arg_count = argc;
    called = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    const char *command = getenv("CNI_COMMAND");
    const char *agent = getenv("UNDERLAY_AGENT");
    if (command && !strcmp(command, "VERSION")) {
        find_bundle();   /* a stat or two: VERSION stays a few syscalls */
        /* static (runtimes ask before every ADD and DEL): the bundle's answer, built in */
        return fputs(VERSION_OUTPUT, stdout) == EOF || fflush(stdout) == EOF;
    }
    if (!command || !*command || (agent && !strcmp(agent, "0"))) {
        run_in_process(NULL, NULL);   /* the about line, or never handed off: the plugin says why */
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            run_in_process(NULL, NULL);
        }
    }
    const char *path = getenv("UNDERLAY_SOCKET");
    if (!path || !*path) {
        path = DEFAULT_SOCKET;
    }
    double timeout = timeout_of();

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "no agent at %s: AF_UNIX path too long", path);
    }
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* a blocking connect to a full listen queue waits, bounded by SO_SNDTIMEO */
    struct timeval bound = {.tv_sec = (time_t)timeout, .tv_usec = (long)((timeout - (time_t)timeout) * 1e6)};
    if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &bound, sizeof bound) < 0) {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "no agent at %s: %s", path, strerror(errno));
    }
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if (errno == EAGAIN) {
            read_stdin();
            busy(path, "its queue stayed full for %g s", timeout);
        }
        run_in_process("UNDERLAY_HANDOFF_STATUS", "no agent at %s: %s", path, strerror(errno));
    }
    trace_mark("connected");
    /* only root's agent gets the request (it carries our fds and environment, and we print its answer);
     * anyone else listening there gets nothing, and the plugin runs here */
    struct ucred peer;
    socklen_t peer_size = sizeof peer;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_size) < 0) {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s: SO_PEERCRED: %s", path, strerror(errno));
    }
    if (peer.uid != 0) {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "%s is not root's: its listener runs as uid %u (pid %d); "
                       "not handing off", path, (unsigned)peer.uid, (int)peer.pid);
    }
    /* read while queued: a worker is taken only by a caller ready to send (a runtime writes stdin at once) */
    read_stdin();
    trace_mark("stdin read");
    /* the request made ready while the spare wakes up to answer; sent only after its b"R" (a caller
     * that gives up waiting must know nothing was started: it then runs the plugin itself) */
    size_t size;
    char *payload = request_payload(called, &size);
    int fds[6];
    if (request_fds(fds) < 0) {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s: opening the request's fds failed: %s",
                       path, strerror(errno));
    }
    find_bundle();   /* here, not first: while the spare wakes; before anything is handed off */
    trace_mark("request made");
    char answer[512];
    ssize_t got = wait_for_worker(sock, path, timeout, answer, sizeof answer);
    trace_mark("ready received");
    if (got < 0 && errno == ETIMEDOUT) {
        busy(path, "silent for over %g s, or %g s in its queue", timeout);
    }
    if (got < 0) {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s went away before serving: %s", path, strerror(errno));
    }
    if (got == 0) {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s closed the connection before serving", path);
    }
    if (answer[0] == 'N') {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s refused: %s", path, printable(answer + 1, got - 1));
    }
    if (got != 1 || answer[0] != 'R') {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s answered b'%s'", path,
                       printable(answer, got < 40 ? got : 40));
    }
    if (send_request(sock, payload, size, fds) < 0) {
        /* the worker has not got the request, so nothing has started: do it here */
        run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s: sending the request failed: %s",
                       path, strerror(errno));
    }
    trace_mark("request sent");
    for (int i = 2; i < 6; i++) {
        close(fds[i]);
    }
    /* from here the worker owns the invocation; this process only waits for it */
    size_t have = 0;
    for (;;) {
        ssize_t n = recv(sock, answer + have, sizeof answer - 1 - have, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == ECONNRESET) {
            /* the worker closed with our request unread (it gave up waiting for it): nothing started */
            run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s dropped the request unread", path);
        }
        if (n <= 0) {
            break;
        }
        if (have == 0) {
            trace_mark("answer received");
        }
        have += n;
        if (have == sizeof answer - 1) {
            break;
        }
    }
    trace_mark("connection closed");
    trace_write();
    answer[have] = '\0';
    if (have > 1 && answer[0] == 'X' && strspn(answer + 1, "0123456789") == have - 1) {
        return atoi(answer + 1) & 0xff;
    }
    if (have > 0 && answer[0] == 'F') {
        run_in_process("UNDERLAY_HANDOFF_STATUS", "agent at %s could not serve this context: %s",
                       path, printable(answer + 1, have - 1));
    }
    run_in_process("UNDERLAY_HANDOFF_ERROR", "underlayd's worker for this %s request ended without an answer "
                   "(killed?); what it did is undone by DEL", called);
    return 1;
}
