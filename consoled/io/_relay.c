/* consoled.io._relay: the native relay, a thread that drains pty masters.
 *
 * One thread per daemon, with an epoll of its own, reads every master it is
 * given (a Source) without the GIL, puts what it read into the session's
 * ring (the record's memfd), writes it as `output` frames to the attached
 * clients whose connection is idle (a Link that is active), and queues it
 * for Python, which does the rest (the log file, the time index, the screen,
 * every other client) when it takes it.  Python keeps every decision: what
 * is registered, when a link is active, when a source pauses.
 *
 * The rules this keeps (see docs/performance.md, "The native relay"):
 *
 * - Nothing here owns a master: Python's owner closes the Source (which
 *   removes it from the epoll) before it closes the fd.  A Link owns a
 *   duplicate of its client's socket, so a socket Python closes can never be
 *   another connection when the thread writes to it.
 * - The ring is written before any client is: a client never holds output
 *   a crash could take from the ring.  The thread reads at most a source's
 *   `slack` bytes beyond what Python has taken, so it never overwrites ring
 *   bytes that Python exposes (the ring holds `slack` bytes more than it
 *   exposes; each record says how many, see consoled/io/record.py).
 * - A link writes a frame whole or deactivates: the rest of a frame the
 *   socket did not take (all of it if it took nothing) is kept for Python,
 *   which writes it before anything else.  `handled` is the stream offset up
 *   to which a link's client got (or has parked) the output from the thread
 *   (0 until it is first activated).
 * - One mutex guards everything shared; the thread never calls Python and
 *   never waits while holding it (every fd it uses is non-blocking).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_EVENTS 64
/* A first read shorter than this (an echo) was most likely all there was. */
#define SHORT_READ 512
#define READ_CHUNK (64 * 1024)
#define MAX_FRAME_DATA (256 * 1024)
#define STOP_KEY UINT64_MAX
/* Marks a link's socket in an epoll key (a source's generation never has it). */
#define LINK_BIT 0x80000000u
/* What the thread buffers of a client's input: more than one input message of
 * the client's (consoled attach sends at most 4 KiB in one). */
#define IN_BUF (64 * 1024)
/* Output that every client of its session got from the thread (their links
 * active, and Python says it has no others) is Python's too (the log file, the
 * time index, the screen), but not at once: Python hears of it at most the
 * relay's notify_delay late, or at once past NOTIFY_AT bytes, at a hangup, or
 * when the output holds an escape byte (it may be a terminal query, which
 * Python answers).  A keystroke's echo then does not wake the event loop while
 * the next key is on its way. */
#define NOTIFY_AT (16 * 1024)
#define ESC 0x1b
#define TIMER_KEY (UINT64_MAX - 1)

typedef struct Relay Relay;
typedef struct Source Source;
typedef struct Link Link;

struct Relay {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_t thread;
    int started;
    int epfd;
    int notify_fd; /* eventfd Python waits on */
    int stop_fd;   /* eventfd in the epoll: wakes the thread to stop */
    int stopping;
    int failed;    /* errno of epoll_wait if the thread died of it */
    char prefix[64];
    size_t prefix_len;
    char in_prefix[64];
    size_t in_prefix_len;
    Source **by_fd;
    int by_fd_len;
    Link **link_by_fd;
    int link_by_fd_len;
    uint32_t generation;
    Source *ready_sources;
    Link *ready_links;
    int notified;
    int urgent;   /* Python must hear of the ready ones now, not after notify_delay */
    struct timespec notify_delay;
    int timer_fd; /* timerfd in the epoll: a notification put off */
    int timer_armed;
};

struct Source {
    PyObject_HEAD
    Relay *relay;
    PyObject *data;
    int fd;
    uint32_t gen;
    int ring_fd;
    uint64_t capacity;
    uint64_t data_offset;
    uint64_t end_at;
    uint64_t end;
    uint64_t unstored_until;
    size_t slack; /* the most read and not yet taken: the ring's bytes beyond those exposed */
    int64_t read_ns; /* when the first byte not yet taken was read (CLOCK_REALTIME) */
    char *buf;
    size_t len;
    int armed;
    int paused;
    int closed;
    int hung_up;
    int error;
    int ready;
    int only_links; /* Python: every client of the session has a link (see NOTIFY_AT) */
    Source *next_ready;
    Link *links;
};

struct Link {
    PyObject_HEAD
    Source *source;
    PyObject *data;
    int fd;
    int active;
    int listed;
    int broken;
    uint64_t handled;
    char *rest;
    size_t rest_len;
    int ready;
    Link *next_ready;
    Link *next;
    /* The input half: while `input`, the thread reads the client's socket. */
    int input;
    int input_stopped; /* it stopped on its own: Python takes over (stop_input) */
    int typed;         /* it wrote keys to the terminal (Python is told once) */
    uint32_t in_gen;
    char *in_buf;      /* bytes read from the socket, not yet used */
    size_t in_len;
    char *unwritten;   /* an input's data the terminal did not take */
    size_t unwritten_len;
    uint64_t written;  /* input bytes written to the terminal since Python last asked */
    unsigned sized_rows, sized_cols; /* the last window size it put in force (0: none since asked) */
};

static PyTypeObject RelayType, SourceType, LinkType;

/* --- with the lock held ------------------------------------------------------------ */

static void notify(Relay *r) {
    if (!r->notified) {
        uint64_t one = 1;
        ssize_t k;
        do {
            k = write(r->notify_fd, &one, sizeof one);
        } while (k < 0 && errno == EINTR);
        r->notified = 1;
    }
}

static void source_ready(Relay *r, Source *s) {
    if (!s->ready) {
        s->ready = 1;
        s->next_ready = r->ready_sources;
        r->ready_sources = s;
    }
}

/* Python hears of the link at notify_delay at the latest. */
static void link_ready_later(Relay *r, Link *l) {
    if (!l->ready) {
        l->ready = 1;
        l->next_ready = r->ready_links;
        r->ready_links = l;
    }
}

