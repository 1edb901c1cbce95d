// fabtunnel_netlink: the syscall layer under src/netlink. It opens AF_NETLINK sockets (optionally inside another
// network namespace), sets socket options, sends byte buffers to the kernel and receives datagrams through a libuv
// poll handle, so the event loop never blocks and nothing polls on a timer. It knows nothing of message formats:
// every netlink message is built and parsed in TypeScript (src/netlink/codec.ts). See netlink(7).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#ifndef SO_RCVBUFFORCE
#define SO_RCVBUFFORCE 33
#endif
#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NETLINK_GET_STRICT_CHK
#define NETLINK_GET_STRICT_CHK 12
#endif
#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif

// One datagram never exceeds this: kernel dump skbs are capped at 32 KiB (netlink_dump), unicast replies are
// smaller still. A datagram that does not fit is reported (EMSGSIZE) rather than silently cut.
#define RECV_BUF_SIZE (64 * 1024)
// Datagrams handed to JS per readable event; the poll is level-triggered, so the rest waits one loop turn and
// timers and I/O of other handles are not starved by a flood.
#define MAX_BATCH 1024

typedef struct nl_sock {
  int fd;
  uint32_t portid;
  napi_env env;
  napi_ref callback;   // (err, datagrams[]) => void, set by start()
  uv_poll_t poll;
  bool poll_init;
  bool closed;
  bool js_alive;       // the JS external still exists; the struct is freed when both it and the uv handle are gone
  bool uv_alive;
} nl_sock;

// Per thread: the addon may be loaded in worker threads, each with its own loop.
static _Thread_local uint8_t recv_buf[RECV_BUF_SIZE];

// ---- errors ---------------------------------------------------------------------------------------------------

static napi_value make_errno_error(napi_env env, int err, const char *syscall) {
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
  return e;
}

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_throw(env, make_errno_error(env, err, syscall));
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

// ---- handle lifetime ------------------------------------------------------------------------------------------

static void maybe_free(nl_sock *s) {
  if (!s->js_alive && !s->uv_alive) free(s);
}

static void on_poll_closed(uv_handle_t *h) {
  nl_sock *s = (nl_sock *)h->data;
  s->uv_alive = false;
  maybe_free(s);
}

static void sock_close(nl_sock *s) {
  if (s->closed) return;
  s->closed = true;
  if (s->poll_init) {
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_poll_closed);
  }
  if (s->callback) {
    napi_delete_reference(s->env, s->callback);
    s->callback = NULL;
  }
  close(s->fd);
  s->fd = -1;
}

static void on_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  nl_sock *s = (nl_sock *)data;
  sock_close(s);
  s->js_alive = false;
  maybe_free(s);
}

static nl_sock *get_sock(napi_env env, napi_value v, bool must_be_open) {
  nl_sock *s = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_get_value_external(env, v, (void **)&s) != napi_ok || s == NULL) {
    throw_type(env, "expected a netlink socket handle");
    return NULL;
  }
  if (must_be_open && s->closed) {
    throw_errno(env, EBADF, "netlink");
    return NULL;
  }
  return s;
}

static bool get_u32(napi_env env, napi_value v, uint32_t *out, const char *what) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    throw_type(env, what);
    return false;
  }
  napi_get_value_uint32(env, v, out);
  return true;
}

// ---- open -----------------------------------------------------------------------------------------------------

