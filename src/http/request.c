#include "http/request.h"

#include <http_parser.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/error.h"

struct hdr_off {
    uint32_t name_off, name_len, value_off, value_len;
};

struct http_reqparser {
    http_parser parser;
    http_limits_t lim;
    char *head; /* URL and header bytes of the request in progress */
    uint32_t head_len, head_cap;
    uint32_t head_raw; /* raw bytes fed while the head was incomplete */
    uint32_t url_off, url_len;
    char *body;
    size_t body_len, body_cap;
    uint32_t nheaders;
    int err_status; /* set by a callback that refused the request */
    bool in_message, headers_done, complete, last_was_value;
    bool continue_due;             /* the head asked for 100 Continue: http_reqparser_take_... */
    uint8_t line_state, proto_pos; /* check_head_bytes */
    struct hdr_off hdrs[HTTP_HEADERS_MAX];
    http_request_t req;
};

void http_limits_default(http_limits_t *lim) {
    lim->head_max = 16 * 1024;
    lim->uri_max = 8 * 1024;
    lim->headers_max = HTTP_HEADERS_MAX;
    lim->body_max = 1024 * 1024;
}

static int head_append(struct http_reqparser *p, const char *at, size_t len) {
    if ((size_t)p->head_len + len > p->lim.head_max) {
        p->err_status = 431;
        return -1;
    }
    if (p->head_len + len > p->head_cap) {
        uint32_t cap = p->head_cap ? p->head_cap : 512;
        while (cap < p->head_len + len)
            cap *= 2;
        if (cap > p->lim.head_max)
            cap = p->lim.head_max;
        char *nh = realloc(p->head, cap);
        if (!nh) {
            p->err_status = 503;
            return -1;
        }
        p->head = nh;
        p->head_cap = cap;
    }
    memcpy(p->head + p->head_len, at, len);
    p->head_len += (uint32_t)len;
    return 0;
}

static struct http_reqparser *from(http_parser *hp) {
    return (struct http_reqparser *)hp->data;
}

static int on_message_begin(http_parser *hp) {
    struct http_reqparser *p = from(hp);
    p->in_message = true;
    p->headers_done = false;
    p->complete = false;
    p->last_was_value = false;
    p->continue_due = false;
    p->head_len = 0;
    p->url_off = p->url_len = 0;
    p->nheaders = 0;
    p->body_len = 0;
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t len) {
    struct http_reqparser *p = from(hp);
    if ((size_t)p->url_len + len > p->lim.uri_max) {
        p->err_status = 414;
        return -1;
    }
    if (p->url_len == 0)
        p->url_off = p->head_len;
    if (head_append(p, at, len))
        return -1;
    p->url_len += (uint32_t)len;
    return 0;
}

/* RFC 9110 section 5.6.2: a field name is a token. The http_parser Debian ships is built
 * lenient (it lets "Name :" and "Na me:" through), so names are checked here. */
static bool is_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int on_header_field(http_parser *hp, const char *at, size_t len) {
    struct http_reqparser *p = from(hp);
    /* After the head, fields are a chunked body's trailers: they must not be merged into the
     * header section (RFC 9110 section 6.5.2), and nothing here needs them. */
    if (p->headers_done)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (!is_tchar((unsigned char)at[i])) {
            p->err_status = 400;
            return -1;
        }
    }
    if (p->nheaders == 0 || p->last_was_value) {
        if (p->nheaders >= p->lim.headers_max) {
            p->err_status = 431;
            return -1;
        }
        struct hdr_off *h = &p->hdrs[p->nheaders++];
        h->name_off = p->head_len;
        h->name_len = 0;
        h->value_off = 0;
        h->value_len = 0;
        p->last_was_value = false;
    }
    if (head_append(p, at, len))
        return -1;
    p->hdrs[p->nheaders - 1].name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len) {
    struct http_reqparser *p = from(hp);
    if (p->headers_done)
        return 0; /* a trailer, see on_header_field */
    struct hdr_off *h = &p->hdrs[p->nheaders - 1];
    if (!p->last_was_value) {
        h->value_off = p->head_len;
        p->last_was_value = true;
    }
    /* Folded lines (obs-fold) never get here: check_head_bytes refuses them. Field values are
     * visible characters, spaces and tabs (RFC 9110 section 5.5). */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)at[i];
        if ((c < 0x20 && c != '\t') || c == 0x7F) {
            p->err_status = 400;
            return -1;
        }
    }
    if (head_append(p, at, len))
        return -1;
    h->value_len += (uint32_t)len;
    return 0;
}

static void trim(const char **s, uint32_t *len) {
    while (*len && ((*s)[0] == ' ' || (*s)[0] == '\t')) {
        (*s)++;
        (*len)--;
    }
    while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
        (*len)--;
}