/* Python must hear of the link now. */
static void link_ready(Relay *r, Link *l) {
    link_ready_later(r, l);
    r->urgent = 1;
}

static void unready_source(Relay *r, Source *s) {
    if (!s->ready)
        return;
    for (Source **p = &r->ready_sources; *p; p = &(*p)->next_ready) {
        if (*p == s) {
            *p = s->next_ready;
            break;
        }
    }
    s->ready = 0;
    s->next_ready = NULL;
}

static void unready_link(Relay *r, Link *l) {
    if (!l->ready)
        return;
    for (Link **p = &r->ready_links; *p; p = &(*p)->next_ready) {
        if (*p == l) {
            *p = l->next_ready;
            break;
        }
    }
    l->ready = 0;
    l->next_ready = NULL;
}

/* Watch the source's master, if it may be read: not paused, closed, hung up, or full. */
static int arm(Relay *r, Source *s) {
    if (s->armed || s->paused || s->closed || s->hung_up || s->len >= s->slack || r->epfd < 0)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)s->gen << 32) | (uint32_t)s->fd};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0)
        return -1;
    s->armed = 1;
    return 0;
}

/* Stop watching it.  DEL, not a MOD to no events: epoll reports a hangup whatever
 * was asked for, and a master whose terminal hung up would wake us for ever. */
static void disarm(Relay *r, Source *s) {
    if (s->armed) {
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        s->armed = 0;
    }
}

static int pwrite_all(int fd, const char *data, size_t n, uint64_t at) {
    while (n) {
        ssize_t k = pwrite(fd, data, n, (off_t)at);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0) {
            errno = EIO;
            return -1;
        }
        data += k;
        n -= (size_t)k;
        at += (uint64_t)k;
    }
    return 0;
}

/* Put n bytes at stream offset `start` into the ring, then its end. */
static int ring_write(Source *s, const char *data, size_t n, uint64_t start) {
    uint64_t pos = start % s->capacity;
    size_t first = n;
    if (first > s->capacity - pos)
        first = (size_t)(s->capacity - pos);
    if (pwrite_all(s->ring_fd, data, first, s->data_offset + pos) < 0)
        return -1;
    if (n > first && pwrite_all(s->ring_fd, data + first, n - first, s->data_offset) < 0)
        return -1;
    uint64_t end = htole64(start + n);
    return pwrite_all(s->ring_fd, (const char *)&end, sizeof end, s->end_at);
}

static size_t bin_header(char *out, size_t n) {
    if (n < 0x100) {
        out[0] = (char)0xc4;
        out[1] = (char)n;
        return 2;
    }
    if (n < 0x10000) {
        out[0] = (char)0xc5;
        out[1] = (char)(n >> 8);
        out[2] = (char)n;
        return 3;
    }
    out[0] = (char)0xc6;
    out[1] = (char)(n >> 24);
    out[2] = (char)(n >> 16);
    out[3] = (char)(n >> 8);
    out[4] = (char)n;
    return 5;
}

/* The head of the `output` frame of n bytes (length, prefix, bin header). */
static size_t frame_head(Relay *r, char *head, size_t n) {
    char bin[5];
    size_t b = bin_header(bin, n);
    uint32_t body = (uint32_t)(r->prefix_len + b + n);
    head[0] = (char)(body >> 24);
    head[1] = (char)(body >> 16);
    head[2] = (char)(body >> 8);
    head[3] = (char)body;
    memcpy(head + 4, r->prefix, r->prefix_len);
    memcpy(head + 4 + r->prefix_len, bin, b);
    return 4 + r->prefix_len + b;
}

