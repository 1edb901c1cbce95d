// mallocTrim(): returns the C allocator's free memory to the kernel (glibc malloc_trim(3), which since glibc 2.8
// also releases free pages inside every arena, not only the top of the main heap). Called by the daemon once it is
// quiet after a full pass (src/daemon/memory.ts): what node's C++ side, libuv and this addon allocated and freed
// during the pass otherwise stays in RSS. Returns whether anything was released; false where malloc_trim does not
// exist (not glibc).
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdlib.h>

#include <node_api.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

static napi_value mem_trim(napi_env env, napi_callback_info info) {
  (void)info;
  bool released = false;
#ifdef __GLIBC__
  released = malloc_trim(0) != 0;
#endif
  napi_value out;
  napi_get_boolean(env, released, &out);
  return out;
}

void memory_register(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mallocTrim", NULL, mem_trim, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
