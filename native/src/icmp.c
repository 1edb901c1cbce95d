// fabtunnel ICMP echo sockets: the syscall layer under src/probe/icmp.ts. One raw ICMP (or ICMPv6) socket per
// address family sends echo requests built in TypeScript, with the source address chosen per packet
// (IP_PKTINFO / IPV6_PKTINFO), and returns the echo replies queued on it when asked (the prober drains it on its own
// timer, so a thousand replies a second cost no thousand event-loop wake-ups), each with the kernel's receive time
// (SO_TIMESTAMPNS), so the RTT does not depend on when they are read. It knows nothing of sequence numbers or
// peers: matching happens in TypeScript. See raw(7),
// icmp(7), ipv6(7). A raw socket needs CAP_NET_RAW, which the agent has (it already needs CAP_NET_ADMIN); the
// kernel's "ping sockets" would also need net.ipv4.ping_group_range, which is "1 0" (off) in every new netns.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <linux/icmp.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>  // uv_err_name: errno names as in the netlink part

#define ICMP_RECV_BUF 2048
#define ICMP_MAX_BATCH 4096

typedef struct icmp_sock {
  int fd;
  int family;  // AF_INET or AF_INET6
  bool closed;
} icmp_sock;

static _Thread_local uint8_t icmp_buf[ICMP_RECV_BUF];
// Tags our handles, so a netlink handle (also an external) is never taken for an ICMP one.
static const napi_type_tag ICMP_TAG = {0x66616274756e6e65ULL, 0x6c69636d70736f6bULL};

static napi_value icmp_errno(napi_env env, int err, const char *syscall, bool throw_it) {
  const char *code = uv_err_name(-err);
  char msg[256];
  snprintf(msg, sizeof msg, "%s %s: %s", syscall, code, strerror(err));
  napi_value m, e, v;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, NULL, m, &e);
  napi_create_int32(env, err, &v);
  napi_set_named_property(env, e, "errno", v);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "code", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "syscall", v);
  if (throw_it) {
    napi_throw(env, e);
    return NULL;
  }
  return e;
}

static double realtime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static napi_value icmp_type_error(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

static void icmp_close_sock(icmp_sock *s) {
  if (s->closed) return;
  s->closed = true;
  close(s->fd);
  s->fd = -1;
}

static void icmp_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  icmp_sock *s = (icmp_sock *)data;
  icmp_close_sock(s);
  free(s);
}

static icmp_sock *icmp_get(napi_env env, napi_value v, bool must_be_open) {
  icmp_sock *s = NULL;
  napi_valuetype t;
  bool tagged = false;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_check_object_type_tag(env, v, &ICMP_TAG, &tagged) != napi_ok ||
      !tagged || napi_get_value_external(env, v, (void **)&s) != napi_ok || s == NULL) {
    icmp_type_error(env, "expected an ICMP socket handle");
    return NULL;
  }
  if (must_be_open && s->closed) {
    icmp_errno(env, EBADF, "icmp", true);
    return NULL;
  }
  return s;
}