/* Write the frame to an active link; what the socket does not take is parked. */
static void link_send(Relay *r, Link *l, const char *head, size_t head_len, const char *data, size_t n) {
    struct iovec iov[2] = {{(void *)head, head_len}, {(void *)data, n}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    size_t total = head_len + n;
    ssize_t k;
    do {
        k = sendmsg(l->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (k < 0 && errno == EINTR);
    if (k == (ssize_t)total)
        return;
    if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            l->broken = errno;
        k = 0;
    }
    size_t sent = (size_t)k;
    size_t left = total - sent;
    char *rest = malloc(left);
    if (rest) {
        size_t h = sent < head_len ? head_len - sent : 0;
        if (h)
            memcpy(rest, head + sent, h);
        size_t from = sent > head_len ? sent - head_len : 0;
        memcpy(rest + h, data + from, n - from);
        l->rest = rest;
        l->rest_len = left;
    } else {
        /* The frame cannot be finished, so the stream cannot go on: the
         * connection is broken for both ends (the client resumes elsewhere). */
        l->broken = ENOMEM;
        shutdown(l->fd, SHUT_RDWR);
    }
    l->active = 0;
    link_ready(r, l);
}

/* Read what the master has (at most `slack` beyond what Python took), store it,
 * send it to the active links, queue it for Python. */
static void pump(Relay *r, Source *s) {
    size_t room = s->slack - s->len;
    if (!s->buf) {
        s->buf = malloc(s->slack);
        if (!s->buf) {
            s->error = ENOMEM;
            s->hung_up = 1;
            disarm(r, s);
            source_ready(r, s);
            return;
        }
    }
    char *at = s->buf + s->len;
    size_t got = 0;
    int hup = 0;
    while (got < room) {
        size_t want = room - got;
        if (want > READ_CHUNK)
            want = READ_CHUNK;
        ssize_t k = read(s->fd, at + got, want);
        if (k > 0) {
            got += (size_t)k;
            if (got < SHORT_READ)
                break;
            continue;
        }
        if (k == 0) {
            hup = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno != EIO && errno != ENXIO)
            s->error = errno;
        hup = 1;
        break;
    }
    if (got) {
        if (!s->len) { /* the first byte Python has not taken */
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            s->read_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
        }
        uint64_t start = s->end;
        s->end += got;
        if (ring_write(s, at, got, start) < 0)
            s->unstored_until = s->end;
        char head[4 + 64 + 5];
        size_t head_len = 0;
        int all_sent = s->only_links && s->links;
        for (Link *l = s->links; l; l = l->next) {
            if (!l->active) {
                all_sent = 0;
                continue;
            }
            if (!head_len)
                head_len = frame_head(r, head, got);
            link_send(r, l, head, head_len, at, got);
            l->handled = s->end;
            all_sent &= l->active; /* a frame left unfinished: Python writes the rest */
        }
        s->len += got;
        source_ready(r, s);
        if (!all_sent || s->len >= NOTIFY_AT || memchr(at, ESC, got))
            r->urgent = 1;
    }
    if (hup) {
        s->hung_up = 1;
        disarm(r, s);
        source_ready(r, s);
        r->urgent = 1;
    } else if (s->len >= s->slack) {
        disarm(r, s); /* full: until Python takes it */
    }
}

/* The thread stops reading the client's input: Python goes on from what is left. */
static void input_stop(Relay *r, Link *l, int tell) {
    if (!l->input)
        return;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, l->fd, NULL);
    if (l->fd < r->link_by_fd_len && r->link_by_fd[l->fd] == l)
        r->link_by_fd[l->fd] = NULL;
    l->input = 0;
    if (tell) {
        l->input_stopped = 1;
        link_ready(r, l);
    }
}

/* The data of the `input` message whose body is body[0:size], if it is one the
 * way the protocol's own encoder writes it (a map of `type` and `data`); else
 * NULL: Python reads it (and says what is wrong with it, if anything). */
static const char *input_data(Relay *r, const unsigned char *body, size_t size, size_t *len) {
    size_t p = r->in_prefix_len;
    if (size < p + 2 || memcmp(body, r->in_prefix, p) != 0)
        return NULL;
    size_t h, n;
    switch (body[p]) {
    case 0xc4:
        h = 2;
        n = body[p + 1];
        break;
    case 0xc5:
        if (size < p + 3)
            return NULL;
        h = 3;
        n = ((size_t)body[p + 1] << 8) | body[p + 2];
        break;
    case 0xc6:
        if (size < p + 5)
            return NULL;
        h = 5;
        n = ((size_t)body[p + 1] << 24) | ((size_t)body[p + 2] << 16) | ((size_t)body[p + 3] << 8) | body[p + 4];
        break;
    default:
        return NULL;
    }
    if (p + h + n != size)
        return NULL;
    *len = n;
    return (const char *)body + p + h;
}

/* A msgpack unsigned integer at body[*at] (any width msgpack writes), or -1. */
static long msgpack_uint(const unsigned char *body, size_t size, size_t *at) {
    size_t p = *at;
    if (p >= size)
        return -1;
    unsigned char c = body[p];
    if (c <= 0x7f) {
        *at = p + 1;
        return c;
    }
    size_t w = c == 0xcc ? 1 : c == 0xcd ? 2 : c == 0xce ? 4 : 0;
    if (!w || p + 1 + w > size)
        return -1;
    long v = 0;
    for (size_t i = 0; i < w; i++)
        v = (v << 8) | body[p + 1 + i];
    *at = p + 1 + w;
    return v;
}

/* Whether body[0:size] is a `window_size` message with a size the protocol
 * allows (1 to 65535 each): a map of `type`, `rows` and `cols`, in any order,
 * nothing else.  Anything else is Python's (which says what is wrong). */
static int window_size(const unsigned char *body, size_t size, unsigned *rows, unsigned *cols) {
    static const char name[] = "window_size";
    const size_t name_len = sizeof name - 1;
    if (size < 1 || body[0] != 0x83)
        return 0;
    long got_rows = -1, got_cols = -1;
    int got_type = 0;
    size_t at = 1;
    for (int i = 0; i < 3; i++) {
        if (at + 5 > size || body[at] != 0xa4)
            return 0;
        const unsigned char *key = body + at + 1;
        at += 5;
        if (memcmp(key, "type", 4) == 0 && !got_type) {
            if (at + 1 + name_len > size || body[at] != (0xa0 | name_len) ||
                memcmp(body + at + 1, name, name_len) != 0)
                return 0;
            at += 1 + name_len;
            got_type = 1;
        } else if (memcmp(key, "rows", 4) == 0 && got_rows < 0) {
            if ((got_rows = msgpack_uint(body, size, &at)) < 0)
                return 0;
        } else if (memcmp(key, "cols", 4) == 0 && got_cols < 0) {
            if ((got_cols = msgpack_uint(body, size, &at)) < 0)
                return 0;
        } else {
            return 0;
        }
    }
    if (at != size || got_rows < 1 || got_rows > 65535 || got_cols < 1 || got_cols > 65535)
        return 0;
    *rows = (unsigned)got_rows;
    *cols = (unsigned)got_cols;
    return 1;
}

/* Read the client's socket; write each `input` message's keys to the terminal,
 * and put each `window_size` in force (the client is the session's only
 * attached one, whose size is the terminal's by any policy).  Anything else
 * (another message, one not encoded as ours, a size out of range, a terminal
 * that does not take all of the keys, the end of the stream) stops it: Python
 * goes on. */
static void link_read(Relay *r, Link *l) {
    Source *s = l->source;
    if (!l->in_buf && !(l->in_buf = malloc(IN_BUF))) {
        input_stop(r, l, 1);
        return;
    }
    int drained = 0;
    for (;;) {
        while (l->in_len >= 4) {
            const unsigned char *b = (const unsigned char *)l->in_buf;
            size_t size = ((size_t)b[0] << 24) | ((size_t)b[1] << 16) | ((size_t)b[2] << 8) | b[3];
            if (size > IN_BUF - 4) {
                input_stop(r, l, 1); /* larger than we hold: Python's (which bounds it) */
                return;
            }
            if (4 + size > l->in_len)
                break; /* the rest of it is still to come */
            size_t n;
            const char *data = input_data(r, b + 4, size, &n);
            unsigned rows, cols;
            if (!data && !s->closed && !s->hung_up && window_size(b + 4, size, &rows, &cols)) {
                struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
                if (ioctl(s->fd, TIOCSWINSZ, &ws) < 0) {
                    input_stop(r, l, 1); /* Python sets it, and sees why it fails */
                    return;
                }
                l->sized_rows = rows;
                l->sized_cols = cols;
                l->in_len -= 4 + size;
                memmove(l->in_buf, l->in_buf + 4 + size, l->in_len);
                /* Python records it (the screen, `ls`) when it hears of it: a
                 * resize, or an attach, takes it before it changes the size. */
                link_ready_later(r, l);
                continue;
            }
            if (!data || s->closed || s->hung_up) {
                input_stop(r, l, 1);
                return;
            }
            size_t k = 0;
            while (k < n) {
                ssize_t w = write(s->fd, data + k, n - k);
                if (w > 0) {
                    k += (size_t)w;
                    continue;
                }
                if (w < 0 && errno == EINTR)
                    continue;
                break; /* full (EAGAIN), or gone: Python finds out */
            }
            if (k < n) {
                char *rest = malloc(n - k);
                if (rest) {
                    memcpy(rest, data + k, n - k);
                    l->unwritten = rest;
                    l->unwritten_len = n - k;
                } else {
                    k = n; /* out of memory: dropped, as a full tty input buffer drops keys */
                }
            }
            l->written += k;
            l->in_len -= 4 + size;
            memmove(l->in_buf, l->in_buf + 4 + size, l->in_len);
            if (k && !l->typed) {
                l->typed = 1;
                link_ready(r, l); /* Python records the first keys */
            }
            if (l->unwritten) {
                input_stop(r, l, 1);
                return;
            }
        }
        if (drained)
            return; /* the epoll says when more comes (a recv now would find nothing) */
        size_t room = IN_BUF - l->in_len;
        ssize_t got = recv(l->fd, l->in_buf + l->in_len, room, MSG_DONTWAIT);
        if (got > 0) {
            l->in_len += (size_t)got;
            drained = (size_t)got < room; /* a keystroke: most likely all there was */
            continue;
        }
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        input_stop(r, l, 1); /* the end of the stream, or an error: Python's read sees it too */
        return;
    }
}

static void *relay_main(void *arg) {
    Relay *r = arg;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(r->epfd, evs, MAX_EVENTS, -1);
        if (n < 0 && errno == EINTR)
            continue;
        pthread_mutex_lock(&r->lock);
        if (n < 0) {
            r->failed = errno;
            r->stopping = 1;
        }
        if (r->stopping) {
            notify(r);
            pthread_mutex_unlock(&r->lock);
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            uint64_t key = evs[i].data.u64;
            if (key == STOP_KEY)
                continue;
            if (key == TIMER_KEY) {
                uint64_t expired;
                while (read(r->timer_fd, &expired, sizeof expired) < 0 && errno == EINTR) {
                }
                r->timer_armed = 0;
                r->urgent = 1;
                continue;
            }

            int fd = (int)(uint32_t)key;
            uint32_t gen = (uint32_t)(key >> 32);
            if (gen & LINK_BIT) {
                Link *l = fd < r->link_by_fd_len ? r->link_by_fd[fd] : NULL;
                if (!l || l->in_gen != gen || !l->input)
                    continue; /* stopped since epoll_wait returned */
                link_read(r, l);
                continue;
            }
            Source *s = fd < r->by_fd_len ? r->by_fd[fd] : NULL;
            if (!s || s->gen != gen || !s->armed)
                continue; /* closed, or paused, since epoll_wait returned */
            pump(r, s);
        }
        if ((r->ready_sources || r->ready_links) && !r->notified) {
            if (r->urgent) {
                notify(r);
            } else if (!r->timer_armed) {
                struct itimerspec at = {.it_value = r->notify_delay};
                if (timerfd_settime(r->timer_fd, 0, &at, NULL) == 0)
                    r->timer_armed = 1;
                else
                    notify(r);
            }
        }
        if (r->notified)
            r->urgent = 0;
        pthread_mutex_unlock(&r->lock);
    }
}

