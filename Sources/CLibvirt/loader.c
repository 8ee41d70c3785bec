#include "CLibvirt.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static NimbusLibvirt table;
static const NimbusLibvirt *loaded;
static char load_error[512];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
    // RTLD_LOCAL: libvirt's symbols stay out of the global namespace; RTLD_NOW: fail here, not mid-call.
    void *library = dlopen("libvirt.so.0", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        snprintf(load_error, sizeof load_error, "%s", dlerror());
        return;
    }
#define NIMBUS_LIBVIRT_RESOLVE(name) \
    *(void **)&table.name = dlsym(library, #name); \
    if (table.name == NULL) { \
        snprintf(load_error, sizeof load_error, "libvirt.so.0 has no %s (libvirt older than Nimbus needs)", #name); \
        return; \
    }
    NIMBUS_LIBVIRT_FUNCTIONS(NIMBUS_LIBVIRT_RESOLVE)
#undef NIMBUS_LIBVIRT_RESOLVE
    loaded = &table;
}

const NimbusLibvirt *nimbus_libvirt_load(const char **error) {
    pthread_once(&once, load);
    if (loaded == NULL) *error = load_error;
    return loaded;
}