// open(protocol: number, netnsPath?: string) -> handle
// With netnsPath the socket is created inside that network namespace: only this thread switches (setns) and
// switches back before returning; the socket stays bound to the namespace it was created in.
static napi_value nl_open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint32_t proto;
  if (argc < 1 || !get_u32(env, argv[0], &proto, "protocol must be a number")) return NULL;

  char path[4096] = {0};
  bool in_ns = false;
  if (argc >= 2) {
    napi_valuetype t;
    napi_typeof(env, argv[1], &t);
    if (t == napi_string) {
      size_t len;
      napi_get_value_string_utf8(env, argv[1], path, sizeof path, &len);
      if (len == 0 || len >= sizeof path - 1) return throw_type(env, "netns path must be a non-empty path");
      in_ns = true;
    } else if (t != napi_undefined && t != napi_null) {
      return throw_type(env, "netns path must be a string");
    }
  }

  int saved = -1, target = -1;
  if (in_ns) {
    saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (saved < 0) return throw_errno(env, errno, "open");
    target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) {
      int e = errno;
      close(saved);
      return throw_errno(env, e, "open");
    }
    if (setns(target, CLONE_NEWNET) < 0) {
      int e = errno;
      close(saved);
      close(target);
      return throw_errno(env, e, "setns");
    }
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, (int)proto);
  int sock_errno = errno;
  if (in_ns) {
    // Returning to the original namespace cannot be skipped: the main thread would stay in the test namespace.
    if (setns(saved, CLONE_NEWNET) < 0) abort();
    close(saved);
    close(target);
  }
  if (fd < 0) return throw_errno(env, sock_errno, "socket");

  struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "bind");
  }
  socklen_t sl = sizeof sa;
  if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "getsockname");
  }

  nl_sock *s = calloc(1, sizeof *s);
  if (!s) {
    close(fd);
    return throw_errno(env, ENOMEM, "calloc");
  }
  s->fd = fd;
  s->portid = sa.nl_pid;
  s->env = env;
  s->js_alive = true;
  napi_value ext;
  if (napi_create_external(env, s, on_finalize, NULL, &ext) != napi_ok) {
    close(fd);
    free(s);
    return NULL;
  }
  return ext;
}

// ---- options --------------------------------------------------------------------------------------------------

// portid(handle) -> number: the address the kernel assigned at bind; replies to our requests carry it.
static napi_value nl_portid(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return throw_type(env, "expected a handle");
  nl_sock *s = get_sock(env, argv[0], true);
  if (!s) return NULL;
  napi_value r;
  napi_create_uint32(env, s->portid, &r);
  return r;
}

// addMembership(handle, group) joins one multicast group (any number, also above 32, unlike the bind mask).
static napi_value nl_add_membership(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return throw_type(env, "expected (handle, group)");
  nl_sock *s = get_sock(env, argv[0], true);
  if (!s) return NULL;
  uint32_t group;
  if (!get_u32(env, argv[1], &group, "group must be a number")) return NULL;
  int g = (int)group;
  if (setsockopt(s->fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g) < 0)
    return throw_errno(env, errno, "setsockopt");
  return NULL;
}

// setOption(handle, name, value) for the options the library needs, named so JS never passes raw levels.
// Returns the value in effect (for the receive buffer, what the kernel granted).
static napi_value nl_set_option(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) return throw_type(env, "expected (handle, name, value)");
  nl_sock *s = get_sock(env, argv[0], true);
  if (!s) return NULL;
  char name[32];
  size_t len;
  if (napi_get_value_string_utf8(env, argv[1], name, sizeof name, &len) != napi_ok)
    return throw_type(env, "option name must be a string");
  uint32_t value;
  if (!get_u32(env, argv[2], &value, "option value must be a number")) return NULL;
  int v = (int)value;
  int level = SOL_NETLINK, opt;
  if (strcmp(name, "rcvbuf") == 0) {
    // SO_RCVBUFFORCE lifts the rmem_max cap when privileged; without CAP_NET_ADMIN fall back to the capped one.
    level = SOL_SOCKET;
    if (setsockopt(s->fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) < 0 &&
        setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v) < 0)
      return throw_errno(env, errno, "setsockopt");
    int got = 0;
    socklen_t gl = sizeof got;
    getsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &got, &gl);
    napi_value r;
    napi_create_int32(env, got, &r);
    return r;
  } else if (strcmp(name, "sndbuf") == 0) {
    level = SOL_SOCKET;
    opt = SO_SNDBUF;
  } else if (strcmp(name, "extAck") == 0) {
    opt = NETLINK_EXT_ACK;
  } else if (strcmp(name, "capAck") == 0) {
    opt = NETLINK_CAP_ACK;
  } else if (strcmp(name, "strictCheck") == 0) {
    opt = NETLINK_GET_STRICT_CHK;
  } else if (strcmp(name, "noEnobufs") == 0) {
    opt = NETLINK_NO_ENOBUFS;
  } else {
    return throw_type(env, "unknown option");
  }
  if (setsockopt(s->fd, level, opt, &v, sizeof v) < 0) return throw_errno(env, errno, "setsockopt");
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