// icmpOpen(family: 4 | 6, netnsPath?: string) -> handle. Only echo replies pass the socket's ICMP filter, so the
// process is not woken for the rest of the node's ICMP traffic.
static napi_value icmp_open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint32_t fam = 0;
  napi_valuetype t;
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_number) return icmp_type_error(env, "family must be 4 or 6");
  napi_get_value_uint32(env, argv[0], &fam);
  if (fam != 4 && fam != 6) return icmp_type_error(env, "family must be 4 or 6");
  char path[4096] = {0};
  bool in_ns = false;
  if (argc >= 2) {
    napi_typeof(env, argv[1], &t);
    if (t == napi_string) {
      size_t len;
      napi_get_value_string_utf8(env, argv[1], path, sizeof path, &len);
      if (len == 0 || len >= sizeof path - 1) return icmp_type_error(env, "netns path must be a non-empty path");
      in_ns = true;
    } else if (t != napi_undefined && t != napi_null) {
      return icmp_type_error(env, "netns path must be a string");
    }
  }
  int saved = -1, target = -1;
  if (in_ns) {
    saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (saved < 0) return icmp_errno(env, errno, "open", true);
    target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) {
      int e = errno;
      close(saved);
      return icmp_errno(env, e, "open", true);
    }
    if (setns(target, CLONE_NEWNET) < 0) {
      int e = errno;
      close(saved);
      close(target);
      return icmp_errno(env, e, "setns", true);
    }
  }
  int family = fam == 4 ? AF_INET : AF_INET6;
  int fd = socket(family, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, fam == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6);
  int sock_errno = errno;
  if (in_ns) {
    if (setns(saved, CLONE_NEWNET) < 0) abort();
    close(saved);
    close(target);
  }
  if (fd < 0) return icmp_errno(env, sock_errno, "socket", true);
  int rc;
  if (fam == 4) {
    struct icmp_filter f = {.data = ~(1U << ICMP_ECHOREPLY)};
    rc = setsockopt(fd, SOL_RAW, ICMP_FILTER, &f, sizeof f);
  } else {
    struct icmp6_filter f;
    ICMP6_FILTER_SETBLOCKALL(&f);
    ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f);
    rc = setsockopt(fd, IPPROTO_ICMPV6, ICMP6_FILTER, &f, sizeof f);
  }
  int on = 1;
  if (rc == 0) rc = setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
  if (rc < 0) {
    int e = errno;
    close(fd);
    return icmp_errno(env, e, "setsockopt", true);
  }
  icmp_sock *s = calloc(1, sizeof *s);
  if (!s) {
    close(fd);
    return icmp_errno(env, ENOMEM, "calloc", true);
  }
  s->fd = fd;
  s->family = family;
  napi_value ext;
  if (napi_create_external(env, s, icmp_finalize, NULL, &ext) != napi_ok) {
    close(fd);
    free(s);
    return NULL;
  }
  napi_type_tag_object(env, ext, &ICMP_TAG);
  return ext;
}

static bool icmp_addr(napi_env env, napi_value v, int family, void **data) {
  bool is_buf = false;
  size_t len = 0;
  napi_is_buffer(env, v, &is_buf);
  if (is_buf) napi_get_buffer_info(env, v, data, &len);
  if (!is_buf || len != (family == AF_INET ? 4u : 16u)) {
    icmp_type_error(env, family == AF_INET ? "address must be a 4-byte Buffer" : "address must be a 16-byte Buffer");
    return false;
  }
  return true;
}

