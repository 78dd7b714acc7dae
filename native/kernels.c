/*
 * kernels.c: choosing the kernel set once, at load, from what the CPU supports (never from
 * compile flags alone, so one build runs on any x86-64 machine). RWKV_KERNELS=scalar|avx2|
 * avx512 forces a path the CPU supports.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#if defined(__x86_64__) || defined(__i386__)
extern const kernels kernels_avx2 __attribute__((weak));
extern const kernels kernels_avx512 __attribute__((weak));
static bool cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
static bool cpu_has_avx512(void) {
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
}
#define HAVE_X86 1
#endif

typedef struct candidate {
    const kernels * set;
    bool supported;
} candidate;

static int candidates(candidate * out) {
    int n = 0;
#ifdef HAVE_X86
    if (&kernels_avx512) out[n++] = (candidate){&kernels_avx512, cpu_has_avx512()};
    if (&kernels_avx2) out[n++] = (candidate){&kernels_avx2, cpu_has_avx2()};
#endif
    out[n++] = (candidate){&kernels_scalar, true};
    return n;
}

const kernels * kernels_select(char * why, size_t why_len) {
    candidate list[4];
    int n = candidates(list);
    const char * forced = getenv("RWKV_KERNELS");
    if (why && why_len) why[0] = 0;
    if (forced && *forced) {
        for (int i = 0; i < n; i++) {
            if (strcmp(list[i].set->name, forced) == 0) {
                if (list[i].supported) return list[i].set;
                if (why) snprintf(why, why_len, "RWKV_KERNELS=%s is not supported by this CPU", forced);
                break;
            }
        }
        if (why && !why[0]) snprintf(why, why_len, "RWKV_KERNELS=%s is not a kernel path of this build", forced);
    }
    for (int i = 0; i < n; i++) {
        if (list[i].supported) return list[i].set;
    }
    return &kernels_scalar;
}

const char * kernels_available(void) {
    static char text[64];
    candidate list[4];
    int n = candidates(list);
    text[0] = 0;
    for (int i = n - 1; i >= 0; i--) {
        if (!list[i].supported) continue;
        if (text[0]) strncat(text, " ", sizeof text - strlen(text) - 1);
        strncat(text, list[i].set->name, sizeof text - strlen(text) - 1);
    }
    return text;
}