/* --- Relay ------------------------------------------------------------------------- */

static void relay_stop(Relay *self) {
    if (!self->started)
        return;
    pthread_mutex_lock(&self->lock);
    self->stopping = 1;
    pthread_mutex_unlock(&self->lock);
    uint64_t one = 1;
    ssize_t k;
    do {
        k = write(self->stop_fd, &one, sizeof one);
    } while (k < 0 && errno == EINTR);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->started = 0;
}

static void relay_close_fds(Relay *self);

static void relay_dealloc(Relay *self) {
    relay_stop(self);
    relay_close_fds(self);
    free(self->by_fd);
    free(self->link_by_fd);
    pthread_mutex_destroy(&self->lock);
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
}

static PyObject *relay_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"prefix", "input_prefix", "notify_delay", NULL};
    Py_buffer prefix, in_prefix;
    double delay;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*d", kwlist, &prefix, &in_prefix, &delay))
        return NULL;
    if (prefix.len <= 0 || prefix.len > 64 || in_prefix.len <= 0 || in_prefix.len > 64 ||
        !(delay >= 1e-6 && delay <= 3600.0)) {
        PyBuffer_Release(&prefix);
        PyBuffer_Release(&in_prefix);
        PyErr_SetString(PyExc_ValueError,
                        "prefixes must be 1 to 64 bytes, notify_delay 1 us to an hour (seconds)");
        return NULL;
    }
    Relay *self = (Relay *)type->tp_alloc(type, 0);
    if (!self) {
        PyBuffer_Release(&prefix);
        PyBuffer_Release(&in_prefix);
        return NULL;
    }
    self->epfd = self->notify_fd = self->stop_fd = self->timer_fd = -1;
    long long delay_ns = (long long)(delay * 1e9);
    self->notify_delay.tv_sec = (time_t)(delay_ns / 1000000000LL);
    self->notify_delay.tv_nsec = (long)(delay_ns % 1000000000LL);
    pthread_mutex_init(&self->lock, NULL);
    memcpy(self->prefix, prefix.buf, (size_t)prefix.len);
    self->prefix_len = (size_t)prefix.len;
    memcpy(self->in_prefix, in_prefix.buf, (size_t)in_prefix.len);
    self->in_prefix_len = (size_t)in_prefix.len;
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&in_prefix);
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->notify_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    self->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    self->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (self->epfd < 0 || self->notify_fd < 0 || self->stop_fd < 0 || self->timer_fd < 0)
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = STOP_KEY};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->stop_fd, &ev) < 0)
        goto fail;
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_KEY};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->timer_fd, &tev) < 0)
        goto fail;

    int err = pthread_create(&self->thread, NULL, relay_main, self);
    if (err) {
        errno = err;
        goto fail;
    }
    self->started = 1;
    return (PyObject *)self;