// ---- send -----------------------------------------------------------------------------------------------------

// send(handle, buffer) -> bytes sent. One sendto of the whole buffer to the kernel (portid 0): several netlink
// messages concatenated in one buffer are processed by the kernel in order within this one call.
static napi_value nl_send(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return throw_type(env, "expected (handle, buffer)");
  nl_sock *s = get_sock(env, argv[0], true);
  if (!s) return NULL;
  bool is_buf = false;
  napi_is_buffer(env, argv[1], &is_buf);
  if (!is_buf) return throw_type(env, "data must be a Buffer");
  void *data;
  size_t len;
  napi_get_buffer_info(env, argv[1], &data, &len);
  struct sockaddr_nl to = {.nl_family = AF_NETLINK};
  ssize_t n;
  do {
    n = sendto(s->fd, data, len, 0, (struct sockaddr *)&to, sizeof to);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return throw_errno(env, errno, "sendto");
  napi_value r;
  napi_create_uint32(env, (uint32_t)n, &r);
  return r;
}

// ---- receive --------------------------------------------------------------------------------------------------

static void deliver(nl_sock *s, napi_value err, napi_value list) {
  napi_env env = s->env;
  napi_value cb, global, argv[2];
  if (!s->callback || napi_get_reference_value(env, s->callback, &cb) != napi_ok || cb == NULL) return;
  napi_get_global(env, &global);
  argv[0] = err;
  argv[1] = list;
  // make_callback runs the microtask queue afterwards, so promises resolved by JS settle before the next read.
  napi_async_context ctx = NULL;
  napi_value resource_name;
  napi_create_string_utf8(env, "fabtunnel:netlink", NAPI_AUTO_LENGTH, &resource_name);
  napi_async_init(env, NULL, resource_name, &ctx);
  napi_value result;
  if (napi_make_callback(env, ctx, global, cb, 2, argv, &result) == napi_pending_exception) {
    napi_value ex;
    napi_get_and_clear_last_exception(env, &ex);
    napi_fatal_exception(env, ex);
  }
  napi_async_destroy(env, ctx);
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  nl_sock *s = (nl_sock *)h->data;
  if (s->closed) return;
  napi_env env = s->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value null_v, list;
  napi_get_null(env, &null_v);
  napi_create_array(env, &list);
  uint32_t count = 0;
  int err = 0;
  const char *syscall = "recvmsg";
  if (status < 0) {
    // libuv reports POLLERR as UV_EBADF and stops the handle. On a netlink socket POLLERR means a pending socket
    // error, above all ENOBUFS after an overrun: fetch (and clear) it, deliver it, and keep receiving.
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr != 0) {
      err = soerr;
      syscall = "recvmsg";
    } else if (status != UV_EBADF) {
      err = -status;
      syscall = "uv_poll";
    }
    int r = uv_poll_start(&s->poll, UV_READABLE, on_readable);
    if (r < 0 && !err) {
      err = -r;
      syscall = "uv_poll_start";
    }
  }
  // Datagrams queued before the error are still good: drain them too.
  int recv_err = 0;
  while (!recv_err && count < MAX_BATCH) {
    struct sockaddr_nl from;
    struct iovec iov = {.iov_base = recv_buf, .iov_len = sizeof recv_buf};
    struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(s->fd, &msg, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      recv_err = errno;  // ENOBUFS: the kernel dropped messages for us; the socket stays usable
      break;
    }
    if (msg.msg_flags & MSG_TRUNC) {
      recv_err = EMSGSIZE;
      break;
    }
    // Only the kernel (portid 0) speaks to us; a datagram from another process is not an answer.
    if (from.nl_pid != 0) continue;
    napi_value buf;
    void *copy;
    napi_create_buffer_copy(env, (size_t)n, recv_buf, &copy, &buf);
    napi_set_element(env, list, count++, buf);
  }
  if (count > 0) deliver(s, null_v, list);
  if (!err && recv_err) {
    err = recv_err;
    syscall = "recvmsg";
  }
  if (err && !s->closed) {
    napi_value empty;
    napi_create_array(env, &empty);
    deliver(s, make_errno_error(env, err, syscall), empty);
  }
  napi_close_handle_scope(env, scope);
}