/* Expect (RFC 9110 section 10.1.1): true when every one of its elements is 100-continue
 * (compared case-insensitively), the only expectation defined; "Expect:" with nothing, or
 * with anything else, cannot be met. */
static bool expect_is_continue(const http_header_t *h) {
    bool any = false;
    size_t i = 0;
    while (i < h->value_len) {
        const char *el = h->value + i;
        const char *comma = memchr(el, ',', h->value_len - i);
        uint32_t n = (uint32_t)(comma ? (size_t)(comma - el) : h->value_len - i);
        i += n + 1;
        trim(&el, &n);
        if (n == 0)
            continue; /* "a, , b": empty list elements are allowed (RFC 9110 section 5.6.1) */
        if (n != 12 || strncasecmp(el, "100-continue", 12) != 0)
            return false;
        any = true;
    }
    return any;
}

/* The head is complete: the request is judged on it before any of its body is read (so a
 * client told 100 Continue is not refused for its head afterwards). */
static int on_headers_complete(http_parser *hp) {
    struct http_reqparser *p = from(hp);
    p->headers_done = true;
    http_request_t *r = &p->req;
    r->version_major = (uint8_t)hp->http_major;
    r->version_minor = (uint8_t)hp->http_minor;
    r->nheaders = p->nheaders;
    for (uint32_t i = 0; i < p->nheaders; i++) {
        http_header_t *h = &r->headers[i];
        h->name = p->head + p->hdrs[i].name_off;
        h->name_len = p->hdrs[i].name_len;
        h->value = p->head + p->hdrs[i].value_off;
        h->value_len = p->hdrs[i].value_len;
        trim(&h->value, &h->value_len);
    }
    /* Only 1.x is spoken here. */
    if (r->version_major != 1) {
        p->err_status = 505;
        return -1;
    }
    /* Exactly one Host (RFC 9112 section 3.2): HTTP/1.1 requires it, and two could route one
     * request two ways. */
    unsigned hosts = 0;
    bool expect_continue = false;
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const http_header_t *h = &r->headers[i];
        if (h->name_len == 4 && strncasecmp(h->name, "Host", 4) == 0) {
            hosts++;
        } else if (h->name_len == 6 && strncasecmp(h->name, "Expect", 6) == 0) {
            if (!expect_is_continue(h)) {
                p->err_status = 417;
                return -1;
            }
            expect_continue = true;
        }
    }
    if ((r->version_minor >= 1 && hosts == 0) || hosts > 1) {
        p->err_status = 400;
        return -1;
    }
    /* Refuse from the declared length alone: nothing of an oversized body is buffered. */
    if ((hp->flags & F_CONTENTLENGTH) && hp->content_length > p->lim.body_max) {
        p->err_status = 413;
        return -1;
    }
    /* The client holds its body back until told to go on; an HTTP/1.0 client cannot have
     * meant it (RFC 9110 section 10.1.1: ignored), and without a body there is nothing to
     * wait for. */
    bool body = (hp->flags & F_CHUNKED) || ((hp->flags & F_CONTENTLENGTH) && hp->content_length);
    p->continue_due = expect_continue && body && r->version_minor >= 1;
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len) {
    struct http_reqparser *p = from(hp);
    if (p->body_len + len > p->lim.body_max) {
        p->err_status = 413;
        return -1;
    }
    if (p->body_len + len > p->body_cap) {
        size_t cap = p->body_cap ? p->body_cap : 1024;
        while (cap < p->body_len + len)
            cap *= 2;
        if (cap > p->lim.body_max)
            cap = p->lim.body_max;
        char *nb = realloc(p->body, cap);
        if (!nb) {
            p->err_status = 503;
            return -1;
        }
        p->body = nb;
        p->body_cap = cap;
    }
    memcpy(p->body + p->body_len, at, len);
    p->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *hp) {
    struct http_reqparser *p = from(hp);
    http_request_t *r = &p->req;
    r->method = (uint8_t)hp->method;
    r->keep_alive = http_should_keep_alive(hp);
    r->upgrade = hp->upgrade;
    r->target = p->head + p->url_off;
    r->target_len = p->url_len;
    /* The absolute form ("GET http://host/path", RFC 9112 section 3.2.2), which a server must
     * accept, routes by its path; the authority is not used for routing. */
    const char *t = r->target, *tend = r->target + r->target_len;
    const char *scheme_end = r->target_len > 3 ? memchr(t, ':', r->target_len) : NULL;
    if (t[0] != '/' && scheme_end && tend - scheme_end >= 3 && scheme_end[1] == '/' &&
        scheme_end[2] == '/') {
        t = scheme_end + 3;
        while (t < tend && *t != '/' && *t != '?' && *t != '#')
            t++;
    }
    r->path = t;
    r->path_len = (size_t)(tend - t);
    r->query = NULL;
    r->query_len = 0;
    const char *q = memchr(t, '?', (size_t)(tend - t));
    const char *frag = memchr(t, '#', (size_t)(tend - t));
    if (frag && (!q || frag < q)) {
        r->path_len = (size_t)(frag - t);
    } else if (q) {
        r->path_len = (size_t)(q - t);
        r->query = q + 1;
        const char *end = frag ? frag : tend;
        r->query_len = (size_t)(end - r->query);
    }
    if (r->path_len == 0) { /* "http://host" or "http://host?q": the path is "/" */
        r->path = "/";
        r->path_len = 1;
    }
    /* version and headers: set by on_headers_complete */
    r->body = p->body_len ? p->body : NULL;
    r->body_len = p->body_len;
    p->complete = true;
    p->in_message = false;
    p->continue_due = false; /* the body is here: too late for 100 Continue */
    /* Stop after each request so the caller answers pipelined requests one by one. */
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

http_reqparser_t *http_reqparser_new(const http_limits_t *lim) {
    struct http_reqparser *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    if (lim) {
        p->lim = *lim;
        if (p->lim.headers_max > HTTP_HEADERS_MAX)
            p->lim.headers_max = HTTP_HEADERS_MAX;
    } else {
        http_limits_default(&p->lim);
    }
    http_parser_init(&p->parser, HTTP_REQUEST);
    p->parser.data = p;
    return p;
}

void http_reqparser_free(http_reqparser_t *p) {
    if (!p)
        return;
    free(p->head);
    free(p->body);
    free(p);
}

bool http_reqparser_busy(const http_reqparser_t *p) {
    return p->in_message;
}

bool http_reqparser_take_continue(http_reqparser_t *p) {
    bool due = p->continue_due;
    p->continue_due = false;
    return due;
}

static int status_for(enum http_errno e) {
    switch (e) {
    case HPE_HEADER_OVERFLOW:
        return 431;
    /* Not HPE_INVALID_VERSION: http_parser raises it for a malformed version ("HTTP/1.x",
     * "HTTP/1.1 "), which is a bad request line (400). A well-formed version other than 1.x
     * is answered 505 once the request is complete. */
    default:
        return 400;
    }
}

/* Checks, over the raw bytes http_parser consumed, what the lenient http_parser Debian ships
 * lets through:
 * - the protocol name of the request line is exactly "HTTP" (RFC 9112 section 2.3; it takes
 *   "HTTQ/1.1");
 * - no line of the head starts with a space or a tab: an obsolete folded line (obs-fold,
 *   RFC 9112 section 5.2), which http_parser joins to the header above, also when that
 *   header's own line is empty ("Content-Length:" CRLF " 5"). A proxy that forwards folds
 *   reads other header boundaries than ours: a request-smuggling primitive. A line starting
 *   with a blank right after the request line is refused too (section 2.2).
 * It stops at the empty line that ends the head, so a body is never scanned. Returns false
 * on a violation. Cost: one memchr per line. */
enum {
    LINE_START,  /* CRLFs between requests */
    LINE_METHOD, /* the request line, up to the space after the method */
    LINE_TARGET, /* the target, up to the space before the protocol */
    LINE_PROTO,  /* "HTTP/", proto_pos bytes of it seen */
    HEAD_LINE,   /* the rest of a line of the head */
    HEAD_LF,     /* just past a line's LF */
    HEAD_LF_CR,  /* just past a line's LF and a CR */
    HEAD_DONE    /* past the empty line */
};

static bool check_head_bytes(struct http_reqparser *p, const char *data, size_t n) {
    static const char name[] = "HTTP/";
    for (size_t i = 0; i < n && p->line_state != HEAD_DONE; i++) {
        char c = data[i];
        switch (p->line_state) {
        case LINE_START:
            if (c != '\r' && c != '\n')
                p->line_state = LINE_METHOD;
            break;
        case LINE_METHOD:
        case LINE_TARGET:
            if (c == '\n') {
                p->line_state = HEAD_LF; /* no protocol (HTTP/0.9): answered 505 */
            } else if (c == ' ') {
                p->line_state++;
                p->proto_pos = 0;
            }
            break;
        case LINE_PROTO:
            if (c != name[p->proto_pos])
                return false;
            if (++p->proto_pos == sizeof(name) - 1)
                p->line_state = HEAD_LINE;
            break;
        case HEAD_LINE: {
            const char *lf = memchr(data + i, '\n', n - i);
            if (!lf)
                return true;
            i = (size_t)(lf - data);
            p->line_state = HEAD_LF;
            break;
        }
        case HEAD_LF:
            if (c == ' ' || c == '\t')
                return false;
            p->line_state = c == '\r' ? HEAD_LF_CR : c == '\n' ? HEAD_DONE : HEAD_LINE;
            break;
        case HEAD_LF_CR:
            p->line_state = c == '\n' ? HEAD_DONE : HEAD_LINE;
            break;
        }
    }
    return true;
}

size_t http_reqparser_feed(http_reqparser_t *p, const char *data, size_t len,
                           const http_request_t **out, int *status) {
    *out = NULL;
    *status = 0;
    /* http_parser takes len 0 as end of input (an error mid-request, counted as 1 byte
     * consumed); here it only means nothing arrived. */
    if (len == 0)
        return 0;
    if (HTTP_PARSER_ERRNO(&p->parser) == HPE_PAUSED)
        http_parser_pause(&p->parser, 0);
    p->complete = false;

    /* While the head is incomplete, feed no more than the head limit allows, so a client can
     * make us scan at most head_max bytes before it is refused: a head that is still
     * incomplete after head_max bytes cannot fit. */
    size_t chunk = len;
    bool in_head = !p->in_message || !p->headers_done;
    if (in_head) {
        size_t room = (size_t)p->lim.head_max - p->head_raw;
        if (room == 0) {
            *status = 431;
            return 0;
        }
        if (chunk > room)
            chunk = room;
    }
    size_t n = http_parser_execute(&p->parser, &settings, data, chunk);
    enum http_errno e = HTTP_PARSER_ERRNO(&p->parser);

    /* First, so that a fold is refused as such whatever http_parser made of it. */
    if (!check_head_bytes(p, data, n)) {
        p->continue_due = false;
        *status = 400;
        return n;
    }
    if (e != HPE_OK && e != HPE_PAUSED) {
        p->continue_due = false;
        *status = p->err_status ? p->err_status : status_for(e);
        return n;
    }
    if (p->complete) {
        p->head_raw = 0;
        p->line_state = LINE_START; /* http_parser paused at the end of this request */
        *out = &p->req;
        return n;
    }
    if (p->in_message && !p->headers_done) {
        p->head_raw += (uint32_t)n;
        if (p->head_raw >= p->lim.head_max) {
            *status = 431;
            return n;
        }
    } else if (!p->in_message && n > 0) {
        /* Bytes between requests (CRLFs) count toward the next head too. */
        p->head_raw += (uint32_t)n;
        if (p->head_raw >= p->lim.head_max) {
            *status = 400;
            return n;
        }
    }
    if (n == 0 && len > 0) {
        /* No progress and no error: never loop on input the parser will not take. */
        *status = 400;
    }
    return n;
}

const http_header_t *http_request_header(const http_request_t *r, const char *name) {
    size_t nl = strlen(name);
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const http_header_t *h = &r->headers[i];
        if (h->name_len == nl && strncasecmp(h->name, name, nl) == 0)
            return h;
    }
    return NULL;
}