fail:
    PyErr_SetFromErrno(PyExc_OSError);
    Py_DECREF(self);
    return NULL;
}

static PyObject *relay_fileno(Relay *self, PyObject *unused) {
    return PyLong_FromLong(self->notify_fd);
}

/* The sources with something to take, and the links their thread deactivated. */
static PyObject *relay_events(Relay *self, PyObject *unused) {
    PyObject *sources = PyList_New(0), *links = PyList_New(0);
    if (!sources || !links)
        goto fail;
    uint64_t count;
    while (read(self->notify_fd, &count, sizeof count) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&self->lock);
    Source *s = self->ready_sources;
    Link *l = self->ready_links;
    self->ready_sources = NULL;
    self->ready_links = NULL;
    self->notified = 0;
    int failed = self->failed;
    for (; s; s = s->next_ready) {
        s->ready = 0;
        if (PyList_Append(sources, (PyObject *)s) < 0)
            break;
    }
    for (; l; l = l->next_ready) {
        l->ready = 0;
        if (PyList_Append(links, (PyObject *)l) < 0)
            break;
    }
    /* Unlinked from the lists even on an error (the objects are still in them). */
    for (Source *t = s; t; t = t->next_ready)
        t->ready = 0;
    for (Link *t = l; t; t = t->next_ready)
        t->ready = 0;
    pthread_mutex_unlock(&self->lock);
    if (PyErr_Occurred())
        goto fail;
    if (failed) {
        errno = failed;
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    PyObject *out = PyTuple_Pack(2, sources, links);
    Py_DECREF(sources);
    Py_DECREF(links);
    return out;
fail:
    Py_XDECREF(sources);
    Py_XDECREF(links);
    return NULL;
}

static void relay_close_fds(Relay *self) {
    if (self->epfd >= 0)
        close(self->epfd);
    if (self->notify_fd >= 0)
        close(self->notify_fd);
    if (self->stop_fd >= 0)
        close(self->stop_fd);
    if (self->timer_fd >= 0)
        close(self->timer_fd);
    self->epfd = self->notify_fd = self->stop_fd = self->timer_fd = -1;
}

/* Stop the thread and close the relay's own fds; its sources read nothing more. */
static PyObject *relay_close(Relay *self, PyObject *unused) {
    relay_stop(self);
    pthread_mutex_lock(&self->lock);
    /* A source still registered is closed: the epoll it is in is gone. */
    for (int fd = 0; fd < self->by_fd_len; fd++) {
        Source *s = self->by_fd[fd];
        if (s) {
            s->armed = 0;
            s->closed = 1;
            self->by_fd[fd] = NULL;
        }
    }
    for (int fd = 0; fd < self->link_by_fd_len; fd++) {
        Link *l = self->link_by_fd[fd];
        if (l) {
            l->input = 0;
            self->link_by_fd[fd] = NULL;
        }
    }
    relay_close_fds(self);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyMethodDef relay_methods[] = {
    {"fileno", (PyCFunction)relay_fileno, METH_NOARGS, "The eventfd that is readable when events() has something."},
    {"events", (PyCFunction)relay_events, METH_NOARGS,
     "(sources, links): the sources with output or a hangup to take, the links the thread deactivated."},
    {"close", (PyCFunction)relay_close, METH_NOARGS, "Stop the thread (its sources read nothing more)."},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "consoled.io._relay.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Relay(prefix, input_prefix, notify_delay): the thread that drains the masters.",
    .tp_new = relay_new,
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_methods = relay_methods,
};

/* --- Source ------------------------------------------------------------------------ */

static void source_close_locked(Relay *r, Source *s) {
    if (s->closed)
        return;
    disarm(r, s);
    s->closed = 1;
    if (s->fd < r->by_fd_len && r->by_fd[s->fd] == s)
        r->by_fd[s->fd] = NULL;
    unready_source(r, s);
    for (Link *l = s->links; l; l = l->next) {
        l->active = 0;
        input_stop(r, l, 1);
    }
}

static int source_traverse(Source *self, visitproc visit, void *arg) {
    Py_VISIT(self->data);
    return 0;
}

static int source_clear(Source *self) {
    Py_CLEAR(self->data);
    return 0;
}

static void source_dealloc(Source *self) {
    PyObject_GC_UnTrack(self);
    if (self->relay) {
        pthread_mutex_lock(&self->relay->lock);
        source_close_locked(self->relay, self);
        pthread_mutex_unlock(&self->relay->lock);
    }
    free(self->buf);
    Py_CLEAR(self->data);
    Py_CLEAR(self->relay);
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
}

static PyObject *source_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"relay", "fd", "ring_fd", "capacity", "data_offset", "end_at", "end", "slack", NULL};
    Relay *relay;
    int fd, ring_fd;
    unsigned long long capacity, data_offset, end_at, end;
    Py_ssize_t slack;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!iiKKKKn", kwlist, &RelayType, &relay, &fd, &ring_fd,
                                     &capacity, &data_offset, &end_at, &end, &slack))
        return NULL;
    if (fd < 0 || ring_fd < 0 || slack <= 0 || slack > MAX_FRAME_DATA || capacity <= (unsigned long long)slack) {
        PyErr_SetString(PyExc_ValueError, "bad fd, a slack not 1 to 256 KiB, or a ring no larger than it");
        return NULL;
    }
    /* The thread must never wait on the master with the lock held. */
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0))
        return PyErr_SetFromErrno(PyExc_OSError);
    Source *self = (Source *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->fd = fd;
    self->ring_fd = ring_fd;
    self->capacity = capacity;
    self->data_offset = data_offset;
    self->end_at = end_at;
    self->end = end;
    self->slack = (size_t)slack;
    self->paused = 1; /* until resume(): Python says when to start */
    pthread_mutex_lock(&relay->lock);
    if (fd >= relay->by_fd_len) {
        int len = relay->by_fd_len ? relay->by_fd_len : 64;
        while (len <= fd)
            len *= 2;
        Source **grown = realloc(relay->by_fd, sizeof(Source *) * (size_t)len);
        if (!grown) {
            pthread_mutex_unlock(&relay->lock);
            self->closed = 1;
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
        memset(grown + relay->by_fd_len, 0, sizeof(Source *) * (size_t)(len - relay->by_fd_len));
        relay->by_fd = grown;
        relay->by_fd_len = len;
    }
    if (relay->by_fd[fd]) {
        pthread_mutex_unlock(&relay->lock);
        self->closed = 1;
        Py_DECREF(self);
        PyErr_Format(PyExc_ValueError, "fd %d has a source already", fd);
        return NULL;
    }
    relay->by_fd[fd] = self;
    self->gen = ++relay->generation & ~LINK_BIT;
    Py_INCREF(relay);
    self->relay = relay;
    pthread_mutex_unlock(&relay->lock);
    return (PyObject *)self;
}

/* (data, unstored_until, hung_up, error, read_ns): what was read since the last
 * take, and when its first byte was (ns since the epoch; 0 with no data). */
static PyObject *source_take(Source *self, PyObject *unused) {
    Relay *r = self->relay;
    pthread_mutex_lock(&r->lock);
    long long read_ns = self->len ? (long long)self->read_ns : 0;
    PyObject *data = PyBytes_FromStringAndSize(self->buf, (Py_ssize_t)self->len);
    if (data) {
        self->len = 0;
        free(self->buf);
        self->buf = NULL;
        unready_source(r, self);
        if (arm(r, self) < 0 && !self->error) {
            self->error = errno;
            self->hung_up = 1;
        }
    }
    unsigned long long unstored = self->unstored_until;
    int hung_up = self->hung_up, error = self->error;
    pthread_mutex_unlock(&r->lock);
    if (!data)
        return NULL;
    return Py_BuildValue("(NKOiL)", data, unstored, hung_up ? Py_True : Py_False, error, read_ns);
}

static PyObject *source_pause(Source *self, PyObject *unused) {
    pthread_mutex_lock(&self->relay->lock);
    self->paused = 1;
    disarm(self->relay, self);
    pthread_mutex_unlock(&self->relay->lock);
    Py_RETURN_NONE;
}

static PyObject *source_resume(Source *self, PyObject *unused) {
    Relay *r = self->relay;
    pthread_mutex_lock(&r->lock);
    self->paused = 0;
    int failed = arm(r, self) < 0 ? errno : 0;
    pthread_mutex_unlock(&r->lock);
    if (failed) {
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *source_close(Source *self, PyObject *unused) {
    pthread_mutex_lock(&self->relay->lock);
    source_close_locked(self->relay, self);
    pthread_mutex_unlock(&self->relay->lock);
    Py_RETURN_NONE;
}

static PyObject *source_get_end(Source *self, void *closure) {
    pthread_mutex_lock(&self->relay->lock);
    unsigned long long end = self->end;
    pthread_mutex_unlock(&self->relay->lock);
    return PyLong_FromUnsignedLongLong(end);
}

static PyObject *source_get_closed(Source *self, void *closure) {
    return PyBool_FromLong(self->closed);
}

static PyObject *source_get_only_links(Source *self, void *closure) {
    return PyBool_FromLong(self->only_links);
}

static int source_set_only_links(Source *self, PyObject *value, void *closure) {
    int on = value ? PyObject_IsTrue(value) : 0;
    if (on < 0)
        return -1;
    pthread_mutex_lock(&self->relay->lock);
    self->only_links = on;
    pthread_mutex_unlock(&self->relay->lock);
    return 0;
}

static PyObject *source_get_data(Source *self, void *closure) {
    return Py_NewRef(self->data ? self->data : Py_None);
}

static int source_set_data(Source *self, PyObject *value, void *closure) {
    Py_XSETREF(self->data, Py_XNewRef(value));
    return 0;
}

static PyMethodDef source_methods[] = {
    {"take", (PyCFunction)source_take, METH_NOARGS,
     "(data, unstored_until, hung_up, error, read_ns): the output read since the last take."},
    {"pause", (PyCFunction)source_pause, METH_NOARGS, "Read nothing more until resume()."},
    {"resume", (PyCFunction)source_resume, METH_NOARGS, "Read again (a source starts paused)."},
    {"close", (PyCFunction)source_close, METH_NOARGS, "Never touch the master again (before it is closed)."},
    {NULL}};

static PyGetSetDef source_getset[] = {
    {"end", (getter)source_get_end, NULL, "Stream offset after the last byte read.", NULL},
    {"closed", (getter)source_get_closed, NULL, NULL, NULL},
    {"only_links", (getter)source_get_only_links, (setter)source_set_only_links,
     "Every client of the session has a link: output all of them got may wait a moment for Python.",
     NULL},
    {"data", (getter)source_get_data, (setter)source_set_data, "Python's own.", NULL},
    {NULL}};

static PyTypeObject SourceType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "consoled.io._relay.Source",
    .tp_basicsize = sizeof(Source),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Source(relay, fd, ring_fd, capacity, data_offset, end_at, end, slack): a master the relay drains.",
    .tp_new = source_new,
    .tp_dealloc = (destructor)source_dealloc,
    .tp_traverse = (traverseproc)source_traverse,
    .tp_clear = (inquiry)source_clear,
    .tp_methods = source_methods,
    .tp_getset = source_getset,
};

/* --- Link -------------------------------------------------------------------------- */

static void link_close_locked(Relay *r, Link *self) {
    input_stop(r, self, 0);
    if (self->listed) {
        for (Link **p = &self->source->links; *p; p = &(*p)->next) {
            if (*p == self) {
                *p = self->next;
                break;
            }
        }
        self->listed = 0;
        self->next = NULL;
    }
    self->active = 0;
    unready_link(r, self);
}

static int link_traverse(Link *self, visitproc visit, void *arg) {
    Py_VISIT(self->data);
    Py_VISIT((PyObject *)self->source);
    return 0;
}

static int link_clear(Link *self) {
    Py_CLEAR(self->data);
    return 0;
}

static void link_dealloc(Link *self) {
    PyObject_GC_UnTrack(self);
    if (self->source) {
        pthread_mutex_lock(&self->source->relay->lock);
        link_close_locked(self->source->relay, self);
        pthread_mutex_unlock(&self->source->relay->lock);
    }
    if (self->fd >= 0)
        close(self->fd);
    free(self->rest);
    free(self->in_buf);
    free(self->unwritten);
    Py_CLEAR(self->data);
    Py_CLEAR(self->source);
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
}

static PyObject *link_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"source", "fd", NULL};
    Source *source;
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!i", kwlist, &SourceType, &source, &fd))
        return NULL;
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Link *self = (Link *)type->tp_alloc(type, 0);
    if (!self) {
        close(dup);
        return NULL;
    }
    self->fd = dup;
    Py_INCREF(source);
    self->source = source;
    Relay *r = source->relay;
    pthread_mutex_lock(&r->lock);
    if (!source->closed) {
        self->next = source->links;
        source->links = self;
        self->listed = 1;
    }
    pthread_mutex_unlock(&r->lock);
    return (PyObject *)self;
}