// start(handle, callback): begin delivering datagrams as callback(null, Buffer[]) and receive errors as
// callback(err, []). ENOBUFS arrives as err.code === 'ENOBUFS' (the kernel dropped messages; resync needed).
static napi_value nl_start(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return throw_type(env, "expected (handle, callback)");
  nl_sock *s = get_sock(env, argv[0], true);
  if (!s) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_function) return throw_type(env, "callback must be a function");
  if (s->poll_init) return throw_errno(env, EALREADY, "uv_poll_start");
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  int r = uv_poll_init(loop, &s->poll, s->fd);
  if (r < 0) return throw_errno(env, -r, "uv_poll_init");
  s->poll.data = s;
  s->poll_init = true;
  s->uv_alive = true;
  napi_create_reference(env, argv[1], 1, &s->callback);
  r = uv_poll_start(&s->poll, UV_READABLE, on_readable);
  if (r < 0) return throw_errno(env, -r, "uv_poll_start");
  return NULL;
}

// ref(handle, bool): whether the receive poll keeps the process alive. Request sockets ref only while
// replies are outstanding; a monitor stays ref'd unless the caller says otherwise.
static napi_value nl_ref(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return throw_type(env, "expected (handle, bool)");
  nl_sock *s = get_sock(env, argv[0], false);
  if (!s) return NULL;
  bool on;
  if (napi_get_value_bool(env, argv[1], &on) != napi_ok) return throw_type(env, "expected a boolean");
  if (s->poll_init && !s->closed) {
    if (on)
      uv_ref((uv_handle_t *)&s->poll);
    else
      uv_unref((uv_handle_t *)&s->poll);
  }
  return NULL;
}

// close(handle): stops receiving and closes the fd. Safe to call more than once.
static napi_value nl_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return throw_type(env, "expected a handle");
  nl_sock *s = get_sock(env, argv[0], false);
  if (!s) return NULL;
  sock_close(s);
  return NULL;
}

// native/src/icmp.c: ICMP echo sockets for the datapath probes (src/probe), in the same module.
void icmp_register(napi_env env, napi_value exports);
// native/src/memory.c: malloc_trim for the daemon's memory release (src/daemon/memory.ts).
void memory_register(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"open", NULL, nl_open, NULL, NULL, NULL, napi_default, NULL},
      {"portid", NULL, nl_portid, NULL, NULL, NULL, napi_default, NULL},
      {"addMembership", NULL, nl_add_membership, NULL, NULL, NULL, napi_default, NULL},
      {"setOption", NULL, nl_set_option, NULL, NULL, NULL, napi_default, NULL},
      {"send", NULL, nl_send, NULL, NULL, NULL, napi_default, NULL},
      {"start", NULL, nl_start, NULL, NULL, NULL, napi_default, NULL},
      {"ref", NULL, nl_ref, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, nl_close, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  icmp_register(env, exports);
  memory_register(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