bool http_header_has_token(const char *value, size_t len, const char *token) {
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
            end--;
        if (end - start == tl && strncasecmp(value + start, token, tl) == 0)
            return true;
    }
    return false;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int http_query_get(const char *query, size_t query_len, const char *key, char *out,
                   size_t out_size) {
    if (!query)
        return PD_ENOTFOUND;
    size_t kl = strlen(key);
    size_t i = 0;
    while (i <= query_len) {
        size_t start = i;
        while (i < query_len && query[i] != '&')
            i++;
        const char *pair = query + start;
        size_t plen = i - start;
        i++; /* past '&' */
        if (plen < kl || memcmp(pair, key, kl) != 0)
            continue;
        if (plen != kl && pair[kl] != '=')
            continue;
        const char *v = plen == kl ? pair + plen : pair + kl + 1;
        size_t vl = plen == kl ? 0 : plen - kl - 1;
        size_t o = 0;
        for (size_t j = 0; j < vl; j++) {
            int c = (unsigned char)v[j];
            if (c == '%') {
                if (j + 2 >= vl)
                    return PD_EINVAL;
                int hi = hexval(v[j + 1]), lo = hexval(v[j + 2]);
                if (hi < 0 || lo < 0)
                    return PD_EINVAL;
                c = hi * 16 + lo;
                j += 2;
            } else if (c == '+') {
                c = ' ';
            }
            if (c == 0)
                return PD_EINVAL;
            if (o + 1 >= out_size)
                return PD_ETOOBIG;
            out[o++] = (char)c;
        }
        out[o] = '\0';
        return (int)o;
    }
    return PD_ENOTFOUND;
}

const char *http_status_reason(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}
