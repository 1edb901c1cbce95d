{
  "targets": [
    {
      "target_name": "fabtunnel_netlink",
      "sources": ["src/netlink.c", "src/icmp.c", "src/memory.c"],
      "cflags_c": ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
