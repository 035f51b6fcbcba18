/* An LD_PRELOAD watcher of environment reads by thread (tests/httpd,
 * issue 11 item 9): getenv and secure_getenv, when the calling thread's
 * name starts with WATCH_PREFIX, append "THREAD NAME\n" to WATCH_LOG, then
 * do what libc does. Both macros are given by the compiler's command line:
 *
 *   cc -shared -fPIC -O2 -DWATCH_LOG='"/dir/getenv.log"' \
 *      -DWATCH_PREFIX='"amqp"' -o getenv_watch.so getenv_watch.c -ldl
 *
 * Only calls through the dynamic symbol are seen (Rust's std::env, other
 * libraries); glibc's own internal reads (the resolver's LOCALDOMAIN) are
 * not interposable. One write(2) per line on an O_APPEND descriptor, so
 * lines of concurrent threads and processes do not mix.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef char *(*getenv_fn)(const char *);

/* libc's function, looked up on first use: a constructor of a library
 * initialised before this one may already read the environment. */
static getenv_fn next(const char *symbol, getenv_fn *cache)
{
    if (*cache == NULL)
        *cache = (getenv_fn)dlsym(RTLD_NEXT, symbol);
    return *cache;
}

static void note(const char *name)
{
    char thread[16] = "";
    char line[512];
    int n, fd;

    /* The calling thread's own name: prctl(PR_GET_NAME), no file read. */
    if (pthread_getname_np(pthread_self(), thread, sizeof thread) != 0)
        return;
    if (strncmp(thread, WATCH_PREFIX, strlen(WATCH_PREFIX)) != 0)
        return;
    n = snprintf(line, sizeof line, "%s %s\n", thread, name ? name : "(null)");
    if (n <= 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    fd = open(WATCH_LOG, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)n) < 0) {
        /* Nothing to do: the test then misses a line and says so. */
    }
    close(fd);
}

char *getenv(const char *name)
{
    static getenv_fn real;
    getenv_fn f = next("getenv", &real);

    note(name);
    return f ? f(name) : NULL;
}

char *secure_getenv(const char *name)
{
    static getenv_fn real;
    getenv_fn f = next("secure_getenv", &real);

    note(name);
    return f ? f(name) : NULL;
}
