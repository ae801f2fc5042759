/*
 * A bare epoll echo server (RFC 862 over TCP), the baseline that
 * benches/compare.sh holds netloop's echo example against.
 *
 *   cc -O2 -o epoll-echo benches/peers/epoll-echo.c
 *   epoll-echo [HOST:PORT]          (default 127.0.0.1:7001)
 *
 * One thread, one epoll set, every socket edge-triggered and registered
 * once for input and output. A connection's event reads into one shared
 * 64 KiB buffer and writes each read back at once. What the kernel does not
 * take is kept as the connection's pending output, and reading stops until
 * it is written: the next event (EPOLLOUT) writes it, then reading goes on.
 * A short read ends the read loop (the next arrival raises a new edge), as
 * in netloop. TCP_NODELAY on every connection, as netloop sets by default.
 * SIGTERM or SIGINT ends it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (64 * 1024)
#define EVENTS 1024

struct conn {
    int fd;
    char *pending; /* output the kernel refused, or NULL */
    size_t off, len; /* pending[off..len] is still to write */
};

static char buf[BUF];

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void drop(struct conn *c)
{
    close(c->fd); /* also leaves the epoll set */
    free(c->pending);
    free(c);
}

/* Writes the pending output. 1: all written; 0: the kernel refused (wait
 * for EPOLLOUT); -1: the connection failed. */
static int flush(struct conn *c)
{
    while (c->off < c->len) {
        ssize_t n = send(c->fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->off += (size_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    return 1;
}

/* Echoes `n` bytes of `buf`; what the kernel refuses becomes pending.
 * 1: all written; 0: some pending; -1: failed. */
static int echo(struct conn *c, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = send(c->fd, buf + done, n - done, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -1;
            c->pending = malloc(n - done);
            if (!c->pending)
                return -1;
            memcpy(c->pending, buf + done, n - done);
            c->off = 0;
            c->len = n - done;
            return 0;
        }
        done += (size_t)w;
    }
    return 1;
}

/* An event for a connection: write what is pending, then read and echo
 * until the socket is drained or a write is refused. 0: close it. */
static int serve(struct conn *c, unsigned events)
{
    if (events & EPOLLERR)
        return 0;
    if (c->pending) {
        int r = flush(c);
        if (r <= 0)
            return r == 0;
    }
    for (;;) {
        ssize_t n = recv(c->fd, buf, BUF, 0);
        if (n == 0)
            return 0; /* end of file: nothing is pending, close */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN;
        }
        int r = echo(c, (size_t)n);
        if (r <= 0)
            return r == 0; /* wait for EPOLLOUT, reading nothing meanwhile */
        if (n < BUF)
            return 1;
    }
}

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1:7001";
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) {
        fprintf(stderr, "usage: %s [HOST:PORT]\n", argv[0]);
        return 2;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "%s: not an IPv4 address: %s\n", argv[0], host);
        return 2;
    }

    struct sigaction act = {.sa_handler = on_signal};
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("bind");
    if (listen(lfd, 1024) < 0)
        die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
        die("epoll_ctl");

    struct epoll_event events[EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, events, EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c) {
                if (!serve(c, events[i].events))
                    drop(c);
                continue;
            }
            for (;;) { /* the listener: accept every waiting connection */
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno == EINTR || errno == ECONNABORTED)
                        continue;
                    break; /* EAGAIN, or out of descriptors: next event */
                }
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c = calloc(1, sizeof *c);
                if (!c) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                          .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                    drop(c);
                    continue;
                }
            }
        }
    }
    return 0;
}