/* Let the thread write output to the client from now on; False (nothing changes)
 * if it cannot: output is queued for Python that the client must get first, the
 * link holds the rest of a frame, or it is closed or broken. */
static PyObject *link_activate(Link *self, PyObject *unused) {
    Relay *r = self->source->relay;
    pthread_mutex_lock(&r->lock);
    int ok = self->listed && !self->source->closed && !self->broken && !self->rest && self->source->len == 0;
    if (ok) {
        self->active = 1;
        self->handled = self->source->end;
    }
    pthread_mutex_unlock(&r->lock);
    return PyBool_FromLong(ok);
}

/* The thread writes nothing more; returns the rest of a frame it could not
 * finish (b"" if none), which the client must get before anything else. */
static PyObject *link_deactivate(Link *self, PyObject *unused) {
    Relay *r = self->source->relay;
    pthread_mutex_lock(&r->lock);
    self->active = 0;
    PyObject *rest = PyBytes_FromStringAndSize(self->rest, (Py_ssize_t)self->rest_len);
    if (rest) {
        free(self->rest);
        self->rest = NULL;
        self->rest_len = 0;
    }
    pthread_mutex_unlock(&r->lock);
    return rest;
}

/* Let the thread read the client's input and write its keys to the terminal;
 * False if it may not (closed, the terminal gone, or input is left over). */