// icmpSend(handle, dst: Buffer, src: Buffer | null, packet: Buffer) -> ms: one echo request (the ICMP message; the
// kernel adds the IP header, and the ICMPv6 checksum), from `src` when given. Returns the time just before the send
// (ms since the epoch, CLOCK_REALTIME: the clock of the kernel's receive timestamps).
static napi_value icmp_send(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) return icmp_type_error(env, "expected (handle, dst, src, packet)");
  icmp_sock *s = icmp_get(env, argv[0], true);
  if (!s) return NULL;
  void *dst, *src = NULL, *pkt;
  size_t pkt_len;
  if (!icmp_addr(env, argv[1], s->family, &dst)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_null && t != napi_undefined && !icmp_addr(env, argv[2], s->family, &src)) return NULL;
  bool is_buf = false;
  napi_is_buffer(env, argv[3], &is_buf);
  if (!is_buf) return icmp_type_error(env, "packet must be a Buffer");
  napi_get_buffer_info(env, argv[3], &pkt, &pkt_len);
  if (pkt_len < 8 || pkt_len > 1024) return icmp_type_error(env, "packet must be 8 to 1024 bytes");

  struct sockaddr_storage to;
  socklen_t to_len;
  memset(&to, 0, sizeof to);
  union {
    char buf[CMSG_SPACE(sizeof(struct in6_pktinfo))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct iovec iov = {.iov_base = pkt, .iov_len = pkt_len};
  struct msghdr msg = {.msg_name = &to, .msg_iov = &iov, .msg_iovlen = 1};
  if (s->family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&to;
    a->sin_family = AF_INET;
    memcpy(&a->sin_addr, dst, 4);
    to_len = sizeof *a;
    if (src) {
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(sizeof(struct in_pktinfo));
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = IPPROTO_IP;
      c->cmsg_type = IP_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
      struct in_pktinfo pi;
      memset(&pi, 0, sizeof pi);
      memcpy(&pi.ipi_spec_dst, src, 4);
      memcpy(CMSG_DATA(c), &pi, sizeof pi);
    }
  } else {
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    memcpy(&a6.sin6_addr, dst, 16);
    memcpy(&to, &a6, sizeof a6);
    to_len = sizeof a6;
    if (src) {
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(sizeof(struct in6_pktinfo));
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = IPPROTO_IPV6;
      c->cmsg_type = IPV6_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
      struct in6_pktinfo pi;
      memset(&pi, 0, sizeof pi);
      memcpy(&pi.ipi6_addr, src, 16);
      memcpy(CMSG_DATA(c), &pi, sizeof pi);
    }
  }
  msg.msg_namelen = to_len;
  double at = realtime_ms();
  ssize_t n;
  do {
    n = sendmsg(s->fd, &msg, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return icmp_errno(env, errno, "sendmsg", true);
  napi_value r;
  napi_create_double(env, at, &r);
  return r;
}

// icmpRecv(handle) -> Array<{ from: Buffer, data: Buffer (the ICMP message, IPv4 header stripped), at: ms }>:
// every echo reply queued now (at most ICMP_MAX_BATCH), never blocking. `at` is the kernel's receive time.
static napi_value icmp_recv(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return icmp_type_error(env, "expected a handle");
  icmp_sock *s = icmp_get(env, argv[0], true);
  if (!s) return NULL;
  napi_value list;
  napi_create_array(env, &list);
  uint32_t count = 0;
  while (count < ICMP_MAX_BATCH) {
    struct sockaddr_storage from;
    union {
      char buf[CMSG_SPACE(sizeof(struct timespec)) + 64];
      struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = icmp_buf, .iov_len = sizeof icmp_buf};
    struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control.buf, .msg_controllen = sizeof control.buf};
    ssize_t n = recvmsg(s->fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      // Raw ICMP sockets report errors queued by earlier sends (e.g. EHOSTUNREACH); they say nothing about a reply,
      // and the replies behind them are still good.
      continue;
    }
    double at = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
        struct timespec ts;
        memcpy(&ts, CMSG_DATA(c), sizeof ts);
        at = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
      }
    }
    if (at < 0) at = realtime_ms();
    const uint8_t *data = icmp_buf;
    size_t len = (size_t)n;
    const void *addr;
    size_t alen;
    if (s->family == AF_INET) {
      if (len < 20) continue;
      size_t ihl = (size_t)(icmp_buf[0] & 0x0f) * 4;
      if (ihl < 20 || ihl > len) continue;
      data += ihl;
      len -= ihl;
      addr = &((struct sockaddr_in *)&from)->sin_addr;
      alen = 4;
    } else {
      addr = &((struct sockaddr_in6 *)&from)->sin6_addr;
      alen = 16;
    }
    napi_value obj, v;
    void *copy;
    napi_create_object(env, &obj);
    napi_create_buffer_copy(env, alen, addr, &copy, &v);
    napi_set_named_property(env, obj, "from", v);
    napi_create_buffer_copy(env, len, data, &copy, &v);
    napi_set_named_property(env, obj, "data", v);
    napi_create_double(env, at, &v);
    napi_set_named_property(env, obj, "at", v);
    napi_set_element(env, list, count++, obj);
  }
  return list;
}

static napi_value icmp_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return icmp_type_error(env, "expected a handle");
  icmp_sock *s = icmp_get(env, argv[0], false);
  if (!s) return NULL;
  icmp_close_sock(s);
  return NULL;
}

void icmp_register(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"icmpOpen", NULL, icmp_open, NULL, NULL, NULL, napi_default, NULL},
      {"icmpSend", NULL, icmp_send, NULL, NULL, NULL, napi_default, NULL},
      {"icmpRecv", NULL, icmp_recv, NULL, NULL, NULL, napi_default, NULL},
      {"icmpClose", NULL, icmp_close, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