static PyObject *link_start_input(Link *self, PyObject *unused) {
    Source *s = self->source;
    Relay *r = s->relay;
    pthread_mutex_lock(&r->lock);
    int ok = !self->input && self->listed && self->fd >= 0 && !s->closed && !s->hung_up && !self->in_len &&
             !self->unwritten && r->epfd >= 0;
    if (ok && self->fd >= r->link_by_fd_len) {
        int len = r->link_by_fd_len ? r->link_by_fd_len : 64;
        while (len <= self->fd)
            len *= 2;
        Link **grown = realloc(r->link_by_fd, sizeof(Link *) * (size_t)len);
        if (grown) {
            memset(grown + r->link_by_fd_len, 0, sizeof(Link *) * (size_t)(len - r->link_by_fd_len));
            r->link_by_fd = grown;
            r->link_by_fd_len = len;
        } else {
            ok = 0;
        }
    }
    if (ok) {
        self->in_gen = (++r->generation & ~LINK_BIT) | LINK_BIT;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)self->in_gen << 32) | (uint32_t)self->fd};
        r->link_by_fd[self->fd] = self;
        if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, self->fd, &ev) < 0) {
            r->link_by_fd[self->fd] = NULL;
            ok = 0;
        } else {
            self->input = 1;
            self->input_stopped = 0;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return PyBool_FromLong(ok);
}

/* Stop reading the client's input (if the thread still does); returns
 * (left, unwritten, written): the bytes read and not used (the start of
 * messages for Python to read), the keys of an input the terminal did not
 * take, and how many bytes of input reached the terminal since the last call. */
static PyObject *link_stop_input(Link *self, PyObject *unused) {
    Relay *r = self->source->relay;
    pthread_mutex_lock(&r->lock);
    input_stop(r, self, 0);
    self->input_stopped = 0;
    PyObject *out = Py_BuildValue("(y#y#K)", self->in_buf ? self->in_buf : "", (Py_ssize_t)self->in_len,
                                  self->unwritten ? self->unwritten : "", (Py_ssize_t)self->unwritten_len,
                                  (unsigned long long)self->written);
    if (out) {
        self->in_len = 0;
        free(self->in_buf);
        self->in_buf = NULL;
        free(self->unwritten);
        self->unwritten = NULL;
        self->unwritten_len = 0;
        self->written = 0;
    }
    pthread_mutex_unlock(&r->lock);
    return out;
}

/* The last window size the thread put in force since the last call, or None. */
static PyObject *link_take_size(Link *self, PyObject *unused) {
    Relay *r = self->source->relay;
    pthread_mutex_lock(&r->lock);
    unsigned rows = self->sized_rows, cols = self->sized_cols;
    self->sized_rows = self->sized_cols = 0;
    pthread_mutex_unlock(&r->lock);
    if (!rows)
        Py_RETURN_NONE;
    return Py_BuildValue("(II)", rows, cols);
}

static PyObject *link_close(Link *self, PyObject *unused) {
    Relay *r = self->source->relay;
    pthread_mutex_lock(&r->lock);
    link_close_locked(r, self);
    int fd = self->fd;
    self->fd = -1;
    pthread_mutex_unlock(&r->lock);
    if (fd >= 0)
        close(fd);
    Py_RETURN_NONE;
}

static PyObject *link_get_handled(Link *self, void *closure) {
    pthread_mutex_lock(&self->source->relay->lock);
    unsigned long long handled = self->handled;
    pthread_mutex_unlock(&self->source->relay->lock);
    return PyLong_FromUnsignedLongLong(handled);
}

static PyObject *link_get_active(Link *self, void *closure) {
    pthread_mutex_lock(&self->source->relay->lock);
    int active = self->active;
    pthread_mutex_unlock(&self->source->relay->lock);
    return PyBool_FromLong(active);
}

static PyObject *link_get_broken(Link *self, void *closure) {
    pthread_mutex_lock(&self->source->relay->lock);
    int broken = self->broken;
    pthread_mutex_unlock(&self->source->relay->lock);
    return PyLong_FromLong(broken);
}

static PyObject *link_get_input(Link *self, void *closure) {
    pthread_mutex_lock(&self->source->relay->lock);
    int input = self->input;
    pthread_mutex_unlock(&self->source->relay->lock);
    return PyBool_FromLong(input);
}

static PyObject *link_get_input_stopped(Link *self, void *closure) {
    pthread_mutex_lock(&self->source->relay->lock);
    int stopped = self->input_stopped;
    pthread_mutex_unlock(&self->source->relay->lock);
    return PyBool_FromLong(stopped);
}

static PyObject *link_get_typed(Link *self, void *closure) {
    pthread_mutex_lock(&self->source->relay->lock);
    int typed = self->typed;
    pthread_mutex_unlock(&self->source->relay->lock);
    return PyBool_FromLong(typed);
}

static PyObject *link_get_data(Link *self, void *closure) {
    return Py_NewRef(self->data ? self->data : Py_None);
}

static int link_set_data(Link *self, PyObject *value, void *closure) {
    Py_XSETREF(self->data, Py_XNewRef(value));
    return 0;
}

static PyMethodDef link_methods[] = {
    {"activate", (PyCFunction)link_activate, METH_NOARGS, "Let the thread write output to the client; False if it may not."},
    {"deactivate", (PyCFunction)link_deactivate, METH_NOARGS,
     "Stop the thread writing; returns the rest of a frame it left unfinished."},
    {"start_input", (PyCFunction)link_start_input, METH_NOARGS,
     "Let the thread read the client's input messages and write their keys; False if it may not."},
    {"stop_input", (PyCFunction)link_stop_input, METH_NOARGS,
     "Stop it; returns (left, unwritten, written): see consoled/io/relay.py."},
    {"take_size", (PyCFunction)link_take_size, METH_NOARGS,
     "The last window size the thread put in force since the last call, as (rows, cols), or None."},
    {"close", (PyCFunction)link_close, METH_NOARGS, "Forget the client (closes the link's socket)."},
    {NULL}};

static PyGetSetDef link_getset[] = {
    {"handled", (getter)link_get_handled, NULL, "Stream offset the client got (or has parked) output up to.", NULL},
    {"active", (getter)link_get_active, NULL, NULL, NULL},
    {"broken", (getter)link_get_broken, NULL, "errno of a write that failed, or 0.", NULL},
    {"input", (getter)link_get_input, NULL, "The thread reads the client's input.", NULL},
    {"input_stopped", (getter)link_get_input_stopped, NULL, "It stopped on its own (stop_input says why).", NULL},
    {"typed", (getter)link_get_typed, NULL, "It wrote keys to the terminal.", NULL},
    {"data", (getter)link_get_data, (setter)link_set_data, "Python's own.", NULL},
    {NULL}};

static PyTypeObject LinkType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "consoled.io._relay.Link",
    .tp_basicsize = sizeof(Link),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Link(source, fd): an attached client the relay may write output to.",
    .tp_new = link_new,
    .tp_dealloc = (destructor)link_dealloc,
    .tp_traverse = (traverseproc)link_traverse,
    .tp_clear = (inquiry)link_clear,
    .tp_methods = link_methods,
    .tp_getset = link_getset,
};

/* --- the module -------------------------------------------------------------------- */

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT, "consoled.io._relay", "The native relay: a thread that drains pty masters.", -1, NULL};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&RelayType) < 0 || PyType_Ready(&SourceType) < 0 || PyType_Ready(&LinkType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&relay_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddObjectRef(m, "Source", (PyObject *)&SourceType) < 0 ||
        PyModule_AddObjectRef(m, "Link", (PyObject *)&LinkType) < 0 ||
        PyModule_AddIntConstant(m, "INPUT_BUFFER", IN_BUF) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
